"""FolderWatcher: a live export folder, written by the scanner simulator, as a stream of volumes."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtrecon.testing import scaled
from scanner_bridge.assembly import FileRejected, RunStarted, VolumeMissing, VolumeReady
from scanner_bridge.simulator import Faults, ScannerSimulator, series_volumes
from scanner_bridge import watcher as watcher_module
from scanner_bridge.watcher import FolderWatcher, choose_watch_mode, filesystem_type

EP2D = "siemens_mosaic_ep2d_vd13"
CMRR = "siemens_mosaic_cmrr_vd13"


@pytest.fixture(scope="module")
def ep2d(dicom_dir: Path) -> list[list[Path]]:
    return series_volumes(dicom_dir / EP2D / "dicom")


@pytest.fixture(scope="module")
def cmrr(dicom_dir: Path) -> list[list[Path]]:
    return series_volumes(dicom_dir / CMRR / "dicom")


@pytest.fixture(scope="module")
def ep2d_ref(dicom_dir: Path) -> np.ndarray:
    return np.asanyarray(nib.load(dicom_dir / EP2D / "ref" / "2_ep2d_Asc.nii").dataobj)


@pytest.fixture(scope="module")
def cmrr_ref(dicom_dir: Path) -> np.ndarray:
    return np.asanyarray(nib.load(dicom_dir / CMRR / "ref" / "8_cmrr_Int.nii").dataobj)


def _collect(watcher: FolderWatcher, sim: ScannerSimulator, until: Callable[[list], bool]) -> list:
    """Every event of ``watcher`` while ``sim`` scans (once the watch is up, as in a session).

    The watch is closed once ``until(events)`` holds, which must happen while the watch runs:
    the last look at close must not be what found the files.
    """
    done, closing = threading.Event(), threading.Event()

    def scanner() -> None:
        if watcher.ready.wait(scaled(10)):
            sim.run()
        done.wait(scaled(10))
        closing.set()
        watcher.close()

    thread = threading.Thread(target=scanner)
    thread.start()
    events: list = []
    for event in watcher:
        events.append(event)
        if not done.is_set() and until(events):
            assert not closing.is_set(), "the events came only when the watch was closed"
            done.set()
    thread.join()
    assert done.is_set(), f"never got there: {events}"
    return events


def _count(events: list, kind: type) -> int:
    return sum(isinstance(e, kind) for e in events)


def _ready(events: list, run: int) -> list:
    return [e.volume for e in events if isinstance(e, VolumeReady) and e.run == run]


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_a_faulty_export_gives_exactly_the_right_volumes_in_order(
    mode: str, tmp_path: Path, ep2d, cmrr, ep2d_ref, cmrr_ref, caplog: pytest.LogCaptureFixture
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    faults = Faults(partial={1}, duplicate={2}, swap={3}, corrupt_after=0, foreign_after=2, partial_pause_s=0.15)
    # Each volume in its own subfolder, as an XA interoperability export: the watch is recursive.
    sim = ScannerSimulator(ep2d, export, tr=3.2, speed=32, faults=faults, foreign=cmrr[0], subfolders=True)
    watcher = FolderWatcher(export, mode=mode, missing_timeout_s=scaled(5.0), retry_delay_s=0.02)
    assert watcher.mode == mode
    with caplog.at_level(logging.WARNING):
        events = _collect(watcher, sim, lambda ev: _count(ev, VolumeReady) == 7 and _count(ev, FileRejected) == 1)

    starts = [e for e in events if isinstance(e, RunStarted)]
    assert [e.run for e in starts] == [1, 2]  # the foreign series is a run of its own
    volumes = _ready(events, 1)
    assert [v.index for v in volumes] == [0, 1, 2, 3, 4, 5]  # swapped arrival, duplicate dropped
    for v in volumes:
        np.testing.assert_array_equal(v.voxels, ep2d_ref[..., v.index])
    (foreign,) = _ready(events, 2)
    np.testing.assert_array_equal(foreign.voxels, cmrr_ref[..., 0])
    assert not [e for e in events if isinstance(e, VolumeMissing)]

    (rejected,) = [e for e in events if isinstance(e, FileRejected)]
    assert rejected.origin == str(export / "corrupt_0001.dcm")
    assert "holds no image" in rejected.reason
    assert any("corrupt_0001.dcm" in r.getMessage() and "holds no image" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_an_interoperability_export_one_subfolder_per_volume(tmp_path: Path, dicom_dir: Path) -> None:
    """Siemens XA interoperability: gzip-compressed slice files, a new subfolder and series per volume."""
    series = dicom_dir / "siemens_interop_xa30_prisma"
    # The export's own layout: one folder per volume, in acquisition order.
    volumes = [sorted(folder.glob("*.dcm.gz")) for folder in sorted((series / "dicom").iterdir()) if folder.is_dir()]
    ref = np.asanyarray(nib.load(next((series / "ref").glob("*.nii.gz"))).dataobj)
    export = tmp_path / "export"
    export.mkdir()
    sim = ScannerSimulator(volumes, export, tr=1.0, speed=20, subfolders=True)
    watcher = FolderWatcher(export, missing_timeout_s=scaled(5.0))
    events = _collect(watcher, sim, lambda ev: _count(ev, VolumeReady) == len(volumes))
    assert _count(events, RunStarted) == 1  # one run, although every volume has its own series
    ready = _ready(events, 1)
    assert [v.index for v in ready] == list(range(len(volumes))) and len(volumes) == 5
    for v in ready:
        np.testing.assert_array_equal(v.voxels, ref[..., v.index])


def test_a_volume_that_never_comes_is_reported_and_the_stream_goes_on(tmp_path: Path, ep2d) -> None:
    export = tmp_path / "export"
    export.mkdir()
    sim = ScannerSimulator(ep2d, export, tr=3.2, speed=64, faults=Faults(missing={2}))
    watcher = FolderWatcher(export, missing_timeout_s=scaled(0.3))
    events = _collect(watcher, sim, lambda ev: _count(ev, VolumeReady) == 5)

    stream = [(type(e).__name__, getattr(e, "index", None) if not isinstance(e, VolumeReady) else e.volume.index)
              for e in events if isinstance(e, (VolumeReady, VolumeMissing))]
    assert stream == [("VolumeReady", 0), ("VolumeReady", 1), ("VolumeMissing", 2),
                      ("VolumeReady", 3), ("VolumeReady", 4), ("VolumeReady", 5)]
    (missing,) = [e for e in events if isinstance(e, VolumeMissing)]
    assert missing.run == 1 and "no file" in missing.reason


def test_a_file_that_never_completes_is_rejected_after_bounded_retries(
    tmp_path: Path, ep2d, caplog: pytest.LogCaptureFixture
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    data = ep2d[0][0].read_bytes()
    (export / "truncated.dcm").write_bytes(data[: len(data) // 2])
    watcher = FolderWatcher(export, max_retries=3, retry_delay_s=0.02, idle_exit_s=scaled(0.2))
    with caplog.at_level(logging.WARNING, logger="scanner_bridge.watcher"):
        events = list(watcher)
    (rejected,) = events
    assert isinstance(rejected, FileRejected) and rejected.origin == str(export / "truncated.dcm")
    assert "still incomplete after 3 retries" in rejected.reason and "pixel data" in rejected.reason
    assert any("truncated.dcm" in r.getMessage() and "still incomplete" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("skip_existing", [True, False])
def test_files_present_at_start(tmp_path: Path, ep2d, cmrr, skip_existing: bool) -> None:
    export = tmp_path / "export"
    (export / "old").mkdir(parents=True)
    for files in cmrr:  # an earlier run, already exported
        for f in files:
            shutil.copy(f, export / "old" / f.name)
    sim = ScannerSimulator(ep2d[:3], export / "new", tr=3.2, speed=64)
    watcher = FolderWatcher(export, skip_existing=skip_existing)
    expected = 3 if skip_existing else 3 + len(cmrr)
    events = _collect(watcher, sim, lambda ev: _count(ev, VolumeReady) == expected)
    runs = {e.run: e.series for e in events if isinstance(e, RunStarted)}
    if skip_existing:
        assert len(runs) == 1 and [v.index for v in _ready(events, 1)] == [0, 1, 2]
    else:
        # Existing files first (oldest first), then the live series as a new run.
        assert len(runs) == 2
        assert [v.index for v in _ready(events, 1)] == list(range(len(cmrr)))
        assert [v.index for v in _ready(events, 2)] == [0, 1, 2]


def test_close_ends_a_watch_that_would_run_forever(tmp_path: Path, ep2d) -> None:
    export = tmp_path / "export"
    export.mkdir()
    shutil.copy(ep2d[0][0], export / ep2d[0][0].name)
    watcher = FolderWatcher(export)
    got = []
    for event in watcher:
        got.append(event)
        if isinstance(event, VolumeReady):
            watcher.close()
    assert [type(e) for e in got] == [RunStarted, VolumeReady]
    with pytest.raises(RuntimeError, match="iterated once"):
        list(watcher)


def test_files_written_before_close_are_still_taken(tmp_path: Path, ep2d) -> None:
    export = tmp_path / "export"
    export.mkdir()
    watcher = FolderWatcher(export, mode="poll", poll_interval_s=60.0)  # no rescan before close
    events: list = []
    thread = threading.Thread(target=lambda: events.extend(watcher))
    thread.start()
    assert watcher.ready.wait(scaled(10))
    for files in ep2d[:2]:
        shutil.copy(files[0], export / files[0].name)
    watcher.close()
    thread.join()
    assert [e.volume.index for e in events if isinstance(e, VolumeReady)] == [0, 1]


def test_files_renamed_or_moved_in_are_taken_while_watching(tmp_path: Path, ep2d) -> None:
    # inotify reports only closes, creations and moves to the watcher: a copy tool's dot-file
    # renamed into place, and a folder written elsewhere and moved in, arrive without a close.
    export, staging = tmp_path / "export", tmp_path / "staging"
    export.mkdir()
    (staging / "vol2").mkdir(parents=True)
    shutil.copy(ep2d[1][0], staging / "vol2" / ep2d[1][0].name)
    watcher = FolderWatcher(export, mode="inotify", missing_timeout_s=scaled(30))
    events: list = []
    arrived = threading.Event()

    def watch() -> None:
        for event in watcher:
            events.append(event)
            if sum(isinstance(e, VolumeReady) for e in events) == 3:
                arrived.set()

    thread = threading.Thread(target=watch)
    thread.start()
    assert watcher.ready.wait(scaled(10))
    shutil.copy(ep2d[0][0], export / f".{ep2d[0][0].name}.tmp")
    (export / f".{ep2d[0][0].name}.tmp").rename(export / ep2d[0][0].name)
    (staging / "vol2").rename(export / "vol2")
    shutil.copy(ep2d[2][0], export / ep2d[2][0].name)
    got_them = arrived.wait(scaled(10))
    watcher.close()
    thread.join()
    assert got_them, events
    assert [e.volume.index for e in events if isinstance(e, VolumeReady)] == [0, 1, 2]
    assert not any(isinstance(e, FileRejected) for e in events)


@pytest.mark.parametrize("failure", ["events lost", "no watch for a new folder", "no inotify"])
def test_without_inotify_events_the_folder_is_rescanned(
    failure: str, tmp_path: Path, ep2d, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An overflowing kernel queue drops events (the watcher rescans); a new subfolder may get no
    watch, or inotify may not start at all (no watches left: the watcher polls). Either way every
    volume comes."""
    if failure == "events lost":
        real_read = watcher_module._Inotify.read
        monkeypatch.setattr(watcher_module._Inotify, "read", lambda self: real_read(self) and None)
        expected_log = "inotify lost events"
    elif failure == "no watch for a new folder":
        real_add_tree = watcher_module._Inotify.add_tree

        def add_tree(self, folder: str) -> list[str]:
            if Path(folder) != tmp_path / "export":
                raise OSError(28, "No space left on device")
            return real_add_tree(self, folder)

        monkeypatch.setattr(watcher_module._Inotify, "add_tree", add_tree)
        expected_log = "inotify failed"
    else:
        def no_watches_left() -> None:
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(watcher_module, "INotify", no_watches_left)
        expected_log = "inotify unavailable"
    export = tmp_path / "export"
    export.mkdir()
    sim = ScannerSimulator(ep2d[:3], export, tr=3.2, speed=32, subfolders=True)
    watcher = FolderWatcher(export, mode="inotify", missing_timeout_s=scaled(5.0))
    with caplog.at_level(logging.WARNING, logger="scanner_bridge.watcher"):
        events = _collect(watcher, sim, lambda ev: _count(ev, VolumeReady) == 3)
    assert [v.index for v in _ready(events, 1)] == [0, 1, 2]
    assert any(expected_log in r.getMessage() for r in caplog.records)


