"""``UnclipReconstructor``: CLIP image tokens in, images out (MindEye2's SDXL unCLIP, in diffusers).

>>> reconstructor = UnclipReconstructor.from_pretrained("weights/unclip6", device="cuda", dtype=torch.float16)
>>> images = reconstructor(tokens)                                  # official: 38 Euler steps, CFG 5, 768²
>>> images = reconstructor(tokens, SamplingOptions.fast(steps=4))   # DPM-Solver++ Karras, 4 steps, the reconstructor's CFG

``tokens`` are (B, 256, 1664) OpenCLIP ViT-bigG/14 patch tokens (or (256, 1664) for one image);
the result is a float tensor (B, 3, H, W) in [0, 1] on the reconstructor's device.

:class:`SamplingOptions` holds every choice: scheduler (``euler_edm`` official, ``euler_karras``,
``dpmpp_karras``; ``lcm`` for a UNet distilled by :mod:`~rtrecon.reconstruction.distill_lcm`), steps, CFG scale (<= 1 turns CFG off: one UNet pass per step;
None, the default, takes the reconstructor config's: 5 for the official model), the
unconditional input (``random`` official, ``zero``), image size (512, 768, ...), output mapping
(``official`` x*0.8+0.2, ``standard`` (x+1)/2; by default the reconstructor config's), initial noise (``official``: z + sigma0 * (n + 0.04 *
offset), as ``utils.unclip_recon`` does; ``standard``: plain Gaussian), the tiny autoencoder
for the latents, and the seed. ``SamplingOptions()`` is the official setting.

Precision is set on the reconstructor: ``autocast`` (float16 or bfloat16) is the official mixed
precision of MindEye2's ``unclip_recon``: float32 weights, the UNet under ``torch.autocast`` (its
``Linear``/``Conv`` weights stored in half once, which autocast would produce at every call
anyway), the Euler chain in float32 and the KL VAE outside autocast in float32 (sgm's
``disable_first_stage_autocast``). ``dtype`` (float16/bfloat16) instead makes every tensor half
(a KL VAE whose config says ``force_upcast``, as SDXL's does, still decodes in float32 under
float16, since SDXL's VAE overflows in half precision). ``channels_last`` stores the UNet's and
VAE's convolution activations channels-last. :meth:`UnclipReconstructor.compile` (``torch.compile``) and
:meth:`UnclipReconstructor.compile` with ``backend="tensorrt"`` (needs ``torch_tensorrt``; imported
only then), and a ``tiny_autoencoder`` (diffusers ``AutoencoderTiny``) for fast latent decoding.

Weights come from local folders only: ``from_pretrained(folder)`` reads the layout that
``rtrecon convert-unclip`` writes (``unet/``, ``vae/``, ``unclip.json``). ``UnclipReconstructor.tiny()``
builds the whole reconstructor at :data:`~rtrecon.reconstruction.config.TINY` size with random weights; it
runs on a CPU in well under a second per step and goes through exactly the same code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rtrecon.reconstruction.conditioning import guidance_embedding, map_output, size_crop_vector, unconditional_tokens
from rtrecon.reconstruction.config import OFFICIAL_SAMPLING, TINY, DiscretizationConfig, UnclipConfig
from rtrecon.reconstruction.schedulers import first_sigma, is_variance_exploding, make_scheduler, set_schedule
from rtrecon.reconstruction.unet import build_unet, load_unet
from rtrecon.reconstruction.vae import build_tiny_autoencoder, build_vae, load_tiny_autoencoder, load_vae
from rtrecon.runtime.device import parameter_bytes, precast_for_autocast

__all__ = ["CONFIG_NAME", "SamplingOptions", "UnclipReconstructor", "load_config", "save_config"]

#: rtrecon's description of an unCLIP folder (the :class:`UnclipConfig` fields).
CONFIG_NAME = "unclip.json"


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample. The defaults are MindEye2's official inference."""

    scheduler: Literal["euler_edm", "euler_karras", "dpmpp_karras", "lcm"] = "euler_edm"
    steps: int = OFFICIAL_SAMPLING.num_steps
    #: CFG scale (<= 1: no CFG). None: the reconstructor's own, ``UnclipConfig.guidance_scale`` (5, the
    #: official CFG, for the official model; what a small trained reconstructor does best at for others).
    guidance_scale: float | None = None
    uncond: Literal["random", "zero"] = "random"
    #: Output size in pixels; None uses the reconstructor's configured size.
    image_size: int | None = None
    #: None: the reconstructor's configured mapping (official for the official model).
    output: Literal["official", "standard"] | None = None
    init_noise: Literal["official", "standard"] = "official"
    tiny_autoencoder: bool = False
    seed: int | None = 0
    #: The original-size entry of the conditioning vector (768 officially, whatever the output size);
    #: None uses the reconstructor's configured image size.
    original_size: int | None = None

    @classmethod
    def official(cls, **changes) -> SamplingOptions:
        """38 Euler EDM steps, CFG 5 with random-token unconditional, official output mapping."""
        return cls(**changes)

    @classmethod
    def fast(cls, steps: int = 4, scheduler: str = "dpmpp_karras", guidance_scale: float | None = None, **changes) -> SamplingOptions:
        """A few-step setting (DPM-Solver++ on Karras sigmas by default)."""
        return cls(steps=steps, scheduler=scheduler, guidance_scale=guidance_scale, **changes)

    @classmethod
    def lcm(cls, steps: int = 4, guidance_scale: float = 5.0, **changes) -> SamplingOptions:
        """For an LCM-distilled UNet: the guidance scale is an input of the UNet, not a second pass."""
        return cls(steps=steps, scheduler="lcm", guidance_scale=guidance_scale, **changes)

    @property
    def uses_cfg(self) -> bool:
        """Whether the UNet runs twice per step (classifier-free guidance); LCM folds it into the UNet.

        Only known once the guidance scale is (see :meth:`resolve`).
        """
        if self.guidance_scale is None:
            raise ValueError("guidance_scale is None (the reconstructor's own): resolve() the options against a reconstructor config first")
        return self.guidance_scale > 1.0 and self.scheduler != "lcm"

    def resolve(self, config: UnclipConfig) -> SamplingOptions:
        """These options with what they leave to the reconstructor (``guidance_scale=None``) taken from ``config``."""
        return self if self.guidance_scale is not None else self.replace(guidance_scale=config.guidance_scale)

    def replace(self, **changes) -> SamplingOptions:
        return dataclasses.replace(self, **changes)


