"""rtrecon.reconstruction.train_synthetic: a few steps on a few random images (the real run is minutes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rtrecon.reconstruction.config import TINY
from rtrecon.reconstruction.train_synthetic import (
    TrainSettings,
    _loss_weights,
    evaluate_reconstructions,
    load_arrays,
    main,
    save_grid,
    synthetic_pairs,
    train_reconstructor,
)
from rtrecon.reconstruction.unclip import SamplingOptions, UnclipReconstructor


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8), rng.standard_normal((6, 8, 24)).astype(np.float32)


def test_training_lowers_the_losses_and_gives_a_working_decoder(pairs):
    images, tokens = pairs
    logs: list[str] = []
    checkpoints: list[tuple[int, torch.Tensor]] = []
    settings = TrainSettings(vae_steps=6, unet_steps=6, batch_size=4, vae_lr=3e-3, log_every=5, warmup_steps=2)
    config = TINY.replace(image_size=32, prediction_type="v_prediction")
    reconstructor = train_reconstructor(
        images, tokens, config=config, settings=settings, log=logs.append, checkpoint_every=3,
        on_checkpoint=lambda dec, step: checkpoints.append((step, dec.unet.conv_in.weight.detach().clone())),
    )
    vae_losses = [float(line.rsplit(" ", 1)[1]) for line in logs if line.startswith("vae step")]
    assert vae_losses[-1] < vae_losses[0]
    assert [step for step, _ in checkpoints] == [3]  # part-way only: the end result is returned
    assert not torch.equal(checkpoints[0][1], reconstructor.unet.conv_in.weight)  # training went on after it
    assert reconstructor.config.prediction_type == "v_prediction"
    assert reconstructor.config.context_dim == 24 and reconstructor.config.num_tokens == 8
    assert reconstructor.config.output_mapping == "standard"  # trained on (x + 1) / 2 images
    assert reconstructor.vae.config.scaling_factor == pytest.approx(reconstructor.config.scale_factor) and reconstructor.config.scale_factor != 1.0
    metrics = evaluate_reconstructions(
        reconstructor, images[:2], tokens[:2], options=SamplingOptions.fast(steps=2), embedder=lambda x: x.mean(1)
    )
    assert set(metrics) == {"pixel_corr", "pixel_corr_shuffled", "token_cosine", "token_cosine_shuffled",
                            "token_cosine_centered", "token_cosine_centered_shuffled"}
    assert all(np.isfinite(list(metrics.values())))


def test_command_line_writes_a_loadable_decoder_and_metrics(pairs, tmp_path):
    images, tokens = pairs
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "tokens.npy", tokens)
    argv = ["--images", str(tmp_path / "images.npy"), "--tokens", str(tmp_path / "tokens.npy"), "--out", str(tmp_path / "dec")]
    assert main([*argv, "--image-size", "32", "--holdout", "2", "--vae-steps", "1", "--unet-steps", "1", "--batch-size", "2", "--eval-steps", "1"]) == 0
    metrics = json.loads((tmp_path / "dec" / "heldout_metrics.json").read_text())
    assert "pixel_corr_shuffled" in metrics
    reconstructor = UnclipReconstructor.from_pretrained(tmp_path / "dec")
    assert reconstructor(torch.from_numpy(tokens[:1]), SamplingOptions.fast(steps=1)).shape == (1, 3, 32, 32)
    resumed_argv = ["--images", argv[1], "--tokens", argv[3], "--out", str(tmp_path / "dec2"), "--resume", str(tmp_path / "dec")]
    assert main([*resumed_argv, "--holdout", "0", "--vae-steps", "0", "--unet-steps", "1", "--batch-size", "2"]) == 0
    resumed = UnclipReconstructor.from_pretrained(tmp_path / "dec2")
    assert resumed.config == reconstructor.config  # same architecture, same VAE scaling
    assert torch.equal(resumed.vae.state_dict()["decoder.conv_in.weight"], reconstructor.vae.state_dict()["decoder.conv_in.weight"])
    assert not torch.equal(resumed.unet.state_dict()["conv_in.weight"], reconstructor.unet.state_dict()["conv_in.weight"])


def test_bad_arrays_are_refused(pairs, tmp_path):
    images, tokens = pairs
    with pytest.raises(ValueError, match="row for row"):
        train_reconstructor(images, tokens[:3])
    with pytest.raises(ValueError, match="uint8"):
        train_reconstructor(images.astype(np.float32), tokens)
    np.save(tmp_path / "tokens.npy", tokens)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_arrays(tmp_path / "missing.npy", tmp_path / "tokens.npy")
    assert main(["--images", str(tmp_path / "missing.npy"), "--tokens", str(tmp_path / "tokens.npy"), "--out", str(tmp_path / "o")]) == 1


def test_cached_decoder_trains_once_then_loads(pairs, tmp_path):
    from rtrecon.reconstruction.train_synthetic import cached_reconstructor

    images, tokens = pairs
    settings = TrainSettings(vae_steps=1, unet_steps=1, batch_size=2)
    config = TINY.replace(image_size=32)
    logs: list[str] = []
    first = cached_reconstructor(tmp_path / "cache", images, tokens, config=config, settings=settings, log=logs.append)
    assert any(line.startswith("unet step") for line in logs)
    logs.clear()
    again = cached_reconstructor(tmp_path / "cache", images, tokens, config=config, settings=settings, log=logs.append)
    assert logs == []
    assert torch.equal(first.unet.state_dict()["conv_in.weight"], again.unet.state_dict()["conv_in.weight"])
    cached_reconstructor(tmp_path / "cache", images[::-1].copy(), tokens, config=config, settings=settings, log=logs.append)
    assert "retraining" in logs[0]


def test_min_snr_weights_are_the_x0_weights_for_each_parametrisation():
    acp = torch.tensor([0.999, 0.5, 0.01])
    snr = acp / (1 - acp)
    x0_weight = snr.clamp(max=5.0)  # what each loss is reweighted to, in x0 terms
    # An epsilon error is sqrt(snr) times an x0 error, a v error sqrt(snr + 1) times.
    torch.testing.assert_close(_loss_weights(acp, "epsilon", 5.0) * snr, x0_weight)
    torch.testing.assert_close(_loss_weights(acp, "v_prediction", 5.0) * (snr + 1), x0_weight)
    torch.testing.assert_close(_loss_weights(acp, "sample", 5.0), x0_weight)
    assert torch.equal(_loss_weights(acp, "v_prediction", 0.0), torch.ones(3))


def test_synthetic_pairs_are_the_datasets_images_and_tokens():
    from rtrecon.data.images import make_images
    from rtrecon.embedders.openclip import OpenClipImageEmbedder

    images, tokens = synthetic_pairs(3, seed=5)
    expected, _ = make_images(3, 96, seed=5)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_allclose(tokens, OpenClipImageEmbedder.tiny(seed=0).embed(expected).numpy(), rtol=1e-5, atol=1e-5)


def test_save_grid_puts_each_reconstruction_under_its_image(tmp_path):
    from PIL import Image

    images = np.zeros((3, 20, 20, 3), np.uint8)
    images[1] = 255
    recon = torch.zeros(3, 3, 8, 8)
    recon[2, 0] = 1.0  # red
    grid = np.asarray(Image.open(save_grid(tmp_path / "g.png", images, recon, columns=2, cell=10)))
    assert grid.shape == (10 + 10 + 4 + 10 + 10, 20, 3)
    assert (grid[:10, 10:] == 255).all() and (grid[:10, :10] == 0).all()  # originals 0 and 1
    assert (grid[24:34, :10] == 0).all() and (grid[24:34, 10:] == 255).all()  # original 2, then a blank cell
    assert (grid[34:, :10] == [255, 0, 0]).all()  # reconstruction 2 under it
    with pytest.raises(ValueError, match="3 images but 2"):
        save_grid(tmp_path / "h.png", images, recon[:2])


def test_command_line_trains_on_fresh_synthetic_pairs(tmp_path):
    argv = ["--synthetic", "4", "--holdout", "2", "--image-size", "16", "--out", str(tmp_path / "dec"), "--grid", str(tmp_path / "g.png")]
    assert main([*argv, "--vae-steps", "1", "--unet-steps", "1", "--batch-size", "2", "--eval-steps", "1"]) == 0
    metrics = json.loads((tmp_path / "dec" / "heldout_metrics.json").read_text())
    assert {"token_cosine", "token_cosine_shuffled"} <= set(metrics)  # re-embedded by the synthetic world's embedder
    assert (tmp_path / "g.png").is_file()
    record = json.loads((tmp_path / "dec" / "training.json").read_text())
    assert record["pairs"] == 2 and record["data"] == "synthetic_pairs(4, seed=1)"
