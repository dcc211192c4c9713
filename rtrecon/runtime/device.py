"""Where the decoder runs and in what precision: device choice, autocast, memory checks.

``[decoder] device`` and ``precision`` (:class:`rtrecon.contract.config.DecoderSection`) become a
:class:`Placement`:

>>> placement = Placement.from_names("auto", "fp16-autocast")   # logs the device it picked
>>> model = placement.place(model)              # weights on the device, float32 (or half, see below)
>>> with placement.autocast():                  # the official mixed precision
...     out = model.encode(voxels)

Precisions:

- ``fp32``: everything in float32, no autocast.
- ``fp16-autocast``: what MindEye2's ``recon_inference`` does: float32 weights, the whole decode
  under ``torch.autocast(dtype=float16)``. Matrix products and convolutions run in half
  precision; everything else keeps the dtype that flows into it. So the prior's residual stream,
  the DDIM and Euler chains and the sampling noise stay float32 (dalle2's LayerNorm takes eps
  1e-5 there and 1e-3 only where its input is really a half tensor: the attention output), and
  the SDXL VAE decodes outside autocast in float32 (sgm's ``disable_first_stage_autocast``).
  This differs from :func:`rtrecon.models.loading.cast_model`, which makes every tensor half.
- ``bf16-autocast``: the same flow in bfloat16 (CPUs support it; Ampere and later GPUs too).

Autocast re-casts float32 weights at every call when they do not require gradients (its weight
cache only keeps leaf tensors that do), which costs a read of every weight per call.
:func:`precast_for_autocast` stores the weights of the layers autocast always runs in half
precision (``Linear``, ``Conv*``) in that precision once: under autocast the result is the same
to the bit, and the weights take half the memory. Norms, embeddings and free parameters stay
float32, as autocast leaves them.

Memory: :func:`parameter_bytes` sums what modules will hold; :func:`check_fits` refuses, with
one line naming the sizes, models that do not fit the device's free memory before anything is
moved there; :func:`memory_held_mb` is what this process holds on the device (0 on a CPU).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "DEVICES_HELP",
    "PRECISIONS",
    "DoesNotFitError",
    "Placement",
    "check_fits",
    "memory_held_mb",
    "parameter_bytes",
    "precast_for_autocast",
    "resolve_device",
]

log = logging.getLogger("rtrecon.runtime.device")

#: The ``[decoder] precision`` names and the autocast dtype of each (None: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "fp16-autocast": torch.float16,
    "bf16-autocast": torch.bfloat16,
}

DEVICES_HELP = '"auto" (the GPU when there is one), "cuda", "cuda:N" or "cpu"'
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

#: Layers whose every use under autocast is a half-precision op (linear, convolution).
_AUTOCAST_HALF_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class DoesNotFitError(RuntimeError):
    """Models do not fit the device (raised at start, before anything is moved there)."""


def resolve_device(name: str = "auto") -> torch.device:
    """The device ``name`` means; ``auto`` picks ``cuda`` when a GPU is there, else ``cpu``, and logs it.

    An explicit ``cuda``/``cuda:N`` without that GPU is an error naming what the machine has.
    """
    if not _DEVICE.match(name):
        raise ValueError(f"device {name!r}: choose {DEVICES_HELP}")
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
            log.info("decoder device auto: picked %s (%s, %.0f GiB)", device, torch.cuda.get_device_name(device),
                     torch.cuda.get_device_properties(device).total_memory / 2**30)
        else:
            device = torch.device("cpu")
            log.info("decoder device auto: picked cpu (no CUDA GPU visible to torch %s)", torch.__version__)
        return device
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: torch {torch.__version__} sees no CUDA GPU on this machine")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        device = torch.device("cuda", index)
    return device


def parameter_bytes(modules: Iterable[nn.Module], dtype: torch.dtype | None = None) -> int:
    """Bytes the parameters and buffers of ``modules`` take (each tensor once), stored in ``dtype`` if given."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            size = tensor.element_size() if dtype is None or not tensor.is_floating_point() else dtype.itemsize
            total += tensor.numel() * size
    return total


