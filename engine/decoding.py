"""The engine's decoding stage: a released trial beta in, a decoded :class:`TrialResultMessage` out.

:class:`DecodingStage` is an ``on_trial`` callback of :class:`engine.server.Engine`. For each
released trial (:class:`engine.trials.TrialBeta`) it takes the z-scored ROI beta through the
MindEye2 model (per-subject adapter → shared backbone → retrieval tokens), ranks the gallery by
cosine similarity in the L2-normalised token space (:class:`rtrecon.runtime.retrieval.Retriever`),
and, when an unCLIP model is configured, samples the prior's image tokens and decodes them to
an image (:class:`rtrecon.reconstruction.unclip.UnclipReconstructor`). The result goes out through
``publish`` (the engine's results link, which then skips the bare beta of the same trial) with
the seconds each stage took (``latencies``: ``decode_s``, ``retrieval_s``, ``image_s``) and the
wall times it passed them (``stamps``: ``decode_start``, ``decoded``, ``generated``, ``sent``).
With a ``store`` the decoded embedding, the top-k ids and scores and the image are saved as the
run's ``desc-trial<N>release<R>decoded.npz`` derivative (one per release of a trial).

Pairmates: a trial whose event names a ``pairmate`` gets the pairmate distinctiveness (CPD, real-time
MindEye's feedback score) of its decoded embedding against the gallery rows of its image and its
pairmate (``cpd`` in the result, and in the decoded ``.npz``). At start-up the session's trial
lists are checked against the gallery (:func:`check_pairmates`): a pairmate it lacks is refused.

Built from the session config's ``[decoder]`` and ``[reconstruction]`` sections by
:meth:`DecodingStage.from_config`. ``[decoder]``:

* ``checkpoint``: a MindEye2 checkpoint :func:`rtrecon.models.load_official` reads; ``subject``
  picks its adapter, whose input size must be the engine's ROI size;
* ``head``: ``"mindeye"`` (the checkpoint) or ``"linear"``: the ridge head of ``linear_head``
  (:class:`rtrecon.models.linear_head.LinearHead`, voxels -> the gallery's CLIP targets), which
  retrieves only (it has no prior tokens for unCLIP) and is what generalises from perception to
  mental imagery in NSD-Imagery and MIRAGE (``shared/reference/nsd_imagery.md``); its input size
  must be the engine's ROI size. It retrieves in its centred space: its prediction and the
  gallery's rows less its training targets' mean. CLIP embeddings share a large common part and a
  ridge shrinks its predictions towards their mean, so uncentred cosine retrieval ranks the gallery
  by each row's angle to that mean alone: in the default imagery demo one of the 18 targets was
  retrieved first in 88 % of the trials and live top-1 among each run's 6 was 18.8 % (chance
  16.7 %); centred, 25 % and 33.3 % (45.8 % at the second release). Its ``embedding`` (sent and
  stored) is the centred prediction;
* ``gallery``: a ``.npz`` with ``embeddings`` (N, tokens, dim) (any (N, ...) array) and ``ids``
  (N,) strings -- the stimulus ids retrieval answers with (``nsd:<73k id>`` for NSD);
* ``top_k``;
* ``device`` and ``precision``, for both stages (:class:`rtrecon.runtime.device.Placement`): ``auto``
  takes the GPU when there is one; ``fp16-autocast`` is the official mixed precision (float32 weights and
  chains, half matrix products), applied to the MindEye2 model, the prior chain, the unCLIP UNet
  and the blurry-branch VAE (the unCLIP KL VAE decodes in float32 outside autocast, as sgm's);
* ``warmup``, ``compile`` (``torch.compile`` of the backbone, the prior network and the UNet),
  ``cuda_graphs`` (the 20-step prior chain replayed as one CUDA graph).

``[reconstruction]``:

* ``unclip`` (an unCLIP folder, ``UnclipReconstructor.from_pretrained``) and ``steps``;
* ``mode``: ``fast`` sends the unCLIP image; ``official`` sends ``0.75 · unCLIP + 0.25 · blurry``
  (the blurry branch's latent decoded by ``blurry_vae``, resized to the unCLIP image), the blend
  ``final_evaluations.ipynb`` scores (there over the refined image, a stage too slow to run live);
* ``channels_last`` (the UNet and VAE in channels-last memory layout).

Start-up: :meth:`DecodingStage.from_config` loads every model on the CPU, refuses with one line
when their weights (at the chosen precision) do not fit the GPU's free memory, and only then moves
them. :meth:`DecodingStage.warm_up` decodes a blank beta once at the session's shapes (first CUDA
kernels, cuBLAS handles, compilation, graph capture) so that the first trial is as fast as the
rest; :class:`BackgroundDecoder` runs it on its thread before the first trial, and
:meth:`DecodingStage.status` (``decoder_ready``, ``decoder_warmup_s``, ``decoder_gpu_mb``) is
what the engine's status publishes.

Bad input (a beta of the wrong size) raises ``ValueError`` naming the checkpoint and the sizes;
the engine logs it and the session goes on.

:class:`BackgroundDecoder` runs a stage on a thread of its own, as :func:`engine.server.serve`
does: a decoding with an unCLIP image takes about a second on a console GPU (minutes on a CPU
with full-size models), and the engine must go on realigning and storing a volume every TR
meanwhile. Trials are decoded one at a time in the order they were released; the engine collects
the results on its own thread (:meth:`engine.server.Engine.poll`), which alone touches the
results link and the session's tables. A trial that fails to decode is logged, and its bare
trial beta goes out in its place so that the stimulus program is not left waiting for it.
"""

