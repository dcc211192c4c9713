"""rtrecon.decoders.train_synthetic: a few steps on a few random images (the real run is minutes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rtrecon.decoders.config import TINY
from rtrecon.decoders.train_synthetic import TrainSettings, evaluate_reconstructions, load_arrays, main, train_decoder
from rtrecon.decoders.unclip import SamplingOptions, UnclipDecoder


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8), rng.standard_normal((6, 8, 24)).astype(np.float32)


def test_training_lowers_the_losses_and_gives_a_working_decoder(pairs):
    images, tokens = pairs
    logs: list[str] = []
    settings = TrainSettings(vae_steps=6, unet_steps=6, batch_size=4, vae_lr=3e-3, log_every=5)
    decoder = train_decoder(images, tokens, config=TINY.replace(image_size=32), settings=settings, log=logs.append)
    vae_losses = [float(line.rsplit(" ", 1)[1]) for line in logs if line.startswith("vae step")]
    assert vae_losses[-1] < vae_losses[0]
    assert decoder.config.context_dim == 24 and decoder.config.num_tokens == 8
    assert decoder.config.output_mapping == "standard"  # trained on (x + 1) / 2 images
    assert decoder.vae.config.scaling_factor == pytest.approx(decoder.config.scale_factor) and decoder.config.scale_factor != 1.0
    metrics = evaluate_reconstructions(
        decoder, images[:2], tokens[:2], options=SamplingOptions.fast(steps=2), embedder=lambda x: x.mean(1)
    )
    assert set(metrics) == {"pixel_corr", "pixel_corr_shuffled", "token_cosine", "token_cosine_shuffled"}
    assert all(np.isfinite(list(metrics.values())))


def test_command_line_writes_a_loadable_decoder_and_metrics(pairs, tmp_path):
    images, tokens = pairs
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "tokens.npy", tokens)
    argv = ["--images", str(tmp_path / "images.npy"), "--tokens", str(tmp_path / "tokens.npy"), "--out", str(tmp_path / "dec")]
    assert main([*argv, "--image-size", "32", "--holdout", "2", "--vae-steps", "1", "--unet-steps", "1", "--batch-size", "2", "--eval-steps", "1"]) == 0
    metrics = json.loads((tmp_path / "dec" / "heldout_metrics.json").read_text())
    assert "pixel_corr_shuffled" in metrics
    decoder = UnclipDecoder.from_pretrained(tmp_path / "dec")
    assert decoder(torch.from_numpy(tokens[:1]), SamplingOptions.fast(steps=1)).shape == (1, 3, 32, 32)
    resumed_argv = ["--images", argv[1], "--tokens", argv[3], "--out", str(tmp_path / "dec2"), "--resume", str(tmp_path / "dec")]
    assert main([*resumed_argv, "--holdout", "0", "--vae-steps", "0", "--unet-steps", "1", "--batch-size", "2"]) == 0
    resumed = UnclipDecoder.from_pretrained(tmp_path / "dec2")
    assert resumed.config == decoder.config  # same architecture, same VAE scaling
    assert torch.equal(resumed.vae.state_dict()["decoder.conv_in.weight"], decoder.vae.state_dict()["decoder.conv_in.weight"])
    assert not torch.equal(resumed.unet.state_dict()["conv_in.weight"], decoder.unet.state_dict()["conv_in.weight"])


def test_bad_arrays_are_refused(pairs, tmp_path):
    images, tokens = pairs
    with pytest.raises(ValueError, match="row for row"):
        train_decoder(images, tokens[:3])
    with pytest.raises(ValueError, match="uint8"):
        train_decoder(images.astype(np.float32), tokens)
    np.save(tmp_path / "tokens.npy", tokens)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_arrays(tmp_path / "missing.npy", tmp_path / "tokens.npy")
    assert main(["--images", str(tmp_path / "missing.npy"), "--tokens", str(tmp_path / "tokens.npy"), "--out", str(tmp_path / "o")]) == 1


def test_cached_decoder_trains_once_then_loads(pairs, tmp_path):
    from rtrecon.decoders.train_synthetic import cached_decoder

    images, tokens = pairs
    settings = TrainSettings(vae_steps=1, unet_steps=1, batch_size=2)
    config = TINY.replace(image_size=32)
    logs: list[str] = []
    first = cached_decoder(tmp_path / "cache", images, tokens, config=config, settings=settings, log=logs.append)
    assert any(line.startswith("unet step") for line in logs)
    logs.clear()
    again = cached_decoder(tmp_path / "cache", images, tokens, config=config, settings=settings, log=logs.append)
    assert logs == []
    assert torch.equal(first.unet.state_dict()["conv_in.weight"], again.unet.state_dict()["conv_in.weight"])
    cached_decoder(tmp_path / "cache", images[::-1].copy(), tokens, config=config, settings=settings, log=logs.append)
    assert "retraining" in logs[0]
