"""Session config: a valid file loads with paths resolved; a bad one names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtrecon.contract.config import ConfigError, SessionConfig, config_template, load_config

VALID = """
[session]
subject = "07"
session = "02"
task = "imagery"
output_dir = "out"

[network]
volumes = "tcp://10.0.0.2:6000"
status = "ipc:///tmp/rtrecon-status"
heartbeat_s = 0.5

[bridge]
watch_dir = "/mnt/scanner/export"
watch_mode = "poll"
missing_timeout_s = 4.0
skip_existing = true
spool_dir = "spool/bridge"

[security]
keys_dir = "keys"
"""


def _write(tmp_path: Path, text: str, name: str = "session.toml") -> Path:
    path = tmp_path / "configs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_a_valid_file_and_resolves_relative_paths(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    config = load_config(path)
    base = path.parent.resolve()
    assert config.session.subject == "07" and config.session.task == "imagery"
    assert config.network.volumes == "tcp://10.0.0.2:6000"
    assert config.network.events == "tcp://127.0.0.1:5556"  # default kept
    assert config.network.heartbeat_s == 0.5
    assert config.bridge.watch_mode == "poll" and config.bridge.skip_existing is True
    assert config.session.output_dir == base / "out"
    assert config.bridge.spool_dir == base / "spool" / "bridge"
    assert config.security.keys_dir == base / "keys"
    assert config.bridge.watch_dir == Path("/mnt/scanner/export")  # absolute: left alone


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ""))
    assert config.security.keys_dir is None
    assert config.network == SessionConfig().network
    assert config.bridge.spool_dir == tmp_path.resolve() / "configs" / "rtrecon_out" / "bridge_spool"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID.replace("watch_mode", "watch_mod"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "bridge.watch_mod" in message


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID + "\n[scanner]\nvendor = 'siemens'\n")
    with pytest.raises(ConfigError, match=r"scanner: Extra inputs are not permitted"):
        load_config(path)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('watch_mode = "poll"', 'watch_mode = "smb"', "bridge.watch_mode"),
        ("heartbeat_s = 0.5", "heartbeat_s = -1", "network.heartbeat_s"),
        ('volumes = "tcp://10.0.0.2:6000"', 'volumes = "10.0.0.2:6000"', "network.volumes"),
        ('subject = "07"', 'subject = "sub-07"', "session.subject"),
        ("skip_existing = true", 'skip_existing = "sometimes"', "bridge.skip_existing"),
    ],
)
def test_bad_value_names_file_and_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    assert old in VALID
    path = _write(tmp_path, VALID.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_unreadable_files_give_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    bad = _write(tmp_path, "[session\nsubject = 1", "broken.toml")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(bad)


LIVE = """
[engine]
roi_mask = "masks/roi.nii.gz"
reference = "/data/ref.nii.gz"
zscore_stats = "train/stats.npz"
releases_s = [6.5, 13.0]
average_repeats = true

[engine.glm]
hrf_model = "spm + derivative"
high_pass = 0.008
motion_confounds = false

[decoder]
checkpoint = "ckpt/last.pth"
gallery = "gallery"
top_k = 3

[reconstruction]
unclip = "weights/unclip6"
steps = 8

[stimulus]
trial_lists = ["trials/run-01.tsv", "trials/run-02.tsv"]

[stimulus.trigger]
keys = ["5", "t"]

[stimulus.perception]
image_s = 2.5

