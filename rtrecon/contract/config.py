"""The session config: one TOML file that describes a live session, validated with pydantic.

Example::

    [session]
    subject = "01"
    session = "01"
    task = "perception"

    [network]
    volumes = "tcp://127.0.0.1:5555"

    [bridge]
    watch_dir = "/mnt/scanner/export"
    watch_mode = "auto"          # "inotify", "poll" or "auto" (poll on network shares)

    [security]
    keys_dir = "keys"            # made by `rtrecon keys init keys`; omit for no encryption

    [engine]
    roi_mask = "masks/nsdgeneral.nii.gz"
    releases_s = [8.0, 16.0]     # each trial's beta is released (decoded, sent) then, and at run end

    [engine.glm]
    hrf_model = "glover"

    [decoder]
    checkpoint = "checkpoints/subj01_finetuned.pth"

    [reconstruction]
    unclip = "weights/unclip6"   # omit for the synthetic world's own unCLIP

    [stimulus]
    trial_lists = ["trials/run-01.tsv", "trials/run-02.tsv"]

    [stimulus.feedback]
    when = "trial"

Every key is optional: an empty file is a valid config (:class:`SessionConfig` defaults). Keys
whose default is "unset" (``None``) are left out of the file to keep that default, since TOML has
no null. ``rtrecon session init`` writes a template with every key, its default and a one-line
comment (:func:`config_template`); ``rtrecon session check FILE`` validates a file and every
path it names (:mod:`rtrecon.session`).

The ``[engine]`` table has the keys of the engine's settings and ``[stimulus]`` those of the
stimulus program's settings (same names, same defaults), so that one file configures every
process; ``[stimulus]`` adds the session's trial lists (``trial_lists``, one TSV per run).

``[decoder]`` is the MindEye2 model (or the linear head) and where both stages run (``device``,
``precision``, ``warmup``, ``compile``, ``cuda_graphs``); ``[reconstruction]`` is the unCLIP image
model. A key an older file still has in ``[decoder]`` (``unclip``, ``steps``, ``recon``, ``blurry_vae``,
``channels_last``) is refused with its new place in ``[reconstruction]`` (``recon`` is ``mode`` there).

Relative paths are resolved against the folder of the config file. Unknown keys are errors
(a misspelt key must not be silently ignored at the scanner). :func:`load_config` raises
:class:`ConfigError` naming the file, the key and the reason.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ConfigError",
    "SessionSection",
    "NetworkSection",
    "BridgeSection",
    "SecuritySection",
    "GLMSection",
    "EarlySection",
    "EngineSection",
    "DecoderSection",
    "ReconstructionSection",
    "WindowSection",
    "TriggerSection",
    "PerceptionSection",
    "ImagerySection",
    "SoundSection",
    "FeedbackSection",
    "StimulusSection",
    "ConsoleSection",
    "SessionConfig",
    "HRF_MODELS",
    "load_config",
    "config_template",
]

#: nilearn's HRF models, as the engine's GLM takes them.
HRF_MODELS = (
    "glover",
    "spm",
    "glover + derivative",
    "spm + derivative",
    "glover + derivative + dispersion",
    "spm + derivative + dispersion",
)


class ConfigError(ValueError):
    """A session config file cannot be read or is invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _example(value: Any) -> dict[str, Any]:
    """Schema extra naming a typical value of a key whose default is unset (for the template)."""
    return {"example": value}


class SessionSection(_Section):
    """Who and what is scanned: names follow BIDS (``sub-<subject>/ses-<session>``)."""

    subject: str = Field("01", pattern=r"^[A-Za-z0-9]+$", description="BIDS subject label (sub-<subject>)")
    session: str = Field("01", pattern=r"^[A-Za-z0-9]+$", description="BIDS session label (ses-<session>)")
    task: str = Field("perception", pattern=r"^[A-Za-z0-9]+$", description="BIDS task label, e.g. perception or imagery")
    output_dir: Path = Field(Path("rtrecon_out"), description="where the BIDS session, derivatives and report are written")


