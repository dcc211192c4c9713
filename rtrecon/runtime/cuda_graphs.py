"""The prior's fixed-shape DDIM chain replayed as one CUDA graph.

MindEye2 samples its prior with 20 DDIM steps over 513 tokens at batch 1: about 20 × 6 × 10
small kernels whose launch cost, not their arithmetic, bounds the chain on a fast GPU.
:class:`GraphedPriorSampler` captures the whole chain once (:class:`torch.cuda.CUDAGraph`) and
replays it per trial. Its random draws come from static buffers filled before each replay from the
caller's generator, in the order :func:`rtrecon.models.schedulers.ddim_sample` takes them, so a
replay gives what the eager chain gives with the same draws (checked by the GPU check,
``benchmarks/gpu_check.py``, and by ``tests/rtrecon/runtime/test_cuda_graphs.py`` on CUDA).

>>> sampler = GraphedPriorSampler(model.prior, (1, 256, 1664), steps=20, autocast=torch.float16)
>>> tokens = sampler(backbone, generator)        # a fresh output tensor per call

CUDA only; the shape, the step count and the precision are fixed at capture.
"""

from __future__ import annotations

import contextlib

import torch

from rtrecon.models.schedulers import ddim_sample, ddim_time_pairs, replay_source

__all__ = ["GraphedPriorSampler"]


class GraphedPriorSampler:
    """The prior's ``sample(backbone, steps)`` for one input shape, as a replayed CUDA graph."""

    def __init__(self, prior, shape: tuple[int, int, int], steps: int = 20, *, autocast: torch.dtype | None = None,
                 warmup: int = 2) -> None:
        device = next(prior.parameters()).device
        if device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need the prior on a CUDA device, it is on {device}")
        total = prior.noise_scheduler.num_timesteps
        if not 0 < steps < total:
            raise ValueError(f"the graphed chain is the DDIM one: steps must be in 1..{total - 1}, got {steps}")
        self.prior, self.shape, self.steps, self.autocast = prior, tuple(shape), int(steps), autocast
        self.device = device
        pairs = ddim_time_pairs(total, self.steps)
        self.n_draws = 1 + sum(1 for _, t_next in pairs if t_next > 0)
        noise_dtype = prior.net.learned_query.dtype  # as DiffusionPrior.sample draws it
        self._noise = torch.zeros((self.n_draws, *self.shape), device=device, dtype=noise_dtype)
        brain_dtype = autocast if autocast is not None else noise_dtype
        self._backbone = torch.zeros(self.shape, device=device, dtype=brain_dtype)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):  # lazy initialisations (cuBLAS handles, autotuning) happen outside the capture
                self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._out = self._run()

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        # No weight-cast cache: casts made during the capture must not outlive it (the graph replays them).
        return torch.autocast("cuda", dtype=self.autocast, cache_enabled=False)

    @torch.no_grad()
    def _run(self) -> torch.Tensor:
        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.prior.net.forward_with_cond_scale(x, t, self._backbone, 1.0)

        with self._autocast():
            return ddim_sample(self.prior.noise_scheduler, denoise, self.shape, self.steps,
                               replay_source(list(self._noise.unbind(0))))

    @torch.no_grad()
    def __call__(self, backbone: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image tokens for ``backbone`` (of the captured shape), the draws taken from ``generator``."""
        if tuple(backbone.shape) != self.shape:
            raise ValueError(f"this graph was captured for backbone tokens {self.shape}, got {tuple(backbone.shape)}")
        self._backbone.copy_(backbone)
        self._noise.copy_(torch.randn(self._noise.shape, generator=generator, device=self.device, dtype=self._noise.dtype))
        self.graph.replay()
        return self._out.clone()
