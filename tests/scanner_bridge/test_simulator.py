"""ScannerSimulator: a real series written at TR pace with the faults of real exports."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rtrecon.testing import scaled
from scanner_bridge.simulator import CORRUPT_BYTES, Faults, ScannerSimulator, WrittenFile, series_volumes


@pytest.fixture(scope="module")
def ep2d(dicom_dir: Path) -> list[list[Path]]:
    return series_volumes(dicom_dir / "siemens_mosaic_ep2d_vd13" / "dicom")


def test_series_volumes_orders_by_acquisition_and_groups_slices(dicom_dir: Path, ep2d: list[list[Path]]) -> None:
    assert [[p.name for p in files] for files in ep2d] == [[f"IM-0001-000{i}.dcm"] for i in range(1, 7)]
    # GE slice files: 15 single-slice files per volume, grouped by the bridge's own assembler.
    ge = series_volumes(dicom_dir / "ge_mr750_dv26_epi_nih" / "dicom")
    assert len(ge) == 10 and all(len(files) == 15 for files in ge)
    assert len({p for files in ge for p in files}) == 150
    with pytest.raises(ValueError, match="no DICOM volume"):
        series_volumes(dicom_dir / "siemens_mosaic_ep2d_vd13" / "ref")


def test_writes_the_series_with_every_fault(tmp_path: Path, dicom_dir: Path, ep2d: list[list[Path]]) -> None:
    foreign = [dicom_dir / "siemens_mosaic_cmrr_vd13" / "dicom" / sorted(p.name for p in (dicom_dir / "siemens_mosaic_cmrr_vd13" / "dicom").iterdir())[0]]
    faults = Faults(partial={1}, duplicate={2}, swap={3}, missing={5}, corrupt_after=0, foreign_after=2, partial_pause_s=0.01)
    seen: list[WrittenFile] = []
    sim = ScannerSimulator(ep2d, tmp_path / "export", tr=3.2, speed=1000, faults=faults, foreign=foreign,
                           subfolders=True, on_written=seen.append)
    written = sim.run()

    assert written == seen
    order = [(w.kind, w.volume) for w in written]
    assert order == [
        ("volume", 0), ("corrupt", None),
        ("volume", 1),
        ("volume", 2), ("duplicate", 2), ("foreign", None),
        ("volume", 4), ("volume", 3),  # swapped: 4 arrives before 3
    ]  # volume 5 is missing
    assert all(a.closed_at <= b.closed_at for a, b in zip(written, written[1:]))
    for w in written:
        if w.kind == "corrupt":
            assert w.path.read_bytes() == CORRUPT_BYTES and w.source is None
        else:
            assert w.path.read_bytes() == w.source.read_bytes()
    by_kind = {w.kind: w.path.relative_to(tmp_path / "export").as_posix() for w in written}
    assert by_kind["duplicate"] == "vol_0003/IM-0001-0003_dup.dcm"
    assert by_kind["foreign"].startswith("foreign/")
    assert (tmp_path / "export" / "vol_0002" / "IM-0001-0002.dcm").is_file()


def test_a_partial_write_is_visible_half_way(tmp_path: Path, ep2d: list[list[Path]]) -> None:
    export = tmp_path / "export"
    target = export / ep2d[0][0].name
    full = ep2d[0][0].stat().st_size
    sim = ScannerSimulator(ep2d[:1], export, tr=1.0, faults=Faults(partial={0}, partial_pause_s=0.5))
    sizes: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if target.exists():
                sizes.add(target.stat().st_size)
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    sim.run()
    done.set()
    watcher.join()
    assert full // 2 in sizes
    assert target.stat().st_size == full


def test_paces_volumes_by_tr_and_stops(tmp_path: Path, ep2d: list[list[Path]]) -> None:
    two_written = threading.Event()
    sim = ScannerSimulator(ep2d, tmp_path / "export", tr=0.3,
                           on_written=lambda w: two_written.set() if w.volume == 1 else None)
    sim.start()
    assert two_written.wait(timeout=scaled(30))
    sim.stop()
    written = sim.join()
    # Volume i starts i TRs after volume 0 (sleeping never ends early; the slack is volume 0's own
    # write), and stop() cuts the series short.
    assert 2 <= len(written) < len(ep2d)
    for i, w in enumerate(written):
        assert w.closed_at - written[0].closed_at >= (i - 0.5) * 0.3


def test_rejects_impossible_plans(tmp_path: Path, ep2d: list[list[Path]]) -> None:
    with pytest.raises(ValueError, match="speed must be positive"):
        ScannerSimulator(ep2d, tmp_path, tr=1.0, speed=0)
    with pytest.raises(ValueError, match="needs foreign files"):
        ScannerSimulator(ep2d, tmp_path, tr=1.0, faults=Faults(foreign_after=1))
