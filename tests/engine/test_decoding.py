"""The engine's decoding stage: a trial beta → retrieval among the gallery (+ an unCLIP image)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from engine.decoding import BackgroundDecoder, DecodingStage, load_gallery
from engine.store import SessionStore
from engine.trials import TrialBeta
from rtrecon.contract.config import ConfigError, load_config
from rtrecon.models import MindEye2, MindEye2Config, save_checkpoint
from rtrecon.contract.wire import TrialResultMessage, decode, encode
from rtrecon.testing import scaled

N_VOX = 40


def _model(use_prior: bool = False, tokens: int = 4, dim: int = 16) -> MindEye2:
    torch.manual_seed(0)
    config = MindEye2Config.tiny((30, N_VOX)).replace(clip_tokens=tokens, clip_dim=dim, use_prior=use_prior)
    return MindEye2(config).eval()


def _betas(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_VOX)).astype(np.float32)


def _gallery_of(model: MindEye2, betas: np.ndarray) -> np.ndarray:
    """Gallery embeddings that are exactly what the model predicts for ``betas`` (subject 1)."""
    with torch.no_grad():
        return model.encode(torch.from_numpy(betas), 1).clip_voxels.numpy()


def test_retrieves_the_image_whose_embedding_the_beta_predicts():
    model, betas = _model(), _betas(6)
    ids = [f"nsd:{i}" for i in range(100, 106)]
    sent: list[TrialResultMessage] = []
    stage = DecodingStage(model, _gallery_of(model, betas), ids, sent.append, "sub-01_ses-01", subject=1, top_k=3)
    for k in (4, 0):
        stage(TrialBeta(run=1, trial=k + 10, stimulus=ids[k], beta=betas[k], z=betas[k], repeats=1))
    assert [m.trial for m in sent] == [14, 10]
    first = sent[0]
    assert first.retrieved[0] == "nsd:104" and len(first.retrieved) == 3
    assert first.scores[0] == pytest.approx(1.0, abs=1e-5) and first.scores == sorted(first.scores, reverse=True)
    assert first.session == "sub-01_ses-01" and first.run == 1 and first.stimulus == "nsd:104"
    assert first.image is None and set(first.latencies) == {"decode_s", "retrieval_s"}
    assert first.stamps["decode_start"] <= first.stamps["decoded"] <= first.stamps["sent"]
    assert np.linalg.norm(first.embedding) == pytest.approx(1.0, abs=1e-5)
    assert sent[1].retrieved[0] == "nsd:100"
    again = decode(encode(first))  # it travels over the wire as is
    assert again.retrieved == first.retrieved


def test_wrong_beta_size_is_a_clear_error():
    model = _model()
    stage = DecodingStage(model, np.ones((2, 64), np.float32), ["a", "b"], lambda m: None, "s", subject=0, name="ck.pth")
    with pytest.raises(ValueError, match=r"ck.pth: adapter 0 takes 30 voxels, trial 3 of run 2 has a beta of 40"):
        stage.decode(TrialBeta(2, 3, "a", np.zeros(N_VOX), np.zeros(N_VOX), 1))


def test_background_decoder_keeps_release_order_and_sends_the_bare_beta_of_a_failed_trial(caplog):
    model, betas = _model(), _betas(4)
    ids = [f"img{i}" for i in range(4)]
    decoder = BackgroundDecoder(DecodingStage(model, _gallery_of(model, betas), ids, lambda m: None, "s", subject=1))
    trials = [TrialBeta(1, t, ids[t], betas[t], betas[t], 1) for t in range(4)]
    trials[2] = TrialBeta(1, 2, ids[2], betas[2][:10], betas[2][:10], 1)  # a beta of the wrong size
    for trial in trials:
        bare = TrialResultMessage(session="s", run=1, trial=trial.trial, embedding=trial.z, decoder="trial-beta",
                                  latencies={"betas_s": 0.01}, stamps={"trial_ready": 1.0})
        decoder.submit(trial, bare)
    assert decoder.pending == 4
    done = []
    while len(done) < 4:
        done += decoder.collect(timeout_s=scaled(10))
    decoder.close()
    assert [t.trial for t, _ in done] == [0, 1, 2, 3] and decoder.pending == 0
    results = [r for _, r in done]
    assert [r.decoder for r in results] == ["mindeye2", "mindeye2", "trial-beta", "mindeye2"]
    assert [r.retrieved[0] for r in results if r.decoder == "mindeye2"] == ["img0", "img1", "img3"]
    assert results[0].stamps["trial_ready"] == 1.0 and results[0].latencies["betas_s"] == 0.01
    assert "decode_s" in results[0].latencies
    assert "trial 2 of run 1 could not be decoded" in caplog.text


def test_from_config_loads_checkpoint_and_gallery_and_saves_derivatives(tmp_path):
    model, betas = _model(), _betas(5)
    save_checkpoint(model, tmp_path / "ck.pth")
    ids = np.array([f"img{i}" for i in range(5)])
    np.savez(tmp_path / "gallery.npz", embeddings=_gallery_of(model, betas), ids=ids)
    (tmp_path / "session.toml").write_text(
        '[session]\nsubject = "02"\nsession = "03"\noutput_dir = "out"\n'
        '[decoder]\ncheckpoint = "ck.pth"\ngallery = "gallery.npz"\nsubject = 1\ntop_k = 2\n'
    )
    config = load_config(tmp_path / "session.toml")
    store = SessionStore(tmp_path / "out", "02", "03", "perception")
    sent: list[TrialResultMessage] = []
    stage = DecodingStage.from_config(config, sent.append, store)
    stage(TrialBeta(1, 7, "img2", betas[2], betas[2], 1))
    assert sent[0].session == "sub-02_ses-03" and sent[0].retrieved == ["img2", sent[0].retrieved[1]]
    assert sent[0].decoder == "ck.pth"
    with np.load(store.derivative_path(1, "trial7release0decoded", ".npz")) as saved:
        assert list(saved["retrieved"]) == sent[0].retrieved
        np.testing.assert_allclose(saved["embedding"], sent[0].embedding)


def test_from_config_errors_name_the_problem(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "noids.npz", embeddings=np.ones((2, 3)))
    with pytest.raises(ConfigError, match="bad.npz: cannot be read"):
        load_gallery(tmp_path / "bad.npz")
    with pytest.raises(ConfigError, match="noids.npz: a gallery needs arrays 'embeddings' and 'ids'"):
        load_gallery(tmp_path / "noids.npz")
    (tmp_path / "s.toml").write_text('[decoder]\ncheckpoint = "missing.pth"\ngallery = "noids.npz"\n')
    with pytest.raises(ConfigError, match="missing.pth: no such MindEye2 checkpoint"):
        DecodingStage.from_config(load_config(tmp_path / "s.toml"), lambda m: None)


def test_unclip_reconstruction_turns_the_prior_tokens_into_an_image():
    from rtrecon.reconstruction.unclip import UnclipReconstructor

    model, betas = _model(use_prior=True, tokens=64, dim=64), _betas(3)
    sent: list[TrialResultMessage] = []
    stage = DecodingStage(model, _gallery_of(model, betas), ["a", "b", "c"], sent.append, "s", subject=1,
                          unclip=UnclipReconstructor.tiny(), steps=1)
    stage(TrialBeta(1, 0, "b", betas[1], betas[1], 1))
    image = sent[0].image
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0
    assert sent[0].retrieved[0] == "b" and sent[0].latencies["image_s"] > 0
    assert sent[0].stamps["decoded"] <= sent[0].stamps["generated"]


def _tiny_blurry_vae(folder):
    """A small diffusers AutoencoderKL with 4 latent channels (the blurry latent's), saved under ``folder``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1)
    vae.save_pretrained(folder)
    return vae.eval()


def test_warm_up_decodes_once_sends_nothing_and_status_reports_readiness(tmp_path):
    from rtrecon.reconstruction.unclip import UnclipReconstructor

    model, betas = _model(use_prior=True, tokens=64, dim=64), _betas(3)
    sent: list[TrialResultMessage] = []
    store = SessionStore(tmp_path / "out", "01", "01", "perception")
    stage = DecodingStage(model, _gallery_of(model, betas), ["a", "b", "c"], sent.append, "s", subject=1,
                          unclip=UnclipReconstructor.tiny(), steps=1, store=store)
    assert stage.status()["decoder_ready"] == 0.0
    seconds = stage.warm_up()
    status = stage.status()
    assert seconds > 0 and status == {"decoder_ready": 1.0, "decoder_warmup_s": seconds, "decoder_gpu_mb": 0.0}
    assert sent == [] and store.runs() == []
    decoder = BackgroundDecoder(stage, warm_up=True)  # warms up on its thread, then decodes the queue
    trial = TrialBeta(1, 0, "c", betas[2], betas[2], 1)
    decoder.submit(trial, TrialResultMessage(session="s", run=1, trial=0, decoder="trial-beta"))
    done = decoder.collect(timeout_s=scaled(60))
    decoder.close()
    assert done[0][1].decoder == "mindeye2" and done[0][1].image is not None
    assert decoder.status()["decoder_ready"] == 1.0


def test_bf16_autocast_stage_from_config_decodes_as_float32_does(tmp_path):
    model, betas = _model(), _betas(5)
    save_checkpoint(model, tmp_path / "ck.pth")
    np.savez(tmp_path / "gallery.npz", embeddings=_gallery_of(model, betas), ids=np.array([f"img{i}" for i in range(5)]))
    results = {}
    for precision in ("fp32", "bf16-autocast"):
        (tmp_path / "s.toml").write_text(f'[decoder]\ncheckpoint = "ck.pth"\ngallery = "gallery.npz"\nsubject = 1\n'
                                         f'device = "auto"\nprecision = "{precision}"\n')
        sent: list[TrialResultMessage] = []
        stage = DecodingStage.from_config(load_config(tmp_path / "s.toml"), sent.append)
        assert stage.placement.precision == precision and stage.placement.device.type == "cpu"
        for k in range(5):
            stage(TrialBeta(1, k, f"img{k}", betas[k], betas[k], 1))
        results[precision] = sent
    for a, b in zip(results["fp32"], results["bf16-autocast"]):
        assert a.retrieved == b.retrieved and b.embedding.dtype == np.float32
        assert float(a.embedding @ b.embedding) > 0.99


def test_official_mode_blends_a_quarter_of_the_blurry_image(tmp_path):
    """[reconstruction] mode "official": 0.75 x the unCLIP image + 0.25 x the blurry latent decoded by
    the VAE (recomputed here with diffusers directly); mode "fast" is the unCLIP image alone."""
    from rtrecon.reconstruction.unclip import UnclipReconstructor

    torch.manual_seed(0)
    config = MindEye2Config.tiny((30, N_VOX), blurry=True).replace(clip_tokens=64, clip_dim=64)
    model, betas = MindEye2(config).eval(), _betas(2)
    vae = _tiny_blurry_vae(tmp_path / "blurry_vae")
    from rtrecon.models.blurry import load_blurry_vae

    images = {}
    for mode in ("fast", "official"):
        sent: list[TrialResultMessage] = []
        stage = DecodingStage(model, _gallery_of(model, betas), ["a", "b"], sent.append, "s", subject=1,
                              unclip=UnclipReconstructor.tiny(), steps=1, reconstruction_mode=mode,
                              blurry_vae=load_blurry_vae(tmp_path / "blurry_vae") if mode == "official" else None)
        stage(TrialBeta(1, 4, "a", betas[0], betas[0], 1))
        images[mode] = sent[0].image.astype(np.float64) / 255
    with torch.no_grad():
        latent = model.encode(torch.from_numpy(betas[:1]), 1).blurry_latent
        blurry = (vae.decode(latent / 0.18215).sample / 2 + 0.5).clamp(0, 1)
        size = images["fast"].shape[:2]
        blurry = torch.nn.functional.interpolate(blurry, size=size, mode="bilinear", antialias=True).clamp(0, 1)
    expected = 0.75 * images["fast"] + 0.25 * blurry[0].permute(1, 2, 0).numpy()
    assert np.abs(images["official"] - expected).max() <= 1.5 / 255  # two roundings to 8 bits
    assert np.abs(images["official"] - images["fast"]).max() > 10 / 255  # the control: the blend shows
    with pytest.raises(ConfigError, match="reconstruction mode 'official' needs a model with the blurry branch"):
        DecodingStage(_model(), np.ones((1, 64)), ["a"], lambda m: None, "s", reconstruction_mode="official", blurry_vae=vae)


def test_official_blurry_autoencoder_file_loads_strictly(tmp_path):
    from diffusers import AutoencoderKL

    from rtrecon.models.blurry import BLURRY_VAE_CONFIG, load_blurry_vae

    with torch.device("meta"):
        official = AutoencoderKL(**BLURRY_VAE_CONFIG)
    assert sum(p.numel() for p in official.parameters()) > 80_000_000  # the SD image-variation VAE
    small = _tiny_blurry_vae(tmp_path / "small")
    torch.save(small.state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="wrong.pth: not the SD image-variation autoencoder"):
        load_blurry_vae(tmp_path / "wrong.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth: no such blurry-branch autoencoder"):
        load_blurry_vae(tmp_path / "missing.pth")


def test_from_config_refuses_models_that_do_not_fit_before_moving_them(tmp_path, monkeypatch):
    """The check runs on the CPU-loaded models against the GPU's free memory (faked here: 1 KiB
    free), so the refusal comes before any tensor is sent to the device."""
    from rtrecon.runtime.device import Placement

    model, betas = _model(), _betas(2)
    save_checkpoint(model, tmp_path / "ck.pth")
    np.savez(tmp_path / "gallery.npz", embeddings=_gallery_of(model, betas), ids=np.array(["a", "b"]))
    (tmp_path / "s.toml").write_text('[decoder]\ncheckpoint = "ck.pth"\ngallery = "gallery.npz"\n')
    monkeypatch.setattr(Placement, "from_names", classmethod(lambda cls, d, p: cls(torch.device("cuda", 0), "fp16-autocast")))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1024, 80 * 2**30))
    with pytest.raises(ConfigError, match=r"\[decoder\]: the decoder's models \(ck.pth\) need .* GiB .* but cuda:0 has 0.0 of 80.0 GiB free"):
        DecodingStage.from_config(load_config(tmp_path / "s.toml"), lambda m: None)