from __future__ import annotations

import csv
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.trials import TrialBeta
from rtrecon.contract.config import ConfigError, SessionConfig
from rtrecon.models.linear_head import LinearHead
from rtrecon.contract.layout import session_id as session_id_of
from rtrecon.runtime.device import DoesNotFitError, Placement, check_fits, memory_held_mb, parameter_bytes
from rtrecon.runtime.retrieval import Retriever, pairmate_distinctiveness
from rtrecon.contract.wire import TrialResultMessage

__all__ = ["DecodingStage", "BackgroundDecoder", "load_gallery", "check_pairmates"]

log = logging.getLogger("engine.decoding")


def load_gallery(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """The gallery ``.npz`` at ``path``: ``embeddings`` (N, ...) float32 and ``ids`` (N strings)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "embeddings" not in f or "ids" not in f:
                raise ConfigError(f"{path}: a gallery needs arrays 'embeddings' and 'ids'")
            embeddings, ids = np.asarray(f["embeddings"], np.float32), [str(i) for i in f["ids"]]
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot be read as a gallery .npz: {exc}") from exc
    if embeddings.ndim < 2 or len(ids) != embeddings.shape[0] or not ids:
        raise ConfigError(f"{path}: {embeddings.shape[0] if embeddings.ndim else 0} embeddings for {len(ids)} ids")
    return embeddings, ids


def check_pairmates(trial_lists: Sequence[Path], ids: Sequence[str], gallery: str | Path) -> None:
    """Refuse (:class:`ConfigError`, one line) a trial list whose ``pairmate`` column names an id the
    gallery lacks, or pairs a trial with its own image: its CPD could never be scored.

    Only the lists this machine has are read (the stimulus PC may keep them elsewhere; the engine
    then meets each pairmate in its trial's event, and one the gallery lacks gets no CPD).
    """
    known = set(ids)
    for path in map(Path, trial_lists):
        if not path.is_file():
            continue
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"{path}: cannot be read as a trial list: {exc}") from None
        problems = []
        for line, row in enumerate(rows, start=2):
            pairmate = (row.get("pairmate") or "").strip()
            # what the stimulus program tells the engine was shown: the stim_id, else the image's file name
            stimulus = (row.get("stim_id") or "").strip() or Path((row.get("stim_file") or "").strip()).name
            if not pairmate:
                continue
            if pairmate not in known:
                problems.append(f"line {line}: pairmate {pairmate!r} is not in the gallery {gallery}")
            elif stimulus not in known:
                problems.append(f"line {line}: image {stimulus!r} (which has a pairmate) is not in the gallery {gallery}")
            elif stimulus == pairmate:
                problems.append(f"line {line}: pairmate {pairmate!r} is the trial's own image")
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ConfigError(f"{path}, {problems[0]}{more}: no CPD can be scored ([stimulus] trial_lists, [decoder] gallery)")


class DecodingStage:
    """Decode each released trial and publish the result (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        gallery: np.ndarray,
        ids: Sequence[str],
        publish: Callable[[TrialResultMessage], None],
        session_id: str,
        *,
        subject: int = 0,
        top_k: int = 5,
        unclip: Any | None = None,
        steps: int = 4,
        store: Any | None = None,
        name: str = "mindeye2",
        placement: Placement | None = None,
        reconstruction_mode: str = "fast",
        blurry_vae: Any | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        self.placement = placement or Placement(torch.device("cpu"))
        #: A ridge head decodes on the CPU in numpy; a MindEye2 model through torch on ``placement``.
        self.linear = isinstance(model, LinearHead)
        self.model = model if self.linear else model.eval().requires_grad_(False)
        if self.linear:  # retrieval in the head's centred space (the module docstring)
            gallery = np.asarray(gallery, np.float32).reshape(len(gallery), -1) - model.target_mean
        self.retrieval = Retriever(gallery, ids)
        self._rows = {stim_id: i for i, stim_id in enumerate(self.retrieval.ids)}
        self.publish = publish
        self.session_id = session_id
        self.subject = subject
        self.top_k = top_k
        self.unclip = unclip
        self.steps = steps
        self.store = store
        self.name = name
        self.n_voxels = model.n_voxels if self.linear else int(model.config.n_voxels[subject])
        if reconstruction_mode not in ("fast", "official"):
            raise ValueError(f"reconstruction mode {reconstruction_mode!r}: choose 'fast' or 'official'")
        if self.linear and (unclip is not None or reconstruction_mode == "official"):
            raise ConfigError(f"{name}: a linear head retrieves only (no prior tokens for unCLIP, no blurry branch)")
        if reconstruction_mode == "official" and (blurry_vae is None or not model.config.blurry):
            raise ConfigError(f"{name}: reconstruction mode 'official' needs a model with the blurry branch and a blurry_vae")
        self.reconstruction_mode = reconstruction_mode
        self.blurry_vae = blurry_vae
        self.cuda_graphs = cuda_graphs
        self._graphed_prior = None
        #: True once :meth:`warm_up` has decoded at the session's shapes (or the first trial has).
        self.ready = False
        self.warmup_s = float("nan")

    @classmethod
    def from_config(
        cls, config: SessionConfig, publish: Callable[[TrialResultMessage], None], store: Any | None = None
    ) -> DecodingStage:
        """The stage ``[decoder]`` and ``[reconstruction]`` describe (``checkpoint`` and ``gallery`` are required)."""
        from rtrecon.models import load_official

        d, r = config.decoder, config.reconstruction
        if d.head == "linear":
            return cls._linear_from_config(config, publish, store)
        if d.checkpoint is None or d.gallery is None:
            raise ConfigError("[decoder] needs 'checkpoint' and 'gallery' for the engine to decode trials")
        if not Path(d.checkpoint).is_file():
            raise ConfigError(f"{d.checkpoint}: no such MindEye2 checkpoint ([decoder] checkpoint)")
        try:
            placement = Placement.from_names(d.device, d.precision)
        except ValueError as exc:
            raise ConfigError(f"[decoder] device: {exc}") from None
        if d.cuda_graphs and placement.device.type != "cuda":
            raise ConfigError(f"[decoder] cuda_graphs needs a CUDA device, the decoder runs on {placement.device}")
        model = load_official(d.checkpoint)
        if not 0 <= d.subject < model.config.n_subjects:
            raise ConfigError(f"{d.checkpoint}: no adapter {d.subject} ([decoder] subject); it has {model.config.n_subjects}")
        if r.mode == "official" and not model.config.blurry:
            raise ConfigError(f"{d.checkpoint}: [reconstruction] mode 'official' needs the blurry branch, this model has none")
        gallery, ids = load_gallery(d.gallery)
        check_pairmates(config.stimulus.trial_lists, ids, d.gallery)
        unclip = blurry_vae = None
        if r.unclip is not None:
            from rtrecon.reconstruction.unclip import UnclipReconstructor

            unclip = UnclipReconstructor.from_pretrained(r.unclip, autocast=placement.autocast_dtype, channels_last=r.channels_last)
        if r.mode == "official":
            from rtrecon.models.blurry import load_blurry_vae

            try:
                blurry_vae = load_blurry_vae(r.blurry_vae)
            except (FileNotFoundError, ValueError) as exc:
                raise ConfigError(f"[reconstruction] blurry_vae: {exc}") from None
        # Everything is on the CPU so far: refuse before the first byte goes to the GPU.
        half = placement.autocast_dtype
        needed = parameter_bytes([model], half) + (parameter_bytes([blurry_vae], half) if blurry_vae is not None else 0)
        needed += unclip.nbytes if unclip is not None else 0
        try:
            check_fits(placement.device, needed, f"the decoder's models ({Path(d.checkpoint).name}"
                       + (f", {Path(r.unclip).name}" if r.unclip is not None else "") + ")")
        except DoesNotFitError as exc:
            raise ConfigError(f"[decoder]: {exc}") from None
        model = placement.place(model)
        if unclip is not None:
            unclip.to(placement.device)
        if blurry_vae is not None:
            blurry_vae = placement.place(blurry_vae)
        if d.compile:  # in place: the prior's sampler calls its network through its own methods
            model.backbone.compile()
            if model.config.use_prior:
                model.diffusion_prior.net.compile()
            if unclip is not None:
                unclip.compile()
        session_id = session_id_of(config.session.subject, config.session.session)
        log.info("decoder on %s in %s: %s%s, %.0f MiB of weights", placement.device, placement.precision,
                 Path(d.checkpoint).name, f" + {Path(r.unclip).name}" if r.unclip is not None else "", needed / 2**20)
        return cls(model, gallery, ids, publish, session_id, subject=d.subject, top_k=d.top_k, unclip=unclip,
                   steps=r.steps, store=store, name=Path(d.checkpoint).name, placement=placement,
                   reconstruction_mode=r.mode, blurry_vae=blurry_vae, cuda_graphs=d.cuda_graphs)

    @classmethod
    def _linear_from_config(
        cls, config: SessionConfig, publish: Callable[[TrialResultMessage], None], store: Any | None
    ) -> DecodingStage:
        d = config.decoder
        if d.linear_head is None or d.gallery is None:
            raise ConfigError('[decoder] head "linear" needs \'linear_head\' and \'gallery\' for the engine to decode trials')
        if not Path(d.linear_head).is_file():
            raise ConfigError(f"{d.linear_head}: no such linear head file ([decoder] linear_head)")
        if config.reconstruction.unclip is not None:
            raise ConfigError('[reconstruction] unclip: [decoder] head "linear" retrieves only (it makes no prior tokens); '
                              "unset unclip")
        try:
            head = LinearHead.load(d.linear_head)
        except ValueError as exc:
            raise ConfigError(f"[decoder] linear_head: {exc}") from None
        gallery, ids = load_gallery(d.gallery)
        check_pairmates(config.stimulus.trial_lists, ids, d.gallery)
        if int(np.prod(gallery.shape[1:])) != int(np.prod(head.target_shape)):
            raise ConfigError(f"{d.linear_head}: the head predicts {head.target_shape} targets, the gallery {d.gallery} "
                              f"holds {gallery.shape[1:]}")
        session_id = f"sub-{config.session.subject}_ses-{config.session.session}"
        log.info("decoder: linear head %s (%d voxels, alpha %g) on the CPU", Path(d.linear_head).name, head.n_voxels, head.alpha)
        return cls(head, gallery, ids, publish, session_id, top_k=d.top_k, store=store, name=Path(d.linear_head).name)

    @property
    def makes_images(self) -> bool:
        return not self.linear and self.unclip is not None and self.model.config.use_prior

    def _prior_tokens(self, backbone: torch.Tensor, seed: int) -> torch.Tensor:
        prior = self.model.prior
        # MindEye2's inference samples the prior with 20 DDIM steps (fewer for a shorter schedule).
        steps = min(20, prior.noise_scheduler.num_timesteps)
        generator = self.placement.generator(seed)
        if self.cuda_graphs and steps < prior.noise_scheduler.num_timesteps:
            if self._graphed_prior is None or self._graphed_prior.shape != tuple(backbone.shape):
                from rtrecon.runtime.cuda_graphs import GraphedPriorSampler

                self._graphed_prior = GraphedPriorSampler(prior, tuple(backbone.shape), steps,
                                                          autocast=self.placement.autocast_dtype)
            return self._graphed_prior(backbone, generator)
        with self.placement.autocast():
            return prior.sample(backbone, steps=steps, generator=generator)

    def _blend_blurry(self, pixels: torch.Tensor, blurry_latent: torch.Tensor) -> torch.Tensor:
        """``final_evaluations.ipynb``'s ``0.75 · recon + 0.25 · blurry``, the blurry image resized to the recon's."""
        from rtrecon.models.blurry import decode_blurry

        with self.placement.autocast():  # recon_inference decodes the blurry latent under its fp16 autocast
            blurry = decode_blurry(self.blurry_vae, blurry_latent)
        blurry = torch.nn.functional.interpolate(blurry, size=pixels.shape[-2:], mode="bilinear", antialias=True,
                                                 align_corners=False).clamp(0, 1)
        return 0.75 * pixels.float() + 0.25 * blurry

    @torch.inference_mode()
    def _infer(self, z: np.ndarray, seed: int) -> tuple[torch.Tensor, np.ndarray | None, dict[str, float], dict[str, float]]:
        """``(embedding (1, D) float32 on the CPU, image or None, latencies, stamps)`` for one beta."""
        stamps = {"decode_start": time.time()}
        t0 = time.perf_counter()
        if self.linear:
            deviation = self.model.predict(z[None]).reshape(1, -1) - self.model.target_mean
            embedding = torch.nn.functional.normalize(torch.from_numpy(deviation.astype(np.float32)), dim=-1)
            stamps["decoded"] = time.time()
            return embedding, None, {"decode_s": time.perf_counter() - t0}, stamps
        voxels = torch.from_numpy(z)[None].to(self.placement.device)
        with self.placement.autocast():
            out = self.model.encode(voxels, self.subject)
            embedding = out.clip_voxels_norm.float().cpu()  # the copy to the CPU waits for the GPU
        t1 = time.perf_counter()
        stamps["decoded"] = time.time()
        latencies = {"decode_s": t1 - t0}
        image = None
        if self.makes_images:
            from rtrecon.reconstruction.unclip import SamplingOptions

            tokens = self._prior_tokens(out.backbone, seed)
            pixels = self.unclip(tokens, SamplingOptions.fast(steps=self.steps, seed=seed))
            if self.reconstruction_mode == "official":
                pixels = self._blend_blurry(pixels, out.blurry_latent)
            image = (pixels[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)
            latencies["image_s"] = time.perf_counter() - t1
            stamps["generated"] = time.time()
        return embedding, image, latencies, stamps

    def warm_up(self) -> float:
        """Decode a blank beta once at the session's shapes (nothing is sent or stored); the seconds it took.

        The first call on a GPU pays for CUDA kernels, cuBLAS handles, ``torch.compile`` and the
        CUDA-graph capture; after it :attr:`ready` is true and a trial costs what every trial costs.
        """
        t0 = time.perf_counter()
        embedding, _, _, _ = self._infer(np.zeros(self.n_voxels, np.float32), seed=0)
        self.retrieval.topk(embedding, self.top_k)
        self.placement.synchronize()
        self.warmup_s = time.perf_counter() - t0
        self.ready = True
        log.info("decoder warm on %s in %.2f s (%.0f MiB of GPU memory held)", self.placement.device, self.warmup_s,
                 memory_held_mb(self.placement.device))
        return self.warmup_s

    def status(self) -> dict[str, float]:
        """What the engine's status publishes: readiness, warm-up seconds, GPU memory held (MiB)."""
        return {"decoder_ready": float(self.ready), "decoder_warmup_s": self.warmup_s,
                "decoder_gpu_mb": memory_held_mb(self.placement.device)}

    def cpd(self, trial: TrialBeta, embedding: torch.Tensor) -> float | None:
        """The pairmate distinctiveness of ``embedding`` for ``trial``, in the gallery's normalised space
        (:func:`~rtrecon.runtime.retrieval.pairmate_distinctiveness`); None without a pairmate, or when
        the gallery lacks the trial's image or its pairmate (logged)."""
        if not trial.pairmate:
            return None
        correct, foil = self._rows.get(trial.stimulus), self._rows.get(trial.pairmate)
        if correct is None or foil is None or correct == foil:
            log.warning("trial %d of run %d: no CPD (image %r, pairmate %r: %s)", trial.trial, trial.run, trial.stimulus,
                        trial.pairmate, "the same image" if correct == foil and correct is not None else "not both in the gallery")
            return None
        gallery = self.retrieval.gallery
        return float(pairmate_distinctiveness(embedding, gallery[correct], gallery[foil])[0])

    def decode(self, trial: TrialBeta) -> TrialResultMessage:
        """The decoded result of one released trial (not yet sent)."""
        z = np.asarray(trial.z, np.float32)
        if z.shape != (self.n_voxels,):
            taker = "the linear head" if self.linear else f"adapter {self.subject}"
            raise ValueError(f"{self.name}: {taker} takes {self.n_voxels} voxels, "
                             f"trial {trial.trial} of run {trial.run} has a beta of {z.shape[0]}")
        embedding, image, latencies, stamps = self._infer(z, seed=trial.trial)
        t = time.perf_counter()
        ids, scores = self.retrieval.topk(embedding, self.top_k)
        cpd = self.cpd(trial, embedding)
        latencies["retrieval_s"] = time.perf_counter() - t
        self.ready = True
        result = TrialResultMessage(
            session=self.session_id, run=trial.run, trial=trial.trial, stimulus=trial.stimulus,
            pairmate=trial.pairmate, cpd=cpd,
            retrieved=list(ids[0]), scores=[float(s) for s in scores[0]], image=image,
            embedding=embedding[0].numpy().astype(np.float32), decoder=self.name, latencies=latencies, stamps=stamps,
        )
        if self.store is not None:
            arrays = {"embedding": result.embedding, "retrieved": np.array(result.retrieved), "scores": np.array(result.scores)}
            if cpd is not None:
                arrays["cpd"] = np.array(cpd)
            if image is not None:
                arrays["image"] = image
            self.store.save_arrays(trial.run, f"trial{trial.trial}release{trial.release}decoded", **arrays)
        return result

    def __call__(self, trial: TrialBeta) -> None:
        result = self.decode(trial)
        result.stamps["sent"] = time.time()
        self.publish(result)


class BackgroundDecoder:
    """Decode released trials on a thread of their own, in release order (see the module docstring).

    ``stage`` is anything with ``decode(trial) -> TrialResultMessage`` (a :class:`DecodingStage`).
    With ``warm_up`` (and a stage that has ``warm_up()``) the thread first warms the stage up;
    trials submitted meanwhile wait in the queue. A warm-up that fails is logged and the trials
    are decoded anyway (the first one then pays the start-up cost).
    """

    def __init__(self, stage: Any, warm_up: bool = False) -> None:
        self.stage = stage
        self._warm_up = warm_up and hasattr(stage, "warm_up")
        self._todo: queue.Queue[tuple[TrialBeta, TrialResultMessage] | None] = queue.Queue()
        self._done: queue.Queue[tuple[TrialBeta, TrialResultMessage]] = queue.Queue()
        self._pending = 0  # submitted and not yet collected; only the engine's thread touches it
        self._thread = threading.Thread(target=self._work, name="decoder", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Trials submitted whose result has not been collected yet."""
        return self._pending

    def submit(self, trial: TrialBeta, fallback: TrialResultMessage) -> None:
        """Queue ``trial``; ``fallback`` (its bare beta) goes out instead if decoding it fails."""
        self._pending += 1
        self._todo.put((trial, fallback))

    def collect(self, timeout_s: float = 0.0) -> list[tuple[TrialBeta, TrialResultMessage]]:
        """The results finished since the last call, in release order (waiting up to ``timeout_s`` for one)."""
        done = []
        try:
            done.append(self._done.get(timeout=timeout_s) if timeout_s > 0 else self._done.get_nowait())
            while True:
                done.append(self._done.get_nowait())
        except queue.Empty:
            pass
        self._pending -= len(done)
        return done

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the thread once the queued trials are decoded (uncollected results are dropped)."""
        self._todo.put(None)
        self._thread.join(timeout_s)

    def status(self) -> dict[str, float]:
        """The stage's status metrics (:meth:`DecodingStage.status`), or none."""
        return self.stage.status() if hasattr(self.stage, "status") else {}

    def _work(self) -> None:
        if self._warm_up:
            try:
                self.stage.warm_up()
            except Exception:  # the session goes on; the first trial pays what the warm-up would have
                log.exception("the decoder's warm-up failed: the first trial will be slow")
        while (item := self._todo.get()) is not None:
            trial, fallback = item
            try:
                result = self.stage.decode(trial)
                # The beta's own latency and release time, so the queue's wait shows in the record.
                for key, value in fallback.latencies.items():
                    result.latencies.setdefault(key, value)
                for key, value in fallback.stamps.items():
                    result.stamps.setdefault(key, value)
            except Exception:  # one trial that cannot be decoded must not end the decoding of the others
                log.exception("trial %d of run %d could not be decoded: its bare beta goes out instead",
                              trial.trial, trial.run)
                result = fallback
            self._done.put((trial, result))