def test_network_filesystems_are_polled(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "scanner:/export /mnt/scan\\040share nfs4 rw 0 0\n"
        "//console/rt /mnt/smb cifs rw 0 0\n"
        "user@host:/data /mnt/ssh fuse.sshfs rw 0 0\n"
        "tmpfs /mnt/smb/local tmpfs rw 0 0\n"
    )
    assert filesystem_type("/mnt/scan share/run1", mounts) == "nfs4"
    assert filesystem_type("/mnt/scan", mounts) == "ext4"  # not inside "/mnt/scan share"
    assert choose_watch_mode("/mnt/scan share/run1", "auto", mounts) == "poll"
    assert choose_watch_mode("/mnt/smb/x", "auto", mounts) == "poll"
    assert choose_watch_mode("/mnt/ssh", "auto", mounts) == "poll"
    assert choose_watch_mode("/mnt/smb/local/x", "auto", mounts) == "inotify"  # a local mount inside a share
    assert choose_watch_mode("/home/x", "auto", mounts) == "inotify"
    assert choose_watch_mode("/mnt/smb/x", "inotify", mounts) == "inotify"  # an explicit choice wins
    assert choose_watch_mode("/home/x", "auto", tmp_path / "no-such-table") == "poll"


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="nothere: the export folder does not exist"):
        FolderWatcher(tmp_path / "nothere")