def check_fits(device: torch.device, needed_bytes: int, what: str, headroom: float = 1.2) -> None:
    """Refuse (:class:`DoesNotFitError`) when ``needed_bytes`` times ``headroom`` exceeds the free memory of ``device``.

    The headroom covers activations and the allocator's rounding; CPUs are not checked (the
    operating system's own limits apply there).
    """
    if device.type != "cuda":
        return
    free, total = torch.cuda.mem_get_info(device)
    if needed_bytes * headroom > free:
        raise DoesNotFitError(
            f"{what} need {needed_bytes / 2**30:.1f} GiB (+{(headroom - 1) * 100:.0f}% for activations) but {device} "
            f"has {free / 2**30:.1f} of {total / 2**30:.1f} GiB free: use a smaller model, precision \"fp16-autocast\", "
            "or free the GPU"
        )


def memory_held_mb(device: torch.device) -> float:
    """MiB of device memory this process's tensors hold (0 on a CPU)."""
    if device.type != "cuda":
        return 0.0
    return torch.cuda.memory_allocated(device) / 2**20


def precast_for_autocast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store the weights of ``Linear``/``Conv`` layers in ``dtype``; the rest stays as it is.

    Only for a model run under ``torch.autocast(dtype=dtype)`` (see the module docstring): there
    those layers cast their inputs and weights to ``dtype`` anyway, so outputs are unchanged.
    """
    for module in model.modules():
        if isinstance(module, _AUTOCAST_HALF_LAYERS):
            for name, param in module.named_parameters(recurse=False):
                if param.is_floating_point():
                    module._parameters[name] = nn.Parameter(param.data.to(dtype), requires_grad=param.requires_grad)
    return model


@dataclass(frozen=True)
class Placement:
    """A device and a precision, as the ``[decoder]`` section names them."""

    device: torch.device
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")

    @classmethod
    def from_names(cls, device: str = "auto", precision: str = "fp32") -> Placement:
        """Resolve ``device`` (see :func:`resolve_device`) and check ``precision``.

        ``fp16-autocast`` on a CPU becomes ``fp32`` (logged): CPUs have no fast half matrix
        products, and a config written for the console GPU must also run the CPU demo and tests
        with their float32 numbers. ``bf16-autocast`` is kept on a CPU.
        """
        placed = resolve_device(device)
        if precision == "fp16-autocast" and placed.type == "cpu":
            log.info("decoder precision fp16-autocast runs as fp32 on the CPU")
            precision = "fp32"
        return cls(placed, precision)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The half dtype autocast runs matrix products in (None for ``fp32``)."""
        return PRECISIONS[self.precision]

    @property
    def weight_bytes_per_param(self) -> float:
        """Rough bytes per parameter once placed (float32, or half for the pre-cast layers)."""
        return 4.0 if self.autocast_dtype is None else 2.0

    def autocast(self, enabled: bool = True) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for this precision (a no-op for ``fp32``); ``enabled=False`` turns it off inside."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled)

    def place(self, model: nn.Module, *, precast: bool = True) -> nn.Module:
        """``model`` on the device in float32, its autocast-half layers pre-cast (``precast``).

        The cast happens before the move, so the device never holds the float32 copy.
        """
        if precast and self.autocast_dtype is not None:
            precast_for_autocast(model, self.autocast_dtype)
        return model.to(self.device)

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the device, seeded."""
        return torch.Generator(self.device).manual_seed(int(seed))

    def synchronize(self) -> None:
        """Wait for the device's queued work (for timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def peak_memory(self) -> Iterator[dict[str, float]]:
        """Measure the peak device memory (MiB) of a block: ``with p.peak_memory() as m: ...; m["peak_mb"]``."""
        result: dict[str, float] = {"peak_mb": 0.0}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        yield result
        if self.device.type == "cuda":
            result["peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