def save_config(config: UnclipConfig, folder: str | Path) -> Path:
    """Write ``config`` as ``folder/unclip.json``."""
    path = Path(folder) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    return path


def load_config(folder: str | Path) -> UnclipConfig:
    """Read ``folder/unclip.json`` back into an :class:`UnclipConfig`."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {folder} a folder written by 'rtrecon convert-unclip'?")
    try:
        raw = json.loads(path.read_text())
        raw["discretization"] = DiscretizationConfig(**raw.get("discretization", {}))
        for key in ("channel_mult", "attention_resolutions", "transformer_depth", "vae_ch_mult"):
            raw[key] = tuple(raw[key])
        return UnclipConfig(**raw)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid unCLIP model config ({err})") from err


def _place(model, device: torch.device, dtype: torch.dtype):
    # nn.Module.to, not ModelMixin.to: the latter warns on every dtype cast about keep-in-fp32
    # modules, which these models do not have.
    return torch.nn.Module.to(model, device, dtype).eval().requires_grad_(False)


class UnclipReconstructor:
    """The unCLIP model: a UNet, a KL autoencoder, optionally a tiny autoencoder."""

    def __init__(
        self,
        unet,
        vae,
        config: UnclipConfig,
        *,
        tiny_autoencoder=None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        autocast: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        if autocast is not None and dtype != torch.float32:
            raise ValueError(f"autocast={autocast} keeps float32 weights: dtype must be float32, not {dtype}")
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.autocast_dtype = autocast
        self.channels_last = channels_last
        self.unet = _place(unet, self.device, dtype)
        # SDXL's KL decoder overflows in float16; diffusers marks such VAEs with force_upcast.
        self.vae_dtype = torch.float32 if dtype == torch.float16 and vae.config.get("force_upcast", False) else dtype
        self.vae = _place(vae, self.device, self.vae_dtype)
        self.tiny_autoencoder = None if tiny_autoencoder is None else _place(tiny_autoencoder, self.device, dtype)
        if autocast is not None:
            precast_for_autocast(self.unet, autocast)
            if self.tiny_autoencoder is not None:
                precast_for_autocast(self.tiny_autoencoder, autocast)
        if channels_last:
            for model in (self.unet, self.vae, self.tiny_autoencoder):
                if model is not None:
                    model.to(memory_format=torch.channels_last)
        self._unet_forward = self.unet
        self._vae_decode = self.vae.decode
        self._tiny_decode = None if self.tiny_autoencoder is None else self.tiny_autoencoder.decode

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def tiny(cls, *, seed: int = 0, config: UnclipConfig = TINY, device="cpu", dtype=torch.float32, tiny_autoencoder: bool = True,
             autocast: torch.dtype | None = None, channels_last: bool = False) -> UnclipReconstructor:
        """The whole reconstructor at a small size with seeded random weights (for tests and CPU demos)."""
        with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching the caller's RNG
            torch.manual_seed(seed)
            # Built on the target device: the official-size UNet initialises in seconds on a GPU.
            unet, vae = build_unet(config, device=device), build_vae(config, device=device)
            taesd = build_tiny_autoencoder() if tiny_autoencoder else None
        return cls(unet, vae, config, tiny_autoencoder=taesd, device=device, dtype=dtype, autocast=autocast,
                   channels_last=channels_last)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        tiny_autoencoder: str | Path | None = None,
        autocast: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> UnclipReconstructor:
        """Load an unCLIP folder (``unet/``, ``vae/``, ``unclip.json``) from local files only.

        ``tiny_autoencoder`` is a local ``AutoencoderTiny`` folder (e.g. ``taesdxl``), or None.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such unCLIP folder")
        config = load_config(folder)
        # Read in the target precision: the official UNet is 10 GB in float32.
        unet = load_unet(folder / "unet", dtype=dtype)
        vae = load_vae(folder / "vae")
        taesd = None if tiny_autoencoder is None else load_tiny_autoencoder(tiny_autoencoder, dtype=dtype)
        return cls(unet, vae, config, tiny_autoencoder=taesd, device=device, dtype=dtype, autocast=autocast,
                   channels_last=channels_last)

    def to(self, device: str | torch.device) -> UnclipReconstructor:
        """Move the models to ``device`` (dtypes unchanged); call :meth:`compile` after, not before."""
        self.device = torch.device(device)
        for model in (self.unet, self.vae, self.tiny_autoencoder):
            if model is not None:
                torch.nn.Module.to(model, self.device)
        return self

    @property
    def nbytes(self) -> int:
        """Bytes the reconstructor's weights take where they are (for the start-up memory check)."""
        return parameter_bytes([m for m in (self.unet, self.vae, self.tiny_autoencoder) if m is not None])

    def _autocast(self, enabled: bool = True):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``unet/``, ``vae/`` (safetensors) and ``unclip.json`` under ``folder``."""
        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.vae.save_pretrained(folder / "vae", safe_serialization=True)
        if self.tiny_autoencoder is not None:
            self.tiny_autoencoder.save_pretrained(folder / "tiny_autoencoder", safe_serialization=True)
        save_config(self.config, folder)
        return folder

    def compile(self, backend: str = "inductor", mode: str | None = None) -> UnclipReconstructor:
        """``torch.compile`` the UNet and the latent decoders (``backend="tensorrt"`` for TensorRT).

        TensorRT goes through ``torch_tensorrt``'s ``torch.compile`` backend, imported only here.
        """
        options: dict = {}
        if backend == "tensorrt":
            try:
                import torch_tensorrt  # noqa: F401  (registers the "tensorrt" backend)
            except ImportError as err:
                raise ImportError("backend='tensorrt' needs the torch_tensorrt package (NVIDIA's index), not installed") from err
            if self.device.type != "cuda":
                raise RuntimeError("TensorRT needs a CUDA device; this reconstructor is on " + str(self.device))
            options = {"options": {"enabled_precisions": {self.dtype}}}
            mode = None
        self._unet_forward = torch.compile(self.unet, backend=backend, mode=mode, **options)
        self._vae_decode = torch.compile(self.vae.decode, backend=backend, mode=mode, **options)
        if self.tiny_autoencoder is not None:
            self._tiny_decode = torch.compile(self.tiny_autoencoder.decode, backend=backend, mode=mode, **options)
        return self

    # ---------------------------------------------------------------------------------- running
    def _as_tokens(self, tokens) -> torch.Tensor:
        tokens = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens)
        if tokens.ndim == 2:
            tokens = tokens[None]
        if tokens.ndim != 3 or tokens.shape[-1] != self.config.context_dim:
            raise ValueError(
                f"tokens of shape {tuple(tokens.shape)}: expected (B, T, {self.config.context_dim}) image tokens"
            )
        if not torch.isfinite(tokens).all():
            raise ValueError("tokens contain NaN or infinite values")
        return tokens.to(self.device, self.dtype)

    def initial_latents(self, batch_size: int, image_size: int, scheduler, options: SamplingOptions, generator) -> torch.Tensor:
        """The chain's starting point in the scheduler's latent space (float32)."""
        factor = self.config.vae_scale_factor
        shape = (batch_size, self.config.vae_z_channels, image_size // factor, image_size // factor)
        sigma0 = first_sigma(scheduler)

        def randn(*size):
            return torch.randn(size, generator=generator, device=self.device, dtype=torch.float32)

        if options.init_noise == "official":
            # utils.unclip_recon: a random "image latent" z plus sigma0 * (noise + offset noise).
            z = randn(*shape)
            noise = randn(*shape) + OFFICIAL_SAMPLING.offset_noise_level * randn(batch_size, 1, 1, 1)
            x_ve = z + sigma0 * noise
        elif options.init_noise == "standard":
            x_ve = randn(*shape) * math.sqrt(1.0 + sigma0**2)
        else:
            raise ValueError(f"init_noise {options.init_noise!r}: choose 'official' or 'standard'")
        if not is_variance_exploding(scheduler):
            x_ve = x_ve / math.sqrt(1.0 + sigma0**2)
        return x_ve

    @torch.inference_mode()
    def sample_latents(self, tokens, options: SamplingOptions | None = None) -> torch.Tensor:
        """Run the sampler; returns the UNet-space latents (B, 4, H/8, W/8), float32.

        The chain itself stays in float32; only the UNet runs in the reconstructor's dtype.
        """
        options = (options or SamplingOptions()).resolve(self.config)
        tokens = self._as_tokens(tokens)
        size = options.image_size or self.config.image_size
        if size % self.config.vae_scale_factor:
            raise ValueError(f"image_size {size} is not a multiple of {self.config.vae_scale_factor}")
        batch = tokens.shape[0]
        generator = torch.Generator(self.device)
        if options.seed is None:
            generator.seed()
        else:
            generator.manual_seed(options.seed)

        scheduler = make_scheduler(options.scheduler, self.config.discretization, self.config.prediction_type)
        set_schedule(scheduler, options.scheduler, options.steps, device=self.device)
        latents = self.initial_latents(batch, size, scheduler, options, generator)

        original = options.original_size or self.config.image_size
        vector = size_crop_vector(
            (original, original), (0, 0), embed_dim=self.config.size_embed_dim, batch_size=batch, dtype=self.dtype, device=self.device
        )
        distilled = self.unet.config.get("time_cond_proj_dim") is not None
        if distilled != (options.scheduler == "lcm"):
            raise ValueError(
                "an LCM-distilled UNet needs scheduler='lcm' (SamplingOptions.lcm) and the 'lcm' scheduler needs one"
            )
        if options.uses_cfg:
            uncond = unconditional_tokens(tokens, options.uncond, generator=generator)
            context = torch.cat([uncond, tokens])
            vector = torch.cat([vector, vector])
        else:
            context = tokens
        w_embedding = None
        if distilled:
            w = torch.full((batch,), options.guidance_scale - 1.0, device=self.device)
            w_embedding = guidance_embedding(w, self.unet.config.time_cond_proj_dim).to(self.dtype)

        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(latents, t).to(self.dtype)
            if options.uses_cfg:
                model_in = torch.cat([model_in, model_in])
            # epsilon, v or x0, as the UNet was trained; CFG extrapolates any of them the same way.
            with self._autocast():
                pred = self._unet_forward(
                    model_in.contiguous(memory_format=memory_format), t, encoder_hidden_states=context,
                    class_labels=vector, timestep_cond=w_embedding,
                ).sample.float()
            if options.uses_cfg:
                pred_u, pred_c = pred.chunk(2)
                pred = pred_u + options.guidance_scale * (pred_c - pred_u)
            latents = scheduler.step(pred, t, latents, generator=generator).prev_sample
        return latents

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor, *, tiny: bool = False) -> torch.Tensor:
        """UNet-space latents to the autoencoder's output (about [-1, 1])."""
        if tiny:
            if self.tiny_autoencoder is None:
                raise ValueError("tiny_autoencoder=True but this reconstructor has no tiny autoencoder loaded")
            # AutoencoderTiny reads the scaled latents as they are (its scaling_factor is 1).
            with self._autocast():
                return self._tiny_decode(latents.to(self.dtype)).sample.float()
        z = latents.to(self.vae_dtype) / self.vae.config.scaling_factor
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        # sgm decodes the first stage with autocast disabled (unclip6.yaml), so the KL VAE runs in float32.
        with self._autocast(enabled=False):
            return self._vae_decode(z).sample.float()

    def __call__(self, tokens, options: SamplingOptions | None = None, **changes) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] from image tokens (B, T, D)."""
        options = (options or SamplingOptions()).replace(**changes) if changes else (options or SamplingOptions())
        latents = self.sample_latents(tokens, options)
        mapping = options.output or self.config.output_mapping
        return map_output(self.decode_latents(latents, tiny=options.tiny_autoencoder), mapping)