@pytest.fixture(scope="module")
def imagery_world(tmp_path_factory: pytest.TempPathFactory):
    """A tiny synthetic world (the data tests' size), its subject 1's imagery runs, and a gallery of its images."""
    from dataclasses import replace

    from rtrecon.data.imagery import ImageryProtocol, simulate
    from rtrecon.data.synthetic import PRESETS, generate, load_truth

    tiny = replace(PRESETS["small"], name="tiny", grid=(16, 19, 16), voxel_mm=6.75, roi_voxels=300, image_size=48)
    root = generate(tmp_path_factory.mktemp("nsd") / "root", n_subjects=2, n_sessions=2, n_runs=2, size=tiny,
                    seed=7, progress=False)
    embeddings = load_truth(root)["embeddings"]
    gallery = tmp_path_factory.mktemp("gallery") / "gallery.npz"
    np.savez(gallery, embeddings=embeddings, ids=np.array([f"nsd:{i}" for i in range(1, len(embeddings) + 1)]))
    # 576 imagery trials: NSD-Imagery's count per participant in its benchmark (the reference note)
    return root, simulate(root, 1, seed=0, protocol=ImageryProtocol(runs_per_set=4)), embeddings, gallery


def test_the_linear_head_decodes_imagery_through_the_engine_above_chance_and_a_shuffled_one_at_chance(imagery_world, tmp_path):
    from scipy.stats import binomtest

    from engine.trials import TrialNormaliser
    from rtrecon.data.imagery import imagery_retrieval
    from rtrecon.data.nsd import NSDDataset
    from rtrecon.demo.training import subject_data
    from rtrecon.models.linear_head import LinearHead

    root, imagery, embeddings, gallery = imagery_world
    nsd = NSDDataset(root)
    # trained on perception only (z-scored per session, as the engine z-scores live betas), never on the targets
    data = subject_data(nsd, 1, nsd.sessions(1))
    train = ~np.isin(data.image_ids + 1, imagery.trials["image_id"].unique())
    x, y = data.betas[train], embeddings[data.image_ids[train]]
    LinearHead().fit(x, y).save(tmp_path / "head.npz")
    LinearHead().fit(x, y[np.random.default_rng(1).permutation(len(y))]).save(tmp_path / "shuffled.npz")
    scores = {}
    for name in ("head", "shuffled"):
        (tmp_path / f"{name}.toml").write_text(f'[decoder]\nhead = "linear"\nlinear_head = "{name}.npz"\n'
                                               f'gallery = "{gallery}"\ntop_k = 3\n')
        sent: list[TrialResultMessage] = []
        stage = DecodingStage.from_config(load_config(tmp_path / f"{name}.toml"), sent.append)
        assert stage.warm_up() >= 0 and not stage.makes_images
        normaliser = TrialNormaliser(stage.n_voxels)
        for k, (row, beta) in enumerate(zip(imagery.trials.itertuples(), imagery.betas)):
            stage(normaliser.release(int(row.run), k, f"nsd:{row.image_id}", beta))
        assert len(sent) == len(imagery.trials) and sent[0].decoder == f"{name}.npz" and len(sent[0].retrieved) == 3
        assert sent[0].image is None and set(sent[0].latencies) == {"decode_s", "retrieval_s"}
        # the first trial has no running statistics yet (a zero beta): scored from the second on
        decoded = np.stack([m.embedding for m in sent])[1:]
        # ranked where the stage retrieves: the head's centred space
        space = embeddings.reshape(len(embeddings), -1) - stage.model.target_mean
        scores[name] = imagery_retrieval(decoded, imagery.trials.iloc[1:], space)
    head, control = scores["head"], scores["shuffled"]
    assert head["chance"] == pytest.approx(1 / 6) and set(head["per_set"]) == {"simple", "naturalistic", "conceptual"}
    assert binomtest(int(head["correct"].sum()), head["n"], 1 / 6, alternative="greater").pvalue < 1e-3
    assert binomtest(int(control["correct"].sum()), control["n"], 1 / 6).pvalue > 0.01
    print(f"imagery through the engine: linear head {head['accuracy']:.3f}, shuffled {control['accuracy']:.3f}, "
          f"chance {head['chance']:.3f}, per set {head['per_set']}, per vividness {head['per_vividness']}")


