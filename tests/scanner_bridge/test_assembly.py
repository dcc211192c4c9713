"""VolumeAssembler on real series: order, duplicates, bad files, runs, missing volumes."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pydicom
import pytest

from scanner_bridge.assembly import FileRejected, RunStarted, VolumeAssembler, VolumeMissing, VolumeReady
from scanner_bridge.dicom_file import IncompleteDicomError, read_dicom


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _files(dicom_dir: Path, series: str) -> list[Path]:
    return sorted(p for p in (dicom_dir / series / "dicom").rglob("*") if p.is_file())


def _mosaics(dicom_dir: Path) -> list[Path]:
    return _files(dicom_dir, "siemens_mosaic_ep2d_vd13")  # IM-0001-000N.dcm = volume N-1


def _ready(events: list) -> list[tuple[int, int]]:
    return [(e.run, e.volume.index) for e in events if isinstance(e, VolumeReady)]


def _feed(assembler: VolumeAssembler, paths: list[Path]) -> list:
    return [e for p in paths for e in assembler.add_file(p)]


def test_shuffled_slices_come_out_as_whole_volumes_in_order(dicom_dir: Path) -> None:
    files = _files(dicom_dir, "ge_mr750_dv24_rt_mrdc_pyneal")
    random.Random(1).shuffle(files)
    events = _feed(VolumeAssembler(), files)
    assert isinstance(events[0], RunStarted) and events[0].run == 1
    assert events[0].description == "fMRI 259 x1: SRM test"
    assert _ready(events) == [(1, 0), (1, 1), (1, 2)]
    assert len(events) == 4
    assert all(len(e.volume.source_files) == 18 for e in events[1:])


def test_a_complete_volume_waits_for_earlier_ones(dicom_dir: Path) -> None:
    mosaics = _mosaics(dicom_dir)
    assembler = VolumeAssembler()
    assert _ready(assembler.add_file(mosaics[2])) == []
    assert _ready(assembler.add_file(mosaics[1])) == []
    assert _ready(assembler.add_file(mosaics[0])) == [(1, 0), (1, 1), (1, 2)]


def test_duplicates_are_ignored(dicom_dir: Path, tmp_path: Path) -> None:
    files = _files(dicom_dir, "ge_mr750_dv24_rt_mrdc_pyneal")[:18]
    assembler = VolumeAssembler()
    assert _ready(_feed(assembler, files[:10])) == []
    copy = tmp_path / "copy_of_slice_3"
    shutil.copy(files[3], copy)
    assert assembler.add_file(files[3]) == []  # the same file again
    assert assembler.add_file(copy) == []  # a copy under another name
    # another instance for a place already filled (re-sent with a new UID)
    resent = read_dicom(files[4])
    resent.SOPInstanceUID = pydicom.uid.generate_uid()
    assert assembler.add_dataset(resent, "peer") == []
    events = _feed(assembler, files[10:])
    assert _ready(events) == [(1, 0)]
    assert events[0].volume.source_files == tuple(files)
    # after release, a late copy is still a duplicate, not an error
    assert assembler.add_file(copy) == []


def test_corrupt_and_truncated_files(dicom_dir: Path, tmp_path: Path) -> None:
    mosaics = _mosaics(dicom_dir)
    garbage = tmp_path / "IM-0001-0099.dcm"
    garbage.write_bytes(b"\x00" * 128 + b"NOPE" + b"\xff" * 1000)
    truncated = tmp_path / "IM-0001-0002.dcm"
    raw = mosaics[1].read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])

    assembler = VolumeAssembler()
    events = assembler.add_file(mosaics[0])
    rejected = assembler.add_file(garbage)
    assert rejected == [FileRejected(str(garbage), rejected[0].reason)]
    assert "not a DICOM file" in rejected[0].reason
    with pytest.raises(IncompleteDicomError):
        assembler.add_file(truncated)
    truncated.write_bytes(raw)  # the scanner finishes writing it
    events += assembler.add_file(truncated)
    assert _ready(events) == [(1, 0), (1, 1)]


def test_a_file_that_does_not_fit_its_series_is_rejected(dicom_dir: Path) -> None:
    files = _files(dicom_dir, "ge_mr750_dv24_rt_mrdc_pyneal")
    assembler = VolumeAssembler()
    assembler.add_file(files[0])
    tilted = read_dicom(files[1])
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    [event] = assembler.add_dataset(tilted, "scanner:104")
    assert isinstance(event, FileRejected) and event.origin == "scanner:104"
    assert "orientation" in event.reason

    interop = sorted((dicom_dir / "siemens_interop_xa30_prisma" / "dicom").rglob("*.gz"))
    beyond = read_dicom(interop[0])
    beyond.InstanceNumber = 40  # the protocol says 33 slices per volume
    events = assembler.add_dataset(beyond, "x.dcm")
    assert isinstance(events[-1], FileRejected) and "outside the 33" in events[-1].reason

    second_echo = read_dicom(files[3])
    second_echo.EchoNumbers = 2
    [event] = assembler.add_dataset(second_echo, "echo2.dcm")
    assert isinstance(event, FileRejected) and "multi-echo" in event.reason

    alien = read_dicom(files[2])
    alien.Manufacturer = "ACME"
    [event] = assembler.add_dataset(alien, "alien.dcm")
    assert isinstance(event, FileRejected) and "unsupported" in event.reason


def test_a_file_unlike_the_files_before_is_checked_in_full(dicom_dir: Path, tmp_path: Path) -> None:
    # Files whose matrix, echo and geometry elements hold the bytes of the last file that fitted
    # skip the full check; any other file is checked: rejected if it does not fit, accepted if
    # only the formatting of its values differs.
    files = _mosaics(dicom_dir)
    assembler = VolumeAssembler()
    assert _ready(_feed(assembler, files[:3])) == [(1, 0), (1, 1), (1, 2)]
    tilted = pydicom.dcmread(files[3])
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    tilted.save_as(tmp_path / "tilted.dcm")
    [event] = assembler.add_file(tmp_path / "tilted.dcm")
    assert isinstance(event, FileRejected) and "orientation" in event.reason
    reformatted = pydicom.dcmread(files[3])
    assert reformatted.get_item("PixelSpacing").value.startswith(b"3.203125\\")
    reformatted.PixelSpacing = ["3.2031250", "3.2031250"]
    reformatted.save_as(tmp_path / "reformatted.dcm")
    assert _ready(_feed(assembler, [tmp_path / "reformatted.dcm", *files[4:]])) == [(1, 3), (1, 4), (1, 5)]


def test_slices_stacked_on_one_position_are_not_a_volume(dicom_dir: Path) -> None:
    files = _files(dicom_dir, "ge_mr750_dv24_rt_mrdc_pyneal")
    instance = {f: int(f.name.rsplit(".", 1)[1]) for f in files}
    volume0 = sorted((f for f in files if instance[f] <= 18), key=instance.get)
    assembler = VolumeAssembler()
    assert _feed(assembler, volume0[:-1])[1:] == []
    misplaced = read_dicom(volume0[-1])
    misplaced.ImagePositionPatient = read_dicom(volume0[0]).ImagePositionPatient
    [rejected] = assembler.add_dataset(misplaced, "last.dcm")
    assert isinstance(rejected, FileRejected) and "same position" in rejected.reason
    [missing] = assembler.finish()
    assert isinstance(missing, VolumeMissing) and "same position" in missing.reason


def test_an_interleaved_foreign_series_is_its_own_run(dicom_dir: Path) -> None:
    mosaics = _mosaics(dicom_dir)
    ge = _files(dicom_dir, "ge_mr750_dv24_rt_mrdc_pyneal")[:36]
    mixed = [*mosaics[:2], *ge[:20], mosaics[2], *ge[20:]]
    events = _feed(VolumeAssembler(), mixed)
    started = [e for e in events if isinstance(e, RunStarted)]
    assert [(e.run, e.description) for e in started] == [(1, "ep2d_Asc"), (2, "fMRI 259 x1: SRM test")]
    assert started[0].acquisition["Manufacturer"] == "SIEMENS"
    assert _ready(events) == [(1, 0), (1, 1), (2, 0), (1, 2), (2, 1)]
    series = {e.run: e.volume.series for e in events if isinstance(e, VolumeReady)}
    assert series[1] != series[2]


def test_the_interoperability_export_is_one_run(dicom_dir: Path) -> None:
    files = sorted((dicom_dir / "siemens_interop_xa30_prisma" / "dicom").rglob("*.gz"))
    assert len({f.parent for f in files}) == 5  # five folders, five SeriesNumbers
    random.Random(2).shuffle(files)
    events = _feed(VolumeAssembler(), files)
    assert sum(isinstance(e, RunStarted) for e in events) == 1
    assert _ready(events) == [(1, i) for i in range(5)]


def test_a_missing_volume_is_reported_after_the_timeout(dicom_dir: Path) -> None:
    mosaics = _mosaics(dicom_dir)
    clock = FakeClock()
    assembler = VolumeAssembler(missing_timeout_s=10.0, clock=clock)
    events = _feed(assembler, [mosaics[0], mosaics[1], mosaics[3]])
    assert _ready(events) == [(1, 0), (1, 1)]
    clock.now += 6
    events = assembler.add_file(mosaics[4])
    assert _ready(events) == [] and assembler.check_timeouts() == []
    clock.now += 4  # 10 s since volume 3, the first later one, arrived
    events = assembler.check_timeouts()
    assert isinstance(events[0], VolumeMissing)
    assert (events[0].run, events[0].index) == (1, 2) and "no file" in events[0].reason
    assert _ready(events) == [(1, 3), (1, 4)]
    [late] = assembler.add_file(mosaics[2])
    assert isinstance(late, FileRejected) and "reported missing" in late.reason
    assert _ready(assembler.add_file(mosaics[5])) == [(1, 5)]


def test_a_partial_volume_is_missing_after_the_timeout(dicom_dir: Path) -> None:
    files = _files(dicom_dir, "ge_mr750_dv24_rt_mrdc_pyneal")
    instance = {f: int(f.name.rsplit(".", 1)[1]) for f in files}
    volume1_but_one = [f for f in files if 19 <= instance[f] <= 36 and instance[f] != 30]
    volume2 = [f for f in files if instance[f] > 36]
    clock = FakeClock()
    assembler = VolumeAssembler(missing_timeout_s=5.0, clock=clock)
    assert _ready(_feed(assembler, volume1_but_one + volume2)) == []
    assert assembler.check_timeouts() == []  # volume 0 is next, and nothing of it came yet
    clock.now += 5
    events = assembler.check_timeouts()
    missing = [e for e in events if isinstance(e, VolumeMissing)]
    assert [(e.index, e.reason) for e in missing] == [(0, "no file of this volume arrived"),
                                                      (1, "incomplete: 17 of 18 files arrived")]
    assert _ready(events) == [(1, 2)]


def test_finish_releases_everything_left(dicom_dir: Path) -> None:
    mosaics = _mosaics(dicom_dir)
    ge = _files(dicom_dir, "ge_mr750_dv24_rt_mrdc_pyneal")[:10]
    assembler = VolumeAssembler()
    assert _ready(_feed(assembler, [mosaics[1], mosaics[2], *ge])) == []
    events = assembler.finish()
    assert [(e.run, e.index) for e in events if isinstance(e, VolumeMissing)] == [(1, 0), (2, 0)]
    assert _ready(events) == [(1, 1), (1, 2)]
    assert assembler.finish() == []