class NetworkSection(_Section):
    """ZeroMQ endpoints. The receiving side binds, the sending side connects."""

    volumes: str = Field("tcp://127.0.0.1:5555", description="bridge -> engine volumes (the engine binds)")
    events: str = Field("tcp://127.0.0.1:5556", description="stimulus -> engine trial events (the engine binds)")
    results: str = Field("tcp://127.0.0.1:5557", description="engine -> stimulus decoded results (the stimulus PC binds)")
    status: str = Field("tcp://127.0.0.1:5558", description="engine -> dashboard status feed (PUB)")
    operator: str = Field("tcp://127.0.0.1:5559", description="console -> stimulus operator controls (the console binds; PUB)")
    heartbeat_s: float = Field(1.0, gt=0, description="seconds between heartbeats on every link")
    max_message_mb: float = Field(
        64.0, gt=0, le=4096, description="largest frame a receiver reads, in MiB (the session's largest volume; larger: refused)"
    )
    max_index_jump: int = Field(
        100, ge=1, description="a volume more than this many indices after the run's last one is refused (missing volumes are sent as such)"
    )

    @property
    def max_message_bytes(self) -> int:
        """``max_message_mb`` in bytes, as :mod:`rtrecon.contract.transport` takes it."""
        return int(self.max_message_mb * (1 << 20))

    @field_validator("volumes", "events", "results", "status", "operator")
    @classmethod
    def _zmq_endpoint(cls, value: str) -> str:
        if not value.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"{value!r} is not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)")
        return value


class BridgeSection(_Section):
    """How the scanner bridge follows the scanner's export folder."""

    watch_dir: Path | None = Field(
        None, description="the scanner's DICOM export folder (unset: give it on the command line)",
        json_schema_extra=_example("/mnt/scanner/export"),
    )
    watch_mode: Literal["auto", "inotify", "poll"] = Field("auto", description='"inotify", "poll" (network shares) or "auto"')
    poll_interval_s: float = Field(0.05, gt=0, description="seconds between folder scans when polling")
    missing_timeout_s: float = Field(10.0, gt=0, description="seconds to wait for a slice before the volume is declared missing")
    skip_existing: bool = Field(False, description="ignore files already in watch_dir when the bridge starts")
    spool_dir: Path = Field(Path("rtrecon_out/bridge_spool"), description="where unacknowledged volumes wait (survives restarts)")
    dicom_ae_title: str = Field("RTRECON", pattern=r"^[ -\[\]-~]{1,16}$", description="`bridge receive`: this DICOM node's AE title")
    dicom_host: str = Field("127.0.0.1", description="`bridge receive`: address the DICOM node listens on (the scanner-side network card)")
    dicom_port: int = Field(11112, ge=0, le=65535, description="`bridge receive`: port the DICOM node listens on")
    dicom_allowed_callers: tuple[str, ...] = Field(
        (), description="`bridge receive`: calling AE titles admitted (the scanner's; others are refused; needed to start)"
    )
    max_lead: int = Field(
        8, ge=1, description="volumes sent ahead of the engine's acknowledgements at most (backpressure; the rest wait in the spool)"
    )
    ack_warn_trs: float = Field(
        5.0, gt=0, description="warn when nothing has been acknowledged this many TRs after a volume was sent"
    )

    @field_validator("dicom_allowed_callers")
    @classmethod
    def _ae_titles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for title in value:
            if not 1 <= len(title.strip()) <= 16 or "\\" in title or not title.isprintable():
                raise ValueError(f"{title!r} is not a DICOM AE title (1-16 printable characters, no backslash)")
        return value


class SecuritySection(_Section):
    """ZeroMQ CURVE keys; without ``keys_dir`` the links are unencrypted."""

    keys_dir: Path | None = Field(
        None, description="made by `rtrecon keys init DIR` (unset: links are not encrypted)",
        json_schema_extra=_example("keys"),
    )