def test_the_linear_head_retrieves_in_its_centred_space_so_that_no_gallery_row_becomes_a_hub():
    """The cause of the imagery demo's hub, in seconds: CLIP-like targets with a large common part, a
    ridge head that shrinks its predictions towards it, weak imagery betas, the engine's stage."""
    from collections import Counter

    from engine.trials import TrialNormaliser
    from rtrecon.models.linear_head import LinearHead
    from rtrecon.runtime.retrieval import Retriever

    rng = np.random.default_rng(0)
    n_images, n_voxels, dim, n_train = 306, 150, 256, 300
    # the imagery demo's proportions: the targets' mean 4.5 times as long as a target's distance from it
    targets = (4.5 * rng.standard_normal(dim) + rng.standard_normal((n_images, dim))).astype(np.float32)
    responses = (targets - targets.mean(0)) @ (rng.standard_normal((dim, n_voxels)) / np.sqrt(dim))
    seen = np.repeat(np.arange(n_train), 3)  # each training image seen 3 times, as in NSD
    head = LinearHead().fit(responses[seen] + 2.0 * rng.standard_normal((len(seen), n_voxels)), targets[seen])
    imagined = np.repeat(np.arange(n_train, n_images), 8)  # 6 targets x 8 repeats, never trained on
    imagery = 0.5 * responses[imagined] + rng.standard_normal((len(imagined), n_voxels))
    ids = [f"nsd:{i + 1}" for i in range(n_train, n_images)]
    truth = [f"nsd:{i + 1}" for i in imagined[1:]]  # the first trial has no running statistics yet: from the second on

    def figures(top1: list[str]) -> tuple[float, float]:
        """Top-1 among the 6 targets and the most retrieved target's share."""
        return float(np.mean([a == b for a, b in zip(top1, truth)])), Counter(top1).most_common(1)[0][1] / len(top1)

    sent: list[TrialResultMessage] = []
    stage = DecodingStage(head, targets[n_train:], ids, sent.append, "sub-01_ses-01", top_k=1)
    normaliser = TrialNormaliser(n_voxels)
    released = [normaliser.release(1, k, f"nsd:{image + 1}", beta) for k, (image, beta) in enumerate(zip(imagined, imagery))]
    for trial in released:
        stage(trial)
    top1, hub = figures([m.retrieved[0] for m in sent[1:]])
    # the control: the same predictions ranked by cosine among the uncentred targets pick one target in most trials
    raw = Retriever(targets[n_train:], ids).topk(head.predict(np.stack([t.z for t in released[1:]])), 1)[0]
    raw_top1, raw_hub = figures([row[0] for row in raw])
    print(f"centred: top-1 {top1:.3f}, hub {hub:.2f}; uncentred: top-1 {raw_top1:.3f}, hub {raw_hub:.2f}")
    assert raw_hub > 0.6
    assert hub < 0.4 and top1 > raw_top1 + 0.2 and top1 > 0.5
    # what is sent and stored is the centred prediction, normalised
    deviation = head.predict(released[1].z[None])[0] - head.target_mean
    assert np.allclose(sent[1].embedding, deviation / np.linalg.norm(deviation), atol=1e-5)