[stimulus.feedback]
when = "block"
screen = "operator"
show_target = false
gallery_dir = "gallery/images"
"""


def test_live_sections_load_and_resolve_every_path(tmp_path: Path) -> None:
    path = _write(tmp_path, LIVE)
    base = path.parent.resolve()
    config = load_config(path)
    engine, decoder, reconstruction, stimulus = config.engine, config.decoder, config.reconstruction, config.stimulus
    assert engine.roi_mask == base / "masks" / "roi.nii.gz"
    assert engine.reference == Path("/data/ref.nii.gz")
    assert engine.zscore_stats == base / "train" / "stats.npz"
    assert engine.releases_s == [6.5, 13.0] and engine.average_repeats is True and engine.beta_method == "lss"
    assert engine.glm.hrf_model == "spm + derivative" and engine.glm.high_pass == 0.008
    assert engine.glm.motion_confounds is False and engine.glm.drift_model == "cosine"
    assert decoder.checkpoint == base / "ckpt" / "last.pth" and decoder.gallery == base / "gallery"
    assert reconstruction.unclip == base / "weights" / "unclip6" and (decoder.top_k, reconstruction.steps) == (3, 8)
    assert stimulus.trial_lists == (base / "trials" / "run-01.tsv", base / "trials" / "run-02.tsv")
    assert stimulus.trigger.keys == ("5", "t") and stimulus.perception.image_s == 2.5
    assert stimulus.perception.gap_s == 1.0  # default kept
    assert stimulus.feedback.when == "block" and stimulus.feedback.screen == "operator"
    assert stimulus.feedback.gallery_dir == base / "gallery" / "images"


def test_empty_file_leaves_the_live_sections_unset(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ""))
    assert config.engine.roi_mask is None and config.engine.reference is None
    assert config.engine.zscore_stats is None and config.decoder.checkpoint is None
    assert config.reconstruction.unclip is None and config.stimulus.trial_lists == ()


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('hrf_model = "spm + derivative"', 'hrf_model = "gamma"', "engine.glm.hrf_model"),
        ("high_pass = 0.008", "high_pass = 0", "engine.glm.high_pass"),
        ("motion_confounds = false", "motion = false", "engine.glm.motion"),
        ("releases_s = [6.5, 13.0]", "releases_s = [13.0, 6.5]", "engine.releases_s: Value error, [13.0, 6.5]: delays must increase"),
        ("releases_s = [6.5, 13.0]", "ready_delay_s = 6.5", "engine: Value error, ready_delay_s was replaced by releases_s: write releases_s = [6.5]"),
        ("top_k = 3", "top_k = 0", "decoder.top_k"),
        ("steps = 8", "steps = 0", "reconstruction.steps"),
        ('when = "block"', 'when = "always"', "stimulus.feedback.when"),
        ('keys = ["5", "t"]', "keys = []", "stimulus.trigger"),
        ('show_target = false', 'score_range = [1.0, 0.0]', "stimulus.feedback"),
    ],
)
def test_bad_live_value_names_file_and_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    assert old in LIVE
    path = _write(tmp_path, LIVE.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_template_is_commented_and_loads_back_to_the_defaults(tmp_path: Path) -> None:
    text = config_template()
    assert load_config(_write(tmp_path, text)) == load_config(_write(tmp_path, "", "empty.toml"))
    # unset keys are present but commented out, with an example, so uncommenting one is valid
    assert '# unclip = "weights/unclip6"' in text
    uncommented = text.replace('# unclip = "weights/unclip6"', 'unclip = "weights/unclip6"')
    config = load_config(_write(tmp_path, uncommented, "edited.toml"))
    assert config.reconstruction.unclip == (tmp_path / "configs" / "weights" / "unclip6").resolve()
    assert "\n[reconstruction]\n" in text and "# The reconstruction: the unCLIP image model" in text


def test_decoder_device_precision_and_reconstruction_mode_keys(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[decoder]\ndevice = "cuda:1"\nprecision = "bf16-autocast"\ncuda_graphs = true\n'
                                          '[reconstruction]\nmode = "official"\nblurry_vae = "w/sd_image_var_autoenc.pth"\n'))
    d, r = config.decoder, config.reconstruction
    assert (d.device, d.precision, r.mode, d.cuda_graphs) == ("cuda:1", "bf16-autocast", "official", True)
    assert r.blurry_vae.parts[-2:] == ("w", "sd_image_var_autoenc.pth") and r.blurry_vae.is_absolute()
    defaults = load_config(_write(tmp_path, ""))
    assert (defaults.decoder.device, defaults.decoder.precision, defaults.decoder.warmup) == ("auto", "fp16-autocast", True)
    assert (defaults.reconstruction.mode, defaults.reconstruction.steps, defaults.reconstruction.unclip) == ("fast", 4, None)
    for text, key in [('[decoder]\ndevice = "gpu0"', "decoder.device"), ('[decoder]\nprecision = "fp16"', "decoder.precision"),
                      ('[reconstruction]\nmode = "official"', 'reconstruction: Value error, mode "official" blends in '
                       "the blurry-branch image: set blurry_vae"),
                      ('[decoder]\nhead = "linear"\nlinear_head = "h.npz"\n[reconstruction]\nmode = "official"\nblurry_vae = "b.pth"',
                       '[decoder] head "linear" has no blurry branch: [reconstruction] mode "official" needs head "mindeye"')]:
        path = _write(tmp_path, f"{text}\n", name="bad.toml")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(path) in str(info.value) and key in str(info.value)
        assert ": : " not in str(info.value)  # a check across sections has no key path to print


@pytest.mark.parametrize(
    ("old", "new"),
    [("unclip", "unclip"), ("steps", "steps"), ("recon", "mode"), ("blurry_vae", "blurry_vae"), ("channels_last", "channels_last")],
)
def test_a_key_moved_to_reconstruction_is_refused_with_its_new_place(tmp_path: Path, old: str, new: str) -> None:
    value = {"unclip": '"weights/unclip6"', "steps": "8", "recon": '"fast"', "blurry_vae": '"b.pth"', "channels_last": "true"}[old]
    path = _write(tmp_path, f'[decoder]\ncheckpoint = "ck.pth"\n{old} = {value}\n', name="old.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.count("\n") == 0 and str(path) in message
    assert f"[decoder] {old} moved to [reconstruction] {new}" in message
    # the control: the same key under [reconstruction] loads
    moved = load_config(_write(tmp_path, f'[decoder]\ncheckpoint = "ck.pth"\n[reconstruction]\n{new} = {value}\n', name="new.toml"))
    assert moved.decoder.checkpoint is not None and getattr(moved.reconstruction, new) is not None