class GLMSection(_Section):
    """The engine's GLM design (nilearn's names and defaults)."""

    hrf_model: Literal[HRF_MODELS] = Field("glover", description="nilearn HRF: " + ", ".join(HRF_MODELS))  # type: ignore[valid-type]
    drift_model: Literal["cosine", "polynomial"] | None = Field(
        "cosine", description='"cosine" (high_pass) or "polynomial" (drift_order)'
    )
    high_pass: float = Field(0.01, gt=0, description="cosine drift cut-off in Hz")
    drift_order: int = Field(1, ge=0, description="order of the polynomial drift")
    oversampling: int = Field(50, ge=1, description="HRF convolution oversampling")
    min_onset: float = Field(-24.0, description="events earlier than this (s) are ignored, as in nilearn")
    slice_time_ref: float = Field(0.0, ge=0, le=1, description="where in the TR each volume is sampled (0: start, 0.5: middle)")
    motion_confounds: bool = Field(True, description="add the 6 realignment parameters as confounds")
    release_motion_confounds: bool = Field(
        False, description="also in the scheduled releases' design (false: only the final release and the end-of-run "
        "betas have them; fitted to the rising edge of a trial they cost first-release r 0.05: docs/early_estimates.md)",
    )
    noise_model: Literal["ols", "ar1"] = Field(
        "ols", description='noise model of the end-of-run betas and t maps: "ols" (as the live releases, '
        '~2 s for 150 trials x 15000 voxels) or "ar1" (nilearn\'s AR(1), as RT-MindEye fits offline; '
        '~1.4 s per trial at that size)',
    )


class EarlySection(_Section):
    """Early releases that use what the session already knows (docs/early_estimates.md)."""

    noise_pool: bool = Field(
        False, description="GLMdenoise noise regressors: spatial components of the residuals of voxels the task "
        "does not drive, learned on the earlier runs, added as confounds of each volume",
    )
    hrf_library: bool = Field(
        False, description="per-voxel HRF (Glover's HRF shifted by -1 ... +2.5 s) chosen on the earlier runs; "
        "releases fit LSS per HRF group (needs beta_method = \"lss\")",
    )
    session_runs: bool = Field(True, description="learn from this session's earlier runs (those ended when a run starts)")
    training_session: Path | None = Field(
        None, description="also learn from a training session folder written by the engine (its func/ BOLD runs "
        "and events, on this session's grid); used from the first run on",
        json_schema_extra=_example("training/sub-01/ses-01"),
    )
    noise_components: int = Field(4, ge=1, description="noise regressors per volume")
    pool_r2: float = Field(0.05, gt=0, lt=1, description="voxels whose task R² on the earlier runs is below this form the noise pool")
    pool_voxels: int = Field(3000, ge=0, description="brain voxels outside the ROI sampled (evenly) as noise-pool candidates")


