"""What a live session leaves on disk: the config the processes shared, the gallery, BIDS, logs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rtrecon.contract.config import load_config
from rtrecon.data.nsd import NSDDataset


def test_session_config_gallery_and_bids_outputs(demo_run):
    folder = demo_run.session_dir
    config = load_config(folder / "session.toml")
    assert config.session.subject == "01" and config.session.session == "02"
    assert config.decoder.checkpoint.is_file() and config.engine.roi_mask.is_file()
    assert len({config.network.volumes, config.network.events, config.network.results, config.network.status}) == 4
    nsd = NSDDataset(demo_run.dataset)
    with np.load(config.decoder.gallery) as g:
        ids = list(g["ids"])
        embeddings = g["embeddings"]
    shown = sorted(set(nsd.events(1, 2, 1)["image_id"]))
    assert ids == [f"nsd:{i}" for i in shown]
    truth = np.load(demo_run.dataset / "synthetic_truth" / "embeddings.npy")
    np.testing.assert_array_equal(embeddings, truth[np.array(shown) - 1])
    func = folder / "sub-01" / "ses-02" / "func"
    assert (func / "sub-01_ses-02_task-perception_run-01_bold.nii.gz").is_file()
    events = pd.read_csv(func / "sub-01_ses-02_task-perception_run-01_events.tsv", sep="\t")
    assert len(events) == 63
    derivatives = folder / "derivatives" / "rtrecon" / "sub-01" / "ses-02" / "func"
    # each trial's live release (8 s after onset) decoded, and its end-of-run release before the engine stopped
    assert len(list(derivatives.glob("*_desc-trial*release0decoded.npz"))) == 63
    trials = pd.read_csv(derivatives / "sub-01_ses-02_task-perception_run-01_desc-trials.tsv", sep="\t")
    assert sorted(trials.loc[trials["final"] == 1, "trial"]) == list(range(63))
    logs = {p.name for p in (folder / "logs").iterdir()}
    assert logs - {"xvfb.log"} == {"engine.log", "console.log", "bridge_run-01.log", "stimulus_run-01.log"}
    assert ("xvfb.log" in logs) == (not demo_run.display)  # a private Xvfb only when there is no display
    # the stimulus program's settings: one trial list per run, NSD's trial timing, the trigger's TR
    assert config.stimulus.trial_lists == (folder / "stimulus" / "run-01_trials.tsv",)
    assert config.stimulus.trigger.tr == nsd.tr and config.stimulus.perception.image_s == 3.0


def test_a_relative_output_folder_gives_a_config_whose_paths_resolve(demo_run, tmp_path, monkeypatch):
    # The default --out is relative; the config's paths are read from the config's own folder.
    from rtrecon.demo.live import LiveSpec, write_session_config

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "rtrecon_out" / "demo" / "session"
    out.mkdir(parents=True)
    spec = LiveSpec(root=demo_run.dataset, subject=1, session=2, runs=(1,), checkpoint=demo_run.session_dir / "session.toml",
                    targets=np.zeros((1, 1, 1)), out=out.relative_to(tmp_path))
    gallery = out.relative_to(tmp_path) / "gallery.npz"
    gallery.write_bytes(b"")
    config = load_config(write_session_config(spec, NSDDataset(demo_run.dataset), gallery, ["tcp://127.0.0.1:1"] * 4, 10))
    assert config.session.output_dir == out
    assert config.decoder.gallery == out / "gallery.npz" and config.decoder.gallery.is_file()
    assert config.engine.roi_mask.is_file()


def test_the_demo_waits_for_the_end_of_run_releases_while_they_come(tmp_path):
    import threading
    import time

    from rich.progress import Progress

    from rtrecon.demo.collect import LiveSessionFiles
    from rtrecon.demo.live import _wait_for_final_releases
    from rtrecon.demo.processes import ProcessGroup

    layout = LiveSessionFiles(tmp_path, "01", "02", "perception", tmp_path / "stimulus")
    table = layout.derivative(1, "trials")
    table.parent.mkdir(parents=True)
    rows = ["trial\trelease\tfinal"] + [f"{t}\t0\t0" for t in range(3)]  # as the engine's store writes them
    table.write_text("\n".join(rows) + "\n")

    def engine() -> None:  # one end-of-run release every 0.8 s: the last comes after more than idle_s
        for t in range(3):
            time.sleep(0.8)
            rows.append(f"{t}\t2\t1")
            table.write_text("\n".join(rows) + "\n")

    with ProcessGroup(tmp_path / "logs") as group, Progress(disable=True) as bar:
        group.start("engine", ["-c", "import time; time.sleep(30)"])
        writer = threading.Thread(target=engine)
        writer.start()
        started = time.monotonic()
        _wait_for_final_releases(group, layout, {1: 3}, bar, idle_s=2.0)
        waited = time.monotonic() - started
        writer.join()
        assert waited >= 2.4  # all three came, not given up after idle_s
        # control: an engine that delivers nothing more is given up on after idle_s
        started = time.monotonic()
        _wait_for_final_releases(group, layout, {1: 4}, bar, idle_s=0.5)
        assert 0.5 <= time.monotonic() - started < 5.0
