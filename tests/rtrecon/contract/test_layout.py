"""The session layout: one spelling of every BIDS name, and the durable atomic write."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from rtrecon.contract import children
from rtrecon.contract.layout import SessionLayout, atomic_file, atomic_write, safe_filename, session_id
from rtrecon.testing import scaled


def test_names_follow_bids_with_two_digit_runs(tmp_path: Path) -> None:
    layout = SessionLayout(tmp_path, "01", "02", "perception")
    assert layout.session_id == session_id("01", "02") == "sub-01_ses-02"
    assert layout.stem(1) == "sub-01_ses-02_task-perception_run-01"
    assert layout.raw(1, "bold.nii.gz") == tmp_path / "sub-01/ses-02/func/sub-01_ses-02_task-perception_run-01_bold.nii.gz"
    assert layout.derivative(12, "desc-confounds_timeseries.tsv") == (
        tmp_path / "derivatives/rtrecon/sub-01/ses-02/func/sub-01_ses-02_task-perception_run-12_desc-confounds_timeseries.tsv"
    )
    assert layout.session_derivative("desc-roi_mask.nii.gz").name == "sub-01_ses-02_desc-roi_mask.nii.gz"
    assert layout.stimulus(3, "events.tsv") == (
        tmp_path / "sourcedata/stimulus/sub-01/ses-02/func/sub-01_ses-02_task-perception_run-03_events.tsv"
    )


@pytest.mark.parametrize("field", ["subject", "session", "task"])
def test_labels_that_would_break_bids_names_are_refused(tmp_path: Path, field: str) -> None:
    labels = {"subject": "01", "session": "01", "task": "perception"}
    labels[field] = "a_b"  # an underscore would split the BIDS entity
    with pytest.raises(ValueError, match=field):
        SessionLayout(tmp_path, **labels)


def test_safe_filename_removes_what_ntfs_refuses() -> None:
    assert safe_filename("nsd:123") == "nsd_123"
    assert safe_filename('a<b>c"d/e\\f|g?h*i') == "a_b_c_d_e_f_g_h_i"
    assert safe_filename("shared1000_0001.png") == "shared1000_0001.png"
    with pytest.raises(ValueError):
        safe_filename("...")


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "sidecar.json"
    atomic_write(target, '{"RepetitionTime": 1.6}')
    atomic_write(target, b'{"RepetitionTime": 2.0}', durable=False)
    assert target.read_text() == '{"RepetitionTime": 2.0}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["sidecar.json"]


def test_a_write_killed_midway_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "table.npz"
    atomic_write(target, b"old")
    # A child dies (SIGKILL) while writing 200 MB through atomic_write: the target is still whole.
    code = (
        "import os, signal, threading, sys\n"
        "from rtrecon.contract.layout import atomic_write\n"
        "threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()\n"
        f"atomic_write({str(target)!r}, b'x' * (200 * 2**20))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = children.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3], env=os.environ.copy(), timeout=scaled(60))
    assert proc.returncode == -9
    assert target.read_bytes() in (b"old", b"x" * (200 * 2**20))


def test_a_failed_write_removes_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    with pytest.raises(TypeError):
        atomic_write(target, 12345)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "betas.npz"
    atomic_write(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("the writer died")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]
    with atomic_file(target, durable=False) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_secret_is_never_readable_by_others(tmp_path: Path) -> None:
    secret = atomic_write(tmp_path / "engine.key_secret", b"secret", mode=0o600)
    assert secret.stat().st_mode & 0o777 == 0o600
    umask = os.umask(0o022)
    os.umask(umask)
    public = atomic_write(tmp_path / "engine.key", b"public")  # the control: the default mode
    assert public.stat().st_mode & 0o777 == 0o666 & ~umask