class EngineSection(_Section):
    """The real-time engine: realignment, ROI, GLM, trial release and z-scoring."""

    roi_mask: Path | None = Field(
        None, description="3-D NIfTI mask of the voxels decoded (unset: the reference's brain mask)",
        json_schema_extra=_example("masks/nsdgeneral.nii.gz"),
    )
    reference: Path | None = Field(
        None, description="3-D NIfTI that volumes are realigned to (unset: the first volume of the first run)",
        json_schema_extra=_example("reference/boldref.nii.gz"),
    )
    planned_volumes: int | None = Field(
        None, ge=2, description="capacity hint: volumes a run is expected to have (unset: grown as the run goes; "
        "the design is always the one of the volumes acquired)",
        json_schema_extra=_example(300),
    )
    releases_s: list[float] = Field(
        [8.0, 16.0], description="seconds after a trial's onset at which its beta is released (decoded and sent); "
        "every trial also gets a final release at run end",
    )
    beta_method: Literal["lss", "lsa"] = Field("lss", description='trial betas: "lss" (least squares separate) or "lsa" (all)')
    zscore_stats: Path | None = Field(
        None, description="training session's .npz with per-voxel mean and std (unset: this session's running stats)",
        json_schema_extra=_example("training/zscore_stats.npz"),
    )
    average_repeats: bool = Field(False, description="average a trial with earlier repeats of the same image")
    glm: GLMSection = GLMSection()
    early: EarlySection = EarlySection()
    realign_fwhm_mm: float = Field(3.5, gt=0, description="smoothing applied before estimating motion")
    realign_refine_above_mm: float = Field(
        5.0, ge=0, description="mean displacement from the reference (mm) above which motion is refined on the "
        "unsmoothed volume (0: every volume)",
    )
    realign_samples: int = Field(12000, ge=100, description="brain voxels sampled to estimate motion")
    checkpoint_volumes: int = Field(
        20, ge=1, description="the engine checkpoints its state every this many volumes (and at each run's end): "
        "a restart replays at most these, not the whole session",
    )
    resample_order: int = Field(
        3, ge=1, le=5, description="spline order resampling the realigned ROI (1: trilinear, which blurs each volume "
        "by its own sub-voxel shift; 3: cubic B-spline, first-release r +0.07 on the demo world: docs/early_estimates.md)",
    )

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "ready_delay_s" in data:
            delay = data["ready_delay_s"]
            delay = delay if isinstance(delay, (int, float)) and not isinstance(delay, bool) else 8.0
            raise ValueError(
                f"ready_delay_s was replaced by releases_s: write releases_s = [{float(delay)}] (seconds after "
                "onset, one per release; every trial also gets a release at run end)"
            )
        return data

    @model_validator(mode="after")
    def _hrf_library_needs_lss(self) -> EngineSection:
        if self.early.hrf_library and self.beta_method != "lss":
            raise ValueError('early.hrf_library fits LSS per HRF group: it needs beta_method = "lss"')
        return self

    @field_validator("releases_s")
    @classmethod
    def _increasing_delays(cls, value: list[float]) -> list[float]:
        if not all(math.isfinite(d) and d >= 0 for d in value):
            raise ValueError(f"{value}: every delay must be a finite number of seconds >= 0")
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError(f"{value}: delays must increase")
        return value


#: The keys ``[decoder]`` held before ``[reconstruction]`` existed, and their names there.
_MOVED_TO_RECONSTRUCTION = {
    "unclip": "unclip", "steps": "steps", "recon": "mode", "blurry_vae": "blurry_vae", "channels_last": "channels_last",
}


class DecoderSection(_Section):
    """The decoder: MindEye2 checkpoint (or linear head) and retrieval gallery; where both stages run.

    ``device``, ``precision``, ``warmup``, ``compile`` and ``cuda_graphs`` apply to the decoder and to
    the reconstruction (``[reconstruction]``) alike: both run on one device in one precision.
    """

    checkpoint: Path | None = Field(
        None, description="MindEye2 checkpoint, .pth or .safetensors (unset: the synthetic world's trained decoder)",
        json_schema_extra=_example("checkpoints/subj01_finetuned.pth"),
    )
    subject: int = Field(0, ge=0, description="index of this participant's adapter in the checkpoint")
    head: Literal["mindeye", "linear"] = Field(
        "mindeye", description='"mindeye": the MindEye2 checkpoint; "linear": the ridge head of linear_head (voxels -> '
        "CLIP targets, retrieval only; what generalises from perception to mental imagery)",
    )
    linear_head: Path | None = Field(
        None, description='ridge head .npz (rtrecon.models.linear_head.LinearHead.save) decoding with head = "linear"',
        json_schema_extra=_example("checkpoints/subj01_linear_head.npz"),
    )
    gallery: Path | None = Field(
        None, description="retrieval gallery: embeddings (.npz, .npy, .h5) or an image folder (unset: the session's images)",
        json_schema_extra=_example("gallery/shared1000.npz"),
    )
    top_k: int = Field(5, ge=1, description="retrieved images reported per trial")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description='decoder and reconstruction: "auto" (the GPU when there is one), "cuda", "cuda:N" or "cpu"',
    )
    precision: Literal["fp32", "fp16-autocast", "bf16-autocast"] = Field(
        "fp16-autocast", description='decoder and reconstruction: "fp16-autocast" (the official mixed precision), '
        '"bf16-autocast" or "fp32" (a CPU runs fp16-autocast as fp32)',
    )
    warmup: bool = Field(True, description="load the models and decode once at start, so the first trial is as fast as the rest")
    compile: bool = Field(False, description="torch.compile the backbone, prior and unCLIP UNet (slow first call; GPU)")
    cuda_graphs: bool = Field(False, description="replay the fixed-shape prior chain as a CUDA graph (CUDA only)")

    @property
    def decodes(self) -> bool:
        """Whether the engine decodes trials: a MindEye2 checkpoint, or the linear head."""
        return self.checkpoint is not None if self.head == "mindeye" else self.linear_head is not None

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key in _MOVED_TO_RECONSTRUCTION:
                    raise ValueError(f"[decoder] {key} moved to [reconstruction] {_MOVED_TO_RECONSTRUCTION[key]}")
        return data

    @model_validator(mode="after")
    def _head_file(self) -> "DecoderSection":
        if self.head == "linear" and self.linear_head is None:
            raise ValueError('head "linear" decodes with a ridge head file: set linear_head')
        return self