def test_a_linear_head_config_is_refused_with_one_line(tmp_path):
    from rtrecon.models.linear_head import LinearHead

    (tmp_path / "a.toml").write_text('[decoder]\nhead = "linear"\ngallery = "g.npz"\n')
    with pytest.raises(ConfigError, match='head "linear" decodes with a ridge head file: set linear_head'):
        load_config(tmp_path / "a.toml")
    rng = np.random.default_rng(0)
    LinearHead().fit(rng.standard_normal((20, N_VOX)), rng.standard_normal((20, 4, 16))).save(tmp_path / "h.npz")
    np.savez(tmp_path / "g.npz", embeddings=np.ones((3, 8), np.float32), ids=np.array(["a", "b", "c"]))
    (tmp_path / "b.toml").write_text('[decoder]\nhead = "linear"\nlinear_head = "h.npz"\ngallery = "g.npz"\n')
    with pytest.raises(ConfigError, match=r"h.npz: the head predicts \(4, 16\) targets, the gallery .*g.npz holds \(8,\)"):
        DecodingStage.from_config(load_config(tmp_path / "b.toml"), lambda m: None)
    (tmp_path / "c.toml").write_text('[decoder]\nhead = "linear"\nlinear_head = "none.npz"\ngallery = "g.npz"\n')
    with pytest.raises(ConfigError, match=r"none.npz: no such linear head file \(\[decoder\] linear_head\)"):
        DecodingStage.from_config(load_config(tmp_path / "c.toml"), lambda m: None)
    assert not load_config(tmp_path / "c.toml").decoder.head == "mindeye" and load_config(tmp_path / "c.toml").decoder.decodes
    (tmp_path / "d.toml").write_text('[decoder]\nhead = "linear"\nlinear_head = "h.npz"\ngallery = "g.npz"\n'
                                     '[reconstruction]\nunclip = "unclip"\n')
    with pytest.raises(ConfigError, match=r'\[reconstruction\] unclip: \[decoder\] head "linear" retrieves only'):
        DecodingStage.from_config(load_config(tmp_path / "d.toml"), lambda m: None)


