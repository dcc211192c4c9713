"""``rtrecon engine replay`` on the shared real run: the live path's outputs, every release an exact fit."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from engine.motion import PARAMETER_NAMES, RigidRealigner
from engine.replay import ReplayError, read_events, replay_messages
from engine.server import TRIAL_COLUMNS, Engine, EngineSettings
from engine.store import SessionStore
from rtrecon.contract import children
from rtrecon.contract.wire import EventMessage, RunEndMessage, VolumeMessage
from rtrecon.testing import scaled

SESSION = "sub-01_ses-01"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(shared_dir: Path) -> Path:
    return shared_dir / "data/bold/siemens_prisma_e11_pydecnef_run1"


def _replay(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return children.run([sys.executable, "-m", "rtrecon.cli", "engine", "replay", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=scaled(600))


class _Background:
    """``rtrecon engine replay ARGS`` started in the background, its output to files (a pipe nobody
    reads meanwhile could fill and stop it)."""

    def __init__(self, folder: Path, args: list[str]) -> None:
        self.folder = folder
        with (folder / "stdout").open("w") as stdout, (folder / "stderr").open("w") as stderr:
            self.process = children.start([sys.executable, "-m", "rtrecon.cli", "engine", "replay", *args],
                                          cwd=ROOT, stdout=stdout, stderr=stderr)

    def result(self) -> subprocess.CompletedProcess:
        """Wait for it: its exit status and output."""
        returncode = self.process.wait(timeout=scaled(600))
        stdout, stderr = ((self.folder / name).read_text() for name in ("stdout", "stderr"))
        return subprocess.CompletedProcess(self.process.args, returncode, stdout, stderr)


@pytest.fixture(scope="module")
def nifti(run_dir: Path, tmp_path_factory) -> Path:
    """The run converted by ``rtrecon dicom2nii`` (with its sidecar beside it); read, never written."""
    from scanner_bridge.dicom2nii import dicom_series_to_nifti

    (path,) = dicom_series_to_nifti(run_dir / "dicom", tmp_path_factory.mktemp("nifti") / "bold.nii.gz")
    return Path(path)


@pytest.fixture(scope="module")
def replays(run_dir: Path, nifti: Path, tmp_path_factory) -> Iterator[dict[str, _Background]]:
    """The module's three full replays of the shared run, started together so that they and the live
    path's fixture share the machine's cores instead of running one after the other: the DICOM
    folder with the default settings (``replayed``), with another session config, and its NIfTI."""
    events = str(run_dir / "design_local/events.tsv")
    folders = {name: tmp_path_factory.mktemp(f"replay-{name}") for name in ("dicom", "config", "nifti")}
    config = folders["config"] / "session.toml"
    config.write_text('[session]\nsubject = "07"\ntask = "view"\n[engine]\nreleases_s = [6.0]\n[engine.glm]\nhigh_pass = 0.008\n')
    started = {
        "dicom": [str(run_dir / "dicom"), "--events", events, "--out", str(folders["dicom"] / "session")],
        "config": [str(run_dir / "dicom"), "--events", events, "--out", str(folders["config"] / "session"),
                   "--config", str(config)],
        "nifti": [str(nifti), "--events", events, "--out", str(folders["nifti"] / "session")],
    }
    background = {name: _Background(folders[name], args) for name, args in started.items()}
    yield background
    for replay in background.values():
        children.kill(replay.process)


@pytest.fixture(scope="module")
def replayed(replays) -> SessionStore:
    """The shared run (DICOM) through ``rtrecon engine replay`` with the default engine settings."""
    done, out = replays["dicom"].result(), replays["dicom"].folder / "session"
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith(f"run 1: 130 volumes, 11 trials, 33 releases -> {out}")
    return SessionStore(out, "01", "01", "perception")


@pytest.fixture(scope="module")
def live(run_dir: Path, nifti: Path, replays, tmp_path_factory) -> SessionStore:
    """The live path: the run converted by ``rtrecon dicom2nii``, its volumes handed to ``Engine.handle``
    as the bridge sends them, each event once its onset has passed (as the stimulus PC sends it).
    (``replays``: the replays run meanwhile.)"""
    img = nib.load(nifti)
    data, tr = np.asarray(img.dataobj), float(img.header.get_zooms()[3])
    slice_times = json.loads(nifti.with_name("bold.json").read_text())["SliceTiming"]
    events = pd.read_csv(run_dir / "design_local/events.tsv", sep="\t")
    store = SessionStore(tmp_path_factory.mktemp("live") / "session", "01", "01", "perception")
    engine = Engine(EngineSettings(), store)
    for i in range(data.shape[3]):
        for row in events.itertuples():
            if (i - 1) * tr < row.onset <= i * tr:
                engine.handle(EventMessage(session=SESSION, run=1, trial=int(row.trial), onset=float(row.onset),
                                           duration=float(row.duration), trial_type=row.trial_type))
        engine.handle(VolumeMessage(session=SESSION, run=1, index=i, tr=tr, voxels=data[..., i], affine=img.affine,
                                    slice_times=slice_times))
    engine.handle(RunEndMessage(session=SESSION, run=1, n_volumes=data.shape[3]))
    engine.join_background()
    return store


def _outputs(store: SessionStore) -> dict[str, object]:
    """Everything the engine wrote but its wall-clock timings."""
    out: dict[str, object] = {}
    for path in sorted(store.derivatives.iterdir()):
        if path.suffix == ".npz":
            with np.load(path) as f:
                out[path.name] = {k: f[k] for k in f.files}
        elif path.suffix == ".tsv" and "timings" not in path.name:
            out[path.name] = path.read_text()
        elif path.name.endswith(".nii.gz"):
            img = nib.load(path)
            out[path.name] = (np.asarray(img.dataobj), img.affine)
    for path in sorted(store.func.iterdir()):
        out[path.name] = np.asarray(nib.load(path).dataobj) if path.name.endswith(".nii.gz") else path.read_text()
    return out


def _assert_same(a: object, b: object, name: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), name
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")
    elif isinstance(a, tuple):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y, err_msg=name)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=name)
    else:
        assert a == b, name


def test_replay_reproduces_the_live_path_exactly(live, replayed):
    mine, theirs = _outputs(replayed), _outputs(live)
    assert mine.keys() == theirs.keys()
    assert sum(name.endswith("beta.npz") for name in mine) == 33  # 11 trials x (8 s, 16 s, run end)
    for name in mine:
        _assert_same(mine[name], theirs[name], name)
    # The confounds carry each volume's transform; the final betas are over the ROI mask beside them.
    confounds = pd.read_csv(replayed.derivative_path(1, "confounds_timeseries"), sep="\t", na_values="n/a")
    assert [f"xfm_{r}{c}" for r in range(3) for c in range(4)] == [c for c in confounds.columns if c.startswith("xfm_")]
    assert len(confounds) == 130 and confounds.filter(like="xfm_").notna().all().all()
    roi = replayed.load_image("desc-roi_mask")[0]
    final = np.load(replayed.derivative_path(1, "trialbetas", ".npz"))
    assert final["trials"].tolist() == list(range(1, 12))
    assert final["lsa"].shape == final["lss"].shape == (11, int(roi.sum()))


def test_replay_uses_the_session_config(replays, replayed):
    """Control: another config gives other outputs (the comparison above can tell them apart)."""
    done = replays["config"].result()  # [session] subject 07, task view; releases at 6 s; high_pass 0.008
    assert done.returncode == 0, done.stderr[-3000:]
    store = SessionStore(replays["config"].folder / "session", "07", "01", "view")
    rows = store.table(1, "trials", TRIAL_COLUMNS).rows()
    assert [int(r["release"]) for r in rows] == [0] * 11 + [1] * 11
    mine = np.load(store.derivative_path(1, "trialbetas", ".npz"))["lss"]
    default = np.load(replayed.derivative_path(1, "trialbetas", ".npz"))["lss"]
    assert mine.shape == default.shape and np.abs(mine - default).max() > 1e-3 * np.abs(default).max()


def test_replay_of_a_nifti_and_clear_errors(run_dir, replays, replayed, nifti, tmp_path):
    events = run_dir / "design_local/events.tsv"
    done, out = replays["nifti"].result(), replays["nifti"].folder / "session"
    assert done.returncode == 0, done.stderr[-3000:]
    store = SessionStore(out, "01", "01", "perception")
    np.testing.assert_array_equal(np.load(store.derivative_path(1, "trialbetas", ".npz"))["lss"],
                                  np.load(replayed.derivative_path(1, "trialbetas", ".npz"))["lss"])
    # The same run again into the same folder: refused, naming it.
    again = _replay([str(nifti), "--events", str(events), "--out", str(out)])
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"rtrecon engine replay: error: {store.func}: already holds run 1; give another --out or --run")
    bad = tmp_path / "bad.tsv"
    bad.write_text("onset\tduration\n3.0\t1\nsoon\t1\n")
    done = _replay([str(nifti), "--events", str(bad), "--out", str(tmp_path / "other")])
    assert done.returncode == 2 and f"{bad}, line 3: onset 'soon' is not a number" in done.stderr
    assert not (tmp_path / "other").exists()  # nothing written for a bad events file
    done = _replay([str(tmp_path / "none.nii.gz"), "--events", str(events), "--out", str(tmp_path / "other")])
    assert done.returncode == 2 and f"{tmp_path / 'none.nii.gz'}: no such DICOM folder or NIfTI file" in done.stderr
    help_text = _replay(["--help"]).stdout
    for words in ("DICOM folder", "4-D NIfTI", "--events", "--out", "--config", "xfm_00"):
        assert words in help_text


def test_events_reach_the_engine_once_their_onset_has_passed(tmp_path):
    events_tsv = tmp_path / "events.tsv"
    events_tsv.write_text("onset\tduration\ttrial_type\tstim_file\n4.0\t1\tface\ta.png\n0.5\t1\thouse\tn/a\n9.0\t1\tface\tb.png\n")
    events = read_events(events_tsv, SESSION, 2)
    assert [(e.trial, e.onset, e.stimulus, e.trial_type, e.run) for e in events] == [
        (1, 0.5, "", "house", 2), (0, 4.0, "a.png", "face", 2), (2, 9.0, "b.png", "face", 2)]
    volumes = [VolumeMessage(session=SESSION, run=2, index=i, tr=2.0, voxels=np.ones((2, 2, 2)), affine=np.eye(4))
               for i in range(4)]
    order = [(m.KIND, getattr(m, "trial", getattr(m, "index", None))) for m in replay_messages(volumes, events)]
    # onset 0.5 s: before volume 1 (starts at 2 s); 4 s: before volume 2 (starts at 4 s); 9 s: after the last
    assert order == [("volume", 0), ("event", 1), ("volume", 1), ("event", 0), ("volume", 2), ("volume", 3),
                     ("event", 2), ("run_end", None)]
    # a pairmate column (an engine's own events.tsv has one) reaches the events
    events_tsv.write_text("onset\tduration\tstimulus\tpairmate\n1\t1\ta\tb\n2\t1\tc\tn/a\n")
    assert [e.pairmate for e in read_events(events_tsv, SESSION, 1)] == ["b", ""]
    events_tsv.write_text("onset\tduration\ttrial\n1\t1\t3\n2\t1\t3\n")
    with pytest.raises(ReplayError, match=r"events.tsv, line 3: trial 3 appears twice"):
        read_events(events_tsv, SESSION, 1)


def _realigned_roi(store: SessionStore, params: np.ndarray) -> np.ndarray:
    """The ROI signal the engine fitted, recomputed from what the store holds."""
    reference, ref_affine = store.load_image("desc-reference_boldref")
    roi = store.load_image("desc-roi_mask")[0].astype(bool)
    realigner = RigidRealigner(reference, ref_affine, roi_mask=roi)
    affine, _ = store.geometry(1)
    return np.stack([realigner.resample_roi(v, p, affine) for v, p in zip(store.iter_volumes(1), params)])


def _lstsq_row(design: np.ndarray) -> np.ndarray:
    """Row 0 of ``numpy.linalg.lstsq``'s solution operator for ``design`` (its solution for each unit vector)."""
    return np.linalg.lstsq(design, np.eye(len(design)), rcond=None)[0][0]