class ReconstructionSection(_Section):
    """The reconstruction: the unCLIP image model that turns the decoder's CLIP tokens into an image.

    It runs where ``[decoder] device`` and ``precision`` say.
    """

    unclip: Path | None = Field(
        None, description="unCLIP folder from `rtrecon convert-unclip` (unset: the synthetic world's reconstruction model)",
        json_schema_extra=_example("weights/unclip6"),
    )
    steps: int = Field(4, ge=1, description="unCLIP sampling steps (the official sampler uses 38)")
    mode: Literal["fast", "official"] = Field(
        "fast", description='"fast": the unCLIP image; "official": 0.75 unCLIP + 0.25 blurry-branch image (needs blurry_vae)'
    )
    blurry_vae: Path | None = Field(
        None, description="the SD image-variation VAE that decodes the blurry branch (sd_image_var_autoenc.pth or a diffusers folder)",
        json_schema_extra=_example("weights/sd_image_var_autoenc.pth"),
    )
    channels_last: bool = Field(False, description="run the unCLIP UNet and VAE in channels-last memory layout")

    @model_validator(mode="after")
    def _official_needs_blurry_vae(self) -> "ReconstructionSection":
        if self.mode == "official" and self.blurry_vae is None:
            raise ValueError('mode "official" blends in the blurry-branch image: set blurry_vae')
        return self


class WindowSection(_Section):
    """The participant's window."""

    size: tuple[int, int] = Field((1280, 1024), description="window size in pixels")
    fullscreen: bool = Field(False, description="full screen on the participant's display")
    screen: int = Field(0, description="which display")
    background: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="PsychoPy rgb in -1..1 (0: mid grey)")
    image_size: float = Field(0.6, gt=0, le=1, description="image height as a fraction of the window height")
    fixation_size: float = Field(8.0, gt=0, description="fixation dot diameter in pixels")


