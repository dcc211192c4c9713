"""The console page in a real browser during a short live session: a real engine process fed
volumes and events over its links, the console process subscribed to it, Chromium on the page."""

from __future__ import annotations

import json
import re
import time

import pytest

from rtrecon.console.records import ControlRecords
from rtrecon.contract.layout import SessionLayout
from rtrecon.testing import scaled
from stimulus.operator import OperatorControls

pytestmark = pytest.mark.timeout(240)

WAIT_MS = int(scaled(60_000))  # generous: two engine starts share 2 busy cores with other work


def _due(name: str) -> re.Pattern[str]:
    """The label of scheduled release ``name`` (``r0``, ``r1``): its delay is the schedule's, or a
    volume more when the trial's event reached the live engine after the due volume (end-of-run
    labels are compared exactly)."""
    return re.compile(rf"^{name} @\d+\.\d s$")


def _banner_texts(page) -> list[str]:
    return page.locator("#banners .banner").all_inner_texts()


def test_live_session_volumes_trials_alarm_restart_and_controls(tmp_path, chromium, harness):
    from playwright.sync_api import expect

    N_VOLS, SPIKE, LiveSession, start_console, stop = (harness.N_VOLS, harness.SPIKE, harness.LiveSession,
                                                       harness.start_console, harness.stop)

    live = LiveSession(tmp_path)
    console, url = start_console(live.config)
    controls = OperatorControls(f"ipc://{tmp_path}/o", harness.SESSION)  # the stimulus program's end
    shots = tmp_path / "screenshots"
    page = chromium.new_page(viewport={"width": 1400, "height": 1700})
    try:
        page.goto(url)
        expect(page.locator("#connection")).to_have_text("live", timeout=WAIT_MS)

        # Volumes and the first trial's release appear as they arrive.
        live.send(SPIKE)
        expect(page.locator("#received")).to_have_text(str(SPIKE), timeout=WAIT_MS)
        expect(page.locator("#expected")).to_have_text(str(N_VOLS))
        # (trial 0, onset 2 s: its first release once volume 10, 8 s after onset, has arrived)
        expect(page.locator('.trial[data-trial="0"] .releases span')).to_have_text([_due("r0")], timeout=WAIT_MS)
        expect(page.locator('[data-link="bridge_alive"]')).to_have_class("pill ok", timeout=WAIT_MS)
        # The bridge's lead over the engine, live from its heartbeats through the engine's status.
        expect(page.locator("#bridge-lead")).to_have_text(re.compile(r"^\d volume\(s\) \(bound 8\)$"), timeout=WAIT_MS)
        expect(page.locator("#gpu")).to_have_text("— (not on a GPU)")
        expect(page.locator("#latency-strip")).to_contain_text("→ realigned", timeout=WAIT_MS)
        # the stimulus PC's flip that showed it, back through the engine's results link and status feed
        expect(page.locator("#latency-strip")).to_contain_text("shown: 16 ms after it arrived", timeout=WAIT_MS)
        assert page.locator("#fd-alarm").is_hidden()  # the control: slow drift stays under the threshold
        assert not any("FD" in text for text in _banner_texts(page))
        page.screenshot(path=shots / "1-first-volumes.png", full_page=True)

        # The 3 mm jerk raises the FD alarm, on the plot and in a banner.
        live.send(20)
        expect(page.locator("#fd-alarm")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#fd-alarm")).to_contain_text(f"volume {SPIKE + 1}", timeout=WAIT_MS)
        expect(page.locator("#banners .banner.alarm")).to_contain_text("threshold 0.5 mm")
        assert page.locator("#plot-fd circle.over").count() == 2
        page.screenshot(path=shots / "2-fd-alarm.png", full_page=True)

        # The engine is killed mid-run: the page says so; volumes keep coming (spooled by the bridge
        # side), and once the engine is back they all show, with the trials released meanwhile.
        live.engine.kill()
        live.engine.wait()
        expect(page.locator("#banners")).to_contain_text("engine silent", timeout=WAIT_MS)
        expect(page.locator('[data-link="engine"]')).to_have_class("pill bad")
        live.send(28)
        page.screenshot(path=shots / "3-engine-down.png", full_page=True)
        live.engine = live.start_engine()
        live.wait_acked()
        expect(page.locator("#received")).to_have_text("28", timeout=WAIT_MS)
        # (a later stall of the busy engine past its liveness would count as one more)
        expect(page.locator("#restarts")).to_have_text(re.compile(r"^[1-9]\d*$"), timeout=WAIT_MS)
        expect(page.locator("#banners")).not_to_contain_text("engine silent", timeout=WAIT_MS)
        expect(page.locator('.trial[data-trial="2"] .releases span')).to_have_text([_due("r0")], timeout=WAIT_MS)

        # Controls: recorded in the session's records, shown, and sent to the stimulus program.
        page.locator('.trial[data-trial="1"] button').click()
        expect(page.locator('.trial[data-trial="1"]')).to_have_class("trial bad", timeout=WAIT_MS)
        page.locator("#pause").click()
        expect(page.locator("#banners")).to_contain_text("feedback paused", timeout=WAIT_MS)
        page.on("dialog", lambda dialog: dialog.accept())  # "End run 1?"
        page.locator("#end-run").click()
        expect(page.locator("#state")).to_have_text("run 1: ended by the operator, waiting for the scanner to stop",
                                                   timeout=WAIT_MS)
        records = ControlRecords(SessionLayout(tmp_path / "out", "01", "01", "perception")).read()
        assert [(r["action"], r.get("run"), r.get("trial")) for r in records] == [
            ("mark_bad", 1, 1), ("pause_feedback", None, None), ("end_run", 1, None)]
        deadline = time.monotonic() + WAIT_MS / 1000
        while not (state := controls.poll()).ended_runs and time.monotonic() < deadline:
            page.wait_for_timeout(100)  # the console publishes the whole state each heartbeat
        assert (state.feedback_paused, state.ended_runs, state.bad_trials) == (True, [1], {1: [1]})

        # The run ends: every trial gets its final release (from the last volume, 27 s), the run
        # state says so. Each release shows once, though the restarted engine republished its results.
        live.end()
        expect(page.locator("#state")).to_have_text("run 1 ended (28 volumes)", timeout=WAIT_MS)
        expect(page.locator(".trial")).to_have_count(4, timeout=WAIT_MS)
        releases = {0: [_due("r0"), _due("r1"), "final @25.0 s"], 1: [_due("r0"), _due("r1"), "final @19.0 s"],
                    2: [_due("r0"), "final @13.0 s"], 3: ["final @7.0 s"]}  # trial 3 (onset 20 s): not due before
        for trial, texts in releases.items():
            expect(page.locator(f'.trial[data-trial="{trial}"] .releases span')).to_have_text(texts, timeout=WAIT_MS)
        expect(page.locator('.trial[data-trial="3"]')).to_contain_text("onset 20.0 s", timeout=WAIT_MS)
        page.screenshot(path=shots / "4-run-ended.png", full_page=True)

        # A page opened now (or reloaded) gets the whole session from the snapshot.
        page.reload()
        expect(page.locator("#received")).to_have_text("28", timeout=WAIT_MS)
        expect(page.locator('.trial[data-trial="1"]')).to_have_class("trial bad")

        # A console (re)started now reads the session back from the store and its records.
        late, late_url = start_console(live.config)
        try:
            page.goto(late_url)
            expect(page.locator("#received")).to_have_text("28", timeout=WAIT_MS)
            expect(page.locator("#state")).to_have_text("run 1 ended (28 volumes)")
            expect(page.locator('.trial[data-trial="1"]')).to_have_class("trial bad")
            expect(page.locator("#fd-alarm")).to_contain_text(f"volume {SPIKE + 1}")
            for trial, texts in releases.items():  # every release read back from the store's trials table
                expect(page.locator(f'.trial[data-trial="{trial}"] .releases span')).to_have_text(texts)
            state = json.loads(page.request.get(late_url + "api/state").text())
            assert [v["index"] for v in state["volumes"]] == list(range(28))
            assert state["volumes"][SPIKE]["fd"] > 2.0 and state["volumes"][SPIKE - 1]["fd"] < 0.5
        finally:
            stop(late)
    finally:
        page.close()
        controls.close()
        err = stop(console)
        live.close()
    assert "Traceback" not in err, err[-3000:]




def test_decoded_results_show_reconstruction_top5_rank_and_accuracy(tmp_path, chromium, harness):
    """Decoded results (as the engine's decoding stage publishes them) on the page, with the gallery's images."""
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect

    from rtrecon.contract.transport import StatusPublisher
    from rtrecon.contract.wire import ShownMessage, StatusMessage, TrialResultMessage

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for k in range(8):
        Image.fromarray(np.full((40, 40, 3), 30 * k, np.uint8)).save(gallery / f"nsd_{k}.png")  # nsd:k on NTFS
    config = harness.write_config(tmp_path, f'[stimulus.feedback]\ngallery_dir = "{gallery}"\n')
    console, url = harness.start_console(config)
    reconstruction = np.zeros((96, 96, 3), np.uint8)
    reconstruction[:, :48, 1] = 255
    links = StatusMessage(process="engine", state="links", metrics={"bridge_alive": 1.0, "stimulus_events_alive": 1.0,
                                                                     "stimulus_results_alive": 1.0, "trials_decoding": 1.0})

    def result(trial: int, stimulus: str, retrieved: list[str], release: int, final: bool,
               cpd: float | None = None) -> TrialResultMessage:
        return TrialResultMessage(session=harness.SESSION, run=1, trial=trial, stimulus=stimulus, retrieved=retrieved,
                                  pairmate="nsd:0" if cpd is not None else "", cpd=cpd,
                                  scores=[0.9 - 0.1 * k for k in range(len(retrieved))], image=reconstruction,
                                  decoder="mindeye2+unclip", release=release, release_s=8.0 * (release + 1), final=final,
                                  latencies={"betas_s": 0.003, "decode_s": 0.02, "retrieval_s": 0.001, "image_s": 0.9},
                                  stamps={"trial_ready": 100.0, "sent": 101.0})

    page = chromium.new_page(viewport={"width": 1400, "height": 1100})
    try:
        with StatusPublisher(f"ipc://{tmp_path}/s") as publisher:
            page.goto(url)
            deadline = time.monotonic() + WAIT_MS / 1000
            while time.monotonic() < deadline:  # until the console's subscription has joined the feed
                publisher.publish(links)
                if page.locator('[data-link="engine"]').get_attribute("class") == "pill ok":
                    break
                page.wait_for_timeout(100)
            publisher.publish(result(0, "nsd:3", ["nsd:1", "nsd:3", "nsd:2", "nsd:4", "nsd:5", "nsd:6"], 0, False, 0.42))
            publisher.publish(result(0, "nsd:3", ["nsd:3", "nsd:1", "nsd:2", "nsd:4", "nsd:5"], 1, True, 0.61))
            publisher.publish(result(1, "nsd:7", ["nsd:1", "nsd:2", "nsd:3", "nsd:4", "nsd:5", "nsd:6"], 0, False, -0.2))
            card = page.locator('.trial[data-trial="0"]')
            expect(card.locator(".releases span")).to_have_text([_due("r0"), "final @16.0 s"], timeout=WAIT_MS)
            expect(card.locator(".rank")).to_have_text("rank 1")
            expect(card.locator(".top5 li")).to_have_count(5)
            expect(card.locator(".top5 li.hit")).to_have_text("nsd:3 (0.900)")
            expect(page.locator('.trial[data-trial="1"] .rank')).to_have_text("not in top-6", timeout=WAIT_MS)
            # scored on each trial's first release: trial 0's r0 has nsd:3 second (its final, first)
            expect(page.locator("#scored")).to_have_text("2")
            expect(page.locator("#top1")).to_have_text("0.0 %")
            expect(page.locator("#top5")).to_have_text("50.0 %")
            # pairmates: each trial's CPD (its newest release) as a bar, the first releases' mean and two-way
            expect(card.locator(".cpd-value")).to_have_text("CPD +0.61")
            expect(page.locator('.trial[data-trial="1"] .cpd-value')).to_have_text("CPD -0.20")
            expect(page.locator("#cpd-mean")).to_have_text("0.110 (2 trials)")
            expect(page.locator("#two-way")).to_have_text("50.0 %")
            expect(page.locator("#latency-strip")).to_contain_text("shown: not yet")
            # the stimulus PC showed trial 1's release 0 (the engine republishes its ShownMessage)
            publisher.publish(ShownMessage(session=harness.SESSION, run=1, trial=1, release=0, sequence=2, shown=18.25,
                                           shown_wall=101.5, received_to_shown_s=0.035))
            expect(page.locator("#latency-strip")).to_contain_text("sent → shown: 0.50 s", timeout=WAIT_MS)
            expect(page.locator("#latency-strip")).to_contain_text("shown: 35 ms after it arrived (@18.25 s)")
            # a release published again (as a restarted engine does) is not shown twice nor taken
            publisher.publish(result(0, "nsd:3", ["nsd:9"], 1, True))
            publisher.publish(result(2, "nsd:2", ["nsd:2"], 0, False))
            expect(page.locator('.trial[data-trial="2"] .rank')).to_have_text("rank 1", timeout=WAIT_MS)
            expect(card.locator(".releases span")).to_have_text([_due("r0"), "final @16.0 s"])
            expect(card.locator(".rank")).to_have_text("rank 1")
            expect(page.locator("#latency-strip")).to_contain_text("image: 0.90 s")
            reconstructed = card.locator('img[alt="no reconstruction"]')
            assert reconstructed.get_attribute("src").startswith("data:image/png;base64,")
            seen = card.locator('img[alt="nsd:3"]')
            expect(seen).to_have_js_property("naturalWidth", 40)  # the stimulus, served from the gallery
            page.screenshot(path=tmp_path / "screenshots" / "decoded-trials.png", full_page=True)
    finally:
        page.close()
        harness.stop(console)
