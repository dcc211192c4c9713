"""The engine's decoding stage: a released trial beta in, a decoded :class:`TrialResultMessage` out.

:class:`DecodingStage` is an ``on_trial`` callback of :class:`engine.server.Engine`. For each
released trial (:class:`engine.trials.TrialBeta`) it takes the z-scored ROI beta through the
MindEye2 model (per-subject adapter → shared backbone → retrieval tokens), ranks the gallery by
cosine similarity in the L2-normalised token space (:class:`rtrecon.runtime.retrieval.RetrievalDecoder`),
and, when an unCLIP decoder is configured, samples the prior's image tokens and decodes them to
an image (:class:`rtrecon.decoders.unclip.UnclipDecoder`). The result goes out through
``publish`` (the engine's results link, which then skips the bare beta of the same trial) with
the seconds each stage took (``latencies``: ``decode_s``, ``retrieval_s``, ``image_s``) and the
wall times it passed them (``stamps``: ``decode_start``, ``decoded``, ``generated``, ``sent``).
With a ``store`` the decoded embedding, the top-k ids and scores and the image are saved as the
run's ``desc-trial<N>release<R>decoded.npz`` derivative (one per release of a trial).

Built from the session config's ``[decoder]`` section by :meth:`DecodingStage.from_config`:

* ``checkpoint``: a MindEye2 checkpoint :func:`rtrecon.models.load_official` reads; ``subject``
  picks its adapter, whose input size must be the engine's ROI size;
* ``gallery``: a ``.npz`` with ``embeddings`` (N, tokens, dim) (any (N, ...) array) and ``ids``
  (N,) strings -- the stimulus ids retrieval answers with (``nsd:<73k id>`` for NSD);
* ``top_k``; ``unclip`` (a decoder folder, ``UnclipDecoder.from_pretrained``) and ``steps``.

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
from rtrecon.config import ConfigError, SessionConfig
from rtrecon.runtime.retrieval import RetrievalDecoder
from rtrecon.wire import TrialResultMessage

__all__ = ["DecodingStage", "BackgroundDecoder", "load_gallery"]

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
    ) -> None:
        self.model = model.eval()
        self.retrieval = RetrievalDecoder(gallery, ids)
        self.publish = publish
        self.session_id = session_id
        self.subject = subject
        self.top_k = top_k
        self.unclip = unclip
        self.steps = steps
        self.store = store
        self.name = name
        self.n_voxels = int(model.config.n_voxels[subject])

    @classmethod
    def from_config(
        cls, config: SessionConfig, publish: Callable[[TrialResultMessage], None], store: Any | None = None
    ) -> DecodingStage:
        """The stage the ``[decoder]`` section describes (``checkpoint`` and ``gallery`` are required)."""
        from rtrecon.models import load_official

        d = config.decoder
        if d.checkpoint is None or d.gallery is None:
            raise ConfigError("[decoder] needs 'checkpoint' and 'gallery' for the engine to decode trials")
        if not Path(d.checkpoint).is_file():
            raise ConfigError(f"{d.checkpoint}: no such MindEye2 checkpoint ([decoder] checkpoint)")
        model = load_official(d.checkpoint)
        if not 0 <= d.subject < model.config.n_subjects:
            raise ConfigError(f"{d.checkpoint}: no adapter {d.subject} ([decoder] subject); it has {model.config.n_subjects}")
        gallery, ids = load_gallery(d.gallery)
        unclip = None
        if d.unclip is not None:
            from rtrecon.decoders.unclip import UnclipDecoder

            unclip = UnclipDecoder.from_pretrained(d.unclip)
        session_id = f"sub-{config.session.subject}_ses-{config.session.session}"
        return cls(model, gallery, ids, publish, session_id, subject=d.subject, top_k=d.top_k, unclip=unclip,
                   steps=d.steps, store=store, name=Path(d.checkpoint).name)

    @torch.inference_mode()
    def decode(self, trial: TrialBeta) -> TrialResultMessage:
        """The decoded result of one released trial (not yet sent)."""
        stamps = {"decode_start": time.time()}
        t0 = time.perf_counter()
        z = np.asarray(trial.z, np.float32)
        if z.shape != (self.n_voxels,):
            raise ValueError(f"{self.name}: adapter {self.subject} takes {self.n_voxels} voxels, "
                             f"trial {trial.trial} of run {trial.run} has a beta of {z.shape[0]}")
        out = self.model.encode(torch.from_numpy(z)[None], self.subject)
        embedding = out.clip_voxels_norm
        t1 = time.perf_counter()
        stamps["decoded"] = time.time()
        ids, scores = self.retrieval.topk(embedding, self.top_k)
        t2 = time.perf_counter()
        latencies = {"decode_s": t1 - t0, "retrieval_s": t2 - t1}
        image = None
        if self.unclip is not None and self.model.config.use_prior:
            from rtrecon.decoders.unclip import SamplingOptions

            prior = self.model.prior
            # MindEye2's inference samples the prior with 20 DDIM steps (fewer for a shorter schedule).
            steps = min(20, prior.noise_scheduler.num_timesteps)
            tokens = prior.sample(out.backbone, steps=steps, generator=torch.Generator().manual_seed(trial.trial))
            pixels = self.unclip(tokens, SamplingOptions.fast(steps=self.steps, seed=trial.trial))
            image = (pixels[0].clamp(0, 1).permute(1, 2, 0).float().numpy() * 255).round().astype(np.uint8)
            latencies["image_s"] = time.perf_counter() - t2
            stamps["generated"] = time.time()
        result = TrialResultMessage(
            session=self.session_id, run=trial.run, trial=trial.trial, stimulus=trial.stimulus,
            retrieved=list(ids[0]), scores=[float(s) for s in scores[0]], image=image,
            embedding=embedding[0].numpy().astype(np.float32), decoder=self.name, latencies=latencies, stamps=stamps,
        )
        if self.store is not None:
            arrays = {"embedding": result.embedding, "retrieved": np.array(result.retrieved), "scores": np.array(result.scores)}
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
    """

    def __init__(self, stage: Any) -> None:
        self.stage = stage
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

    def _work(self) -> None:
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