class TriggerSection(_Section):
    """Where scanner triggers come from."""

    keys: tuple[str, ...] = Field(("5",), description="keys (or serial bytes) that mark a scanner trigger")
    source: Literal["keyboard", "serial", "parallel", "buttonbox"] = Field(
        "keyboard", description='"keyboard" alone, or with it "serial", "parallel" (TTL pins) or "buttonbox" (a PsychoPy button box)'
    )
    serial_port: str = Field("", description='e.g. "/dev/ttyUSB0" (needed when source is "serial")')
    serial_baudrate: int = Field(115200, gt=0, description="serial port speed")
    parallel_port: str = Field("/dev/parport0", description='parallel port: Linux device, or Windows address such as "0x0378"')
    parallel_pins: dict[str, int] = Field(
        default_factory=lambda: {"5": 10}, description="key -> parallel input pin whose pulses mean that key (10, 11, 12, 13, 15; 2-9)"
    )
    parallel_edge: Literal["rising", "falling"] = Field("rising", description='pulse edge that is a press: "rising" or "falling"')
    parallel_interval_s: float = Field(0.0005, gt=0, le=0.01, description="seconds between reads of the parallel pins")
    buttonbox_class: str = Field(
        "", description='PsychoPy button group class to open through its DeviceManager (import path, e.g. from a vendor plugin)'
    )
    buttonbox_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the button box class")
    buttonbox_keys: tuple[str, ...] = Field((), description="key of each button box channel, channel 0 first")
    tr: float | None = Field(
        None, gt=0, description="expected TR in seconds, to report trigger drift (unset: not checked)",
        json_schema_extra=_example(1.6),
    )
    timeout_s: float = Field(600.0, gt=0, description="give up waiting for the first trigger after this")

    @model_validator(mode="after")
    def _serial_needs_port(self) -> "TriggerSection":
        if self.source == "serial" and not self.serial_port:
            raise ValueError("trigger source 'serial' needs serial_port")
        bad_pins = sorted({pin for pin in self.parallel_pins.values() if not (2 <= pin <= 13 or pin == 15)})
        if self.source == "parallel" and (not self.parallel_pins or bad_pins):
            raise ValueError(f"trigger source 'parallel' needs parallel_pins, each an input pin 2-13 or 15 (not {bad_pins})")
        if self.source == "buttonbox" and (not self.buttonbox_class or not self.buttonbox_keys):
            raise ValueError("trigger source 'buttonbox' needs buttonbox_class and buttonbox_keys")
        if not self.keys:
            raise ValueError("trigger keys must not be empty")
        return self


class PerceptionSection(_Section):
    """NSD-style viewing: image on, then a gap; new/old recognition buttons."""

    image_s: float = Field(3.0, gt=0, description="seconds each image is shown")
    gap_s: float = Field(1.0, ge=0, description="seconds of fixation between images")
    response_keys: dict[str, str] = Field(
        default_factory=lambda: {"new": "1", "old": "2"}, description="recognition answer -> key"
    )


class ImagerySection(_Section):
    """Cue, imagery on a blank screen, rest; optional vividness rating."""

    cue_s: float = Field(2.0, gt=0, description="seconds the cue is shown")
    imagery_s: float = Field(4.0, gt=0, description="seconds of imagery on a blank screen")
    rest_s: float = Field(2.0, ge=0, description="seconds of rest after imagery")
    vividness: bool = Field(False, description="ask for a vividness rating after each imagery period")
    vividness_s: float = Field(2.0, gt=0, description="seconds to answer the vividness rating")
    vividness_keys: tuple[str, ...] = Field(("1", "2", "3", "4"), description="rating keys, least to most vivid")


class SoundSection(_Section):
    """How sound cues (an imagery cue_file that is a sound) are played: PsychoPy's sound API."""

    backend: Literal["sounddevice"] = Field(
        "sounddevice", description='PsychoPy sound backend: "sounddevice" (PortAudio; psychtoolbox\'s "ptb" pins an older numpy)'
    )
    device: str = Field("", description='output device as PortAudio lists it (python -m sounddevice), by name or number; "": the default output')
    volume: float = Field(1.0, ge=0, le=1, description="playback volume, 0 to 1")