def test_every_release_equals_lstsq_on_the_same_rows(replayed, run_dir):
    """Each release's LSS beta equals a from-scratch least-squares fit on the rows it used: nilearn's
    design for the volumes up to its last one (the trials then known, their HRF regressors, the motion
    confounds in the final release only, the cosine drift of that length), solved by ``numpy.linalg.lstsq``."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    settings = EngineSettings()
    confounds = pd.read_csv(replayed.derivative_path(1, "confounds_timeseries"), sep="\t", na_values="n/a")
    params = confounds[list(PARAMETER_NAMES)].to_numpy()
    y = _realigned_roi(replayed, params)
    events = pd.read_csv(run_dir / "design_local/events.tsv", sep="\t")
    tr = replayed.geometry(1)[1]
    rows = replayed.table(1, "trials", TRIAL_COLUMNS).rows()
    assert len(rows) == 33
    errors, controls = [], []
    for row in rows:
        trial, n = int(row["trial"]), int(row["volumes"])
        known = events[events.onset <= (n - 1) * tr]  # sent before the release's last volume
        design = make_first_level_design_matrix(
            np.arange(n) * tr, known.assign(trial_type=[f"t{t}" for t in known.trial])[["onset", "duration", "trial_type"]],
            hrf_model=settings.glm.hrf_model, drift_model=settings.glm.drift_model, high_pass=settings.glm.high_pass,
            add_regs=params[:n], add_reg_names=list(PARAMETER_NAMES),
        )
        target = design[f"t{trial}"].to_numpy()
        others = design[[f"t{t}" for t in known.trial if t != trial]].to_numpy().sum(1)
        final = row["final"] == "1"
        nuisance = design.drop(columns=[f"t{t}" for t in known.trial] + ([] if final else list(PARAMETER_NAMES))).to_numpy()
        # lstsq's solution operator (its row for the target, from the n x n identity), then applied to
        # the ROI signal: the same solution to rounding (~1e-15), 80 times faster than with the
        # ~20 000 voxels as right-hand sides.
        lss = _lstsq_row(np.c_[target, others, nuisance]) @ y[:n]
        beta = np.load(replayed.derivative_path(1, f"trial{trial}release{row['release']}beta", ".npz"))["beta"]
        errors.append(np.linalg.norm(beta - lss) / np.linalg.norm(lss))
        if not final:  # control: with the motion columns the scheduled release would differ
            with_motion = design.drop(columns=[f"t{t}" for t in known.trial]).to_numpy()
            other_fit = _lstsq_row(np.c_[target, others, with_motion]) @ y[:n]
            controls.append(np.linalg.norm(beta - other_fit) / np.linalg.norm(other_fit))
    assert max(errors) < 1e-6, f"worst release {np.argmax(errors)}: relative error {max(errors):.2e}"
    assert controls and min(controls) > 1e-3