def _pairmate_case(n: int = 240, noise: float = 1.0):
    """A tiny MindEye2, a gallery of what it predicts for ``n`` clean betas, and noisy betas of them:
    image 2k's pairmate is 2k+1 and back (RT-MindEye's pairs of similar images)."""
    model, betas = _model(), _betas(n, seed=3)
    noisy = betas + noise * np.random.default_rng(4).normal(size=betas.shape).astype(np.float32)
    ids = [f"nsd:{i}" for i in range(n)]
    pairmate = [ids[i + 1 if i % 2 == 0 else i - 1] for i in range(n)]
    return model, _gallery_of(model, betas), ids, pairmate, noisy


def test_cpd_of_each_decoded_trial_is_the_pairmate_distinctiveness_and_a_shuffled_control_is_at_chance():
    from scipy.stats import binomtest

    from rtrecon.runtime.retrieval import pairmate_distinctiveness
    from stimulus.pairmates import distinctiveness

    model, gallery, ids, pairmate, noisy = _pairmate_case()
    sent: list[TrialResultMessage] = []
    stage = DecodingStage(model, gallery, ids, sent.append, "s", subject=1)
    for k in range(len(ids)):
        stage(TrialBeta(1, k, ids[k], noisy[k], noisy[k], 1, pairmate=pairmate[k]))
    cpd = np.array([m.cpd for m in sent])
    assert [m.pairmate for m in sent] == pairmate
    row = {i: k for k, i in enumerate(ids)}
    for m in sent[:8]:  # the library's torch formula, and the stimulus PC's numpy one, on the raw gallery rows
        c, f = gallery[row[m.stimulus]][None], gallery[row[m.pairmate]][None]
        assert m.cpd == pytest.approx(float(pairmate_distinctiveness(m.embedding, c, f)[0]), abs=1e-5)
        assert m.cpd == pytest.approx(distinctiveness(m.embedding, c, f), abs=1e-4)
    assert decode(encode(sent[0])).cpd == sent[0].cpd  # it travels as is
    # two-way: decoded closer to the seen image than to its pairmate, i.e. CPD > 0
    correct = int((cpd > 0).sum())
    assert binomtest(correct, len(cpd), 0.5, alternative="greater").pvalue < 1e-3 and cpd.mean() > 0.1
    # control: the same decodings scored against another trial's pair (labels shuffled)
    perm = np.random.default_rng(5).permutation(len(ids))
    shuffled = np.array([stage.cpd(TrialBeta(1, k, ids[p], noisy[k], noisy[k], 1, pairmate=pairmate[p]),
                                   torch.from_numpy(sent[k].embedding)[None]) for k, p in enumerate(perm)])
    assert binomtest(int((shuffled > 0).sum()), len(shuffled), 0.5).pvalue > 0.01
    assert abs(shuffled.mean()) < 3 * shuffled.std() / np.sqrt(len(shuffled))
    print(f"CPD {cpd.mean():.3f}, two-way {correct / len(cpd):.3f}; shuffled CPD {shuffled.mean():.3f}, "
          f"two-way {(shuffled > 0).mean():.3f}")