class FeedbackSection(_Section):
    """What a feedback period shows, when, and on whose screen.

    Feedback is drawn only in periods the design reserves for it, never over a stimulus or a cue:
    after a trial, after a block, or in the design's free stretches (``"slot"``). A result that
    misses its own period follows the ``late`` rule; every period is a row of the events file.
    """

    when: Literal["trial", "block", "slot", "demand", "live"] = Field(
        "trial", description='"trial": a period after each trial that asks for it; "block": after each block; '
        '"slot": in the design\'s free stretches (fixation without a trial, at least slot_min_s long: NSD\'s blank '
        'trials, rests), each showing the results waiting, oldest first; "demand": on demand_key (operator\'s window); '
        '"live": each result as it arrives (operator\'s window only: it would cover the task)'
    )
    late: Literal["next", "end", "skip"] = Field(
        "next", description='a result that arrives after its own period ended: "next": shown in the next feedback '
        'period (else on the end screen); "end": on the end-of-run screen; "skip": never shown'
    )
    slot_min_s: float = Field(2.0, gt=0, description='"slot": the shortest free stretch used as a feedback period (s)')
    slot_trials: int = Field(4, ge=1, le=8, description='"slot": results shown at most in one period (the rest wait)')
    end_screen_s: float = Field(3.0, ge=0, description="seconds of the end-of-run screen after the last trial (0: none)")
    demand_key: str = Field("f", description="on the operator's window: show the latest result (any mode)")
    screen: Literal["participant", "operator"] = Field("participant", description='"participant" or "operator" (a second window)')
    operator_screen: int = Field(0, description="the operator window's display")
    operator_size: tuple[int, int] = Field((800, 600), description="the operator window's size in pixels")
    window_s: float = Field(8.0, gt=0, description="seconds a feedback period lasts")
    show_image: bool = Field(True, description="show the reconstruction")
    top_k: int = Field(3, ge=0, le=10, description="retrieved images shown (0: none)")
    score_bar: bool = Field(True, description="show the bar (see bar_value)")
    bar_value: Literal["score", "cpd"] = Field(
        "score", description='the bar: "score" (the engine\'s best retrieval score) or "cpd" (pairmate '
        'distinctiveness: +1 at the seen image, -1 at its pairmate, as the engine scores it; needs a pairmate column)'
    )
    score_range: tuple[float, float] = Field((0.0, 1.0), description="bar value mapped to an empty and a full bar")
    show_target: bool = Field(True, description="show the seen (or cued) image beside the reconstruction")
    gallery_dir: Path | None = Field(
        None, description="folder where retrieved ids are found as <id>.png/.jpg (unset: no thumbnails)",
        json_schema_extra=_example("gallery/images"),
    )
    embeddings: Path | None = Field(
        None, description="gallery .npz (embeddings, ids: the decoder's gallery) to score on this PC the pairmate "
        "distinctiveness of a result the engine sent without one (trial lists with a pairmate column)",
        json_schema_extra=_example("gallery.npz"),
    )

    @model_validator(mode="after")
    def _range(self) -> "FeedbackSection":
        if self.score_range[1] <= self.score_range[0]:
            raise ValueError(f"score_range {self.score_range} must be increasing")
        if self.when == "live" and self.screen != "operator":
            raise ValueError('when = "live" draws each result over the task: it needs screen = "operator" '
                             '(for the participant use "slot": feedback in the design\'s free stretches)')
        return self


class StimulusSection(_Section):
    """The stimulus program: trial lists, window, trigger, timings and feedback."""

    trial_lists: tuple[Path, ...] = Field(
        (), description="one trial list TSV per run, in run order; image paths in a list are read from its folder"
    )
    window: WindowSection = WindowSection()
    trigger: TriggerSection = TriggerSection()
    perception: PerceptionSection = PerceptionSection()
    imagery: ImagerySection = ImagerySection()
    feedback: FeedbackSection = FeedbackSection()
    sound: SoundSection = SoundSection()
    lead_in_s: float = Field(0.0, ge=0, description="fixation between the first trigger and the first trial")
    lead_out_s: float = Field(0.0, ge=0, description="fixation after the last trial")
    quit_key: str = Field("escape", description="key that ends the run early")


class ConsoleSection(_Section):
    """The operator console (`rtrecon console`): a web page of the live session."""

    host: str = Field("127.0.0.1", description="address the page is served on (any other than localhost needs [security] keys_dir)")
    port: int = Field(8765, ge=0, le=65535, description="TCP port of the page (0: any free port)")
    fd_threshold_mm: float = Field(0.5, gt=0, description="framewise displacement (mm) above which a volume raises the alarm")
    decoder_backlog: int = Field(3, ge=1, description="trials waiting to be decoded at which the decoder is falling behind")