def test_no_cpd_without_a_pairmate_or_for_ids_the_gallery_lacks(caplog):
    model, gallery, ids, pairmate, noisy = _pairmate_case(n=4)
    stage = DecodingStage(model, gallery, ids, lambda m: None, "s", subject=1)
    assert stage.decode(TrialBeta(1, 0, ids[0], noisy[0], noisy[0], 1)).cpd is None
    assert stage.decode(TrialBeta(1, 1, ids[1], noisy[1], noisy[1], 1, pairmate="nsd:999")).cpd is None
    assert "trial 1 of run 1: no CPD (image 'nsd:1', pairmate 'nsd:999': not both in the gallery)" in caplog.text


def test_a_trial_list_whose_pairmate_the_gallery_lacks_is_refused_at_start_with_one_line(tmp_path):
    model, gallery, ids, pairmate, _ = _pairmate_case(n=6)
    save_checkpoint(model, tmp_path / "ck.pth")
    np.savez(tmp_path / "gallery.npz", embeddings=gallery, ids=np.array(ids))
    good = "stim_file\tstim_id\tpairmate\n" + "".join(f"a.png\t{ids[k]}\t{pairmate[k]}\n" for k in range(6))
    (tmp_path / "run-01.tsv").write_text(good)
    (tmp_path / "run-02.tsv").write_text(good.replace("\tnsd:3\n", "\tnsd:77\n").replace("\tnsd:4\n", "\tnsd:4x\n"))
    (tmp_path / "session.toml").write_text('[decoder]\ncheckpoint = "ck.pth"\ngallery = "gallery.npz"\nsubject = 1\n'
                                           '[stimulus]\ntrial_lists = ["run-01.tsv", "run-02.tsv"]\n')
    with pytest.raises(ConfigError) as refused:
        DecodingStage.from_config(load_config(tmp_path / "session.toml"), lambda m: None)
    message = str(refused.value)
    assert "\n" not in message and "run-02.tsv, line 4: pairmate 'nsd:77' is not in the gallery" in message
    assert "(and 1 more)" in message and "[decoder] gallery" in message
    (tmp_path / "run-02.tsv").write_text(good)
    assert DecodingStage.from_config(load_config(tmp_path / "session.toml"), lambda m: None).n_voxels == N_VOX