class SessionConfig(_Section):
    """A whole session config file."""

    session: SessionSection = SessionSection()
    network: NetworkSection = NetworkSection()
    bridge: BridgeSection = BridgeSection()
    security: SecuritySection = SecuritySection()
    engine: EngineSection = EngineSection()
    decoder: DecoderSection = DecoderSection()
    reconstruction: ReconstructionSection = ReconstructionSection()
    stimulus: StimulusSection = StimulusSection()
    console: ConsoleSection = ConsoleSection()

    @model_validator(mode="after")
    def _stages_agree(self) -> "SessionConfig":
        if self.decoder.head == "linear" and self.reconstruction.mode == "official":
            raise ValueError('[decoder] head "linear" has no blurry branch: [reconstruction] mode "official" needs head "mindeye"')
        return self


def _resolve(value: Any, base: Path) -> Any:
    if isinstance(value, BaseModel):
        return _resolve_paths(value, base)
    if isinstance(value, Path) and not value.is_absolute():
        return base / value
    if isinstance(value, tuple) and value and all(isinstance(v, Path) for v in value):
        return tuple(_resolve(v, base) for v in value)
    return value


def _resolve_paths(model: BaseModel, base: Path) -> BaseModel:
    updates = {name: _resolve(getattr(model, name), base) for name in type(model).model_fields}
    return model.model_copy(update=updates)


def load_config(path: str | Path) -> SessionConfig:
    """Read and validate the session config at ``path``."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        config = SessionConfig.model_validate(raw)
    except ValidationError as exc:
        # A check across sections has no location: its message names the sections itself.
        problems = "; ".join(
            ": ".join(filter(None, [".".join(str(p) for p in err["loc"]), err["msg"]])) for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
    return _resolve_paths(config, path.resolve().parent)  # type: ignore[return-value]


def _toml_value(value: Any) -> str:
    """``value`` written as TOML (the types the sections use)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)
    if isinstance(value, (str, Path)):
        # A JSON string is a valid TOML basic string (same escapes).
        return json.dumps(value.as_posix() if isinstance(value, Path) else value, ensure_ascii=False)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _template_table(model: BaseModel, name: str, lines: list[str]) -> None:
    fields = type(model).model_fields
    doc = (type(model).__doc__ or "").strip().splitlines()[0].replace("``", "`")
    lines += ["", f"# {doc}", f"[{name}]"]
    keys, tables = [], []
    for key, info in fields.items():
        value = getattr(model, key)
        if isinstance(value, BaseModel):
            tables.append((key, value))
            continue
        if value is None:
            example = (info.json_schema_extra or {}).get("example")  # type: ignore[union-attr]
            keys.append((f"# {key} = {_toml_value(example)}", info.description or ""))
        else:
            keys.append((f"{key} = {_toml_value(value)}", info.description or ""))
    width = max((len(text) for text, _ in keys), default=0)
    lines += [f"{text:<{width}}  # {comment}" if comment else text for text, comment in keys]
    for key, sub in tables:
        _template_table(sub, f"{name}.{key}", lines)


def config_template() -> str:
    """A commented session config with every key at its default.

    Keys whose default is unset are written commented out, with a typical value. The text loads
    back (:func:`load_config`) to the defaults.
    """
    lines = [
        "# rtrecon session config: one file for the bridge, the engine, the decoder and the stimulus PC.",
        "# Every key is optional and shown with its default; relative paths are read from this file's",
        "# folder; unknown keys are errors. Check it before the scan with: rtrecon session check FILE",
    ]
    defaults = SessionConfig()
    for name in SessionConfig.model_fields:
        _template_table(getattr(defaults, name), name, lines)
    return "\n".join(lines) + "\n"
