"""The unCLIP model's configurations, as data.

An :class:`UnclipConfig` holds the values of Stability's ``unclip6.yaml`` (the UNet's
``network_config`` and the first stage's ``ddconfig``) plus the few diffusers-only settings the
yaml does not name (GroupNorm groups, which sgm fixes at 32). The diffusers model configs are
derived from it by diffusers' own single-file helpers (``create_unet_diffusers_config_from_ldm``,
``create_vae_diffusers_config_from_ldm``), so the folder written by
:mod:`~rtrecon.reconstruction.conversion` and the models built here come from one description.

Three configurations are provided:

- :data:`OFFICIAL`: MindEye2's SDXL unCLIP (``unclip6_epoch0_step110000.ckpt``): 320 channels,
  multipliers 1-2-4, transformer depths 1-2-10, cross-attention on 1664-d OpenCLIP bigG tokens, a
  1024-d vector of original size and crop coordinates, the SDXL KL-f8 VAE (scale 0.13025).
- :data:`TINY`: the same structure at a width that runs on a CPU in well under a second per step
  (random weights; what the tests run).
- :data:`SYNTHETIC`: the small reconstructor trained on the synthetic world's images
  (:mod:`~rtrecon.reconstruction.train_synthetic`): 32 px images through a KL-f2 autoencoder (16² × 4
  latents), a UNet of 32-64-64 channels, v-prediction, no CFG. Its trained weights ship with the package
  (:func:`~rtrecon.reconstruction.weights.synthetic_reconstructor_path`).

Sampling constants of the official inference (``recon_inference.ipynb``, ``utils.unclip_recon``)
live here too: :data:`OFFICIAL_SAMPLING`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OFFICIAL",
    "OFFICIAL_SAMPLING",
    "PREDICTION_TYPES",
    "SYNTHETIC",
    "TINY",
    "DiscretizationConfig",
    "OfficialSampling",
    "UnclipConfig",
]


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class DiscretizationConfig:
    """sgm's ``LegacyDDPMDiscretization``: betas ``linspace(sqrt(start), sqrt(end), T)**2``."""

    linear_start: float = 0.00085
    linear_end: float = 0.012
    num_timesteps: int = 1000


@dataclass(frozen=True)
class OfficialSampling:
    """How MindEye2's ``recon_inference`` samples the unCLIP (EulerEDM, VanillaCFG)."""

    num_steps: int = 38
    guidance_scale: float = 5.0
    image_size: int = 768
    offset_noise_level: float = 0.04
    #: ``clamp(x * scale + shift, 0, 1)`` on the VAE output, not ``(x + 1) / 2``.
    output_scale: float = 0.8
    output_shift: float = 0.2


@dataclass(frozen=True)
class UnclipConfig:
    """One unCLIP model (UNet + KL autoencoder), in ``unclip6.yaml`` terms.

    ``size_embed_dim`` is the width of each scalar's sinusoidal embedding in the conditioning
    vector (sgm ``ConcatTimestepEmbedderND(outdim)``); the vector holds four scalars (original
    height, width, crop top, left), so ``adm_in_channels == 4 * size_embed_dim``.
    """

    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2)
    transformer_depth: tuple[int, ...] = (1, 2, 10)
    num_head_channels: int = 64
    context_dim: int = 1664
    adm_in_channels: int = 1024
    size_embed_dim: int = 256
    norm_num_groups: int = 32
    vae_ch: int = 128
    vae_ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    vae_num_res_blocks: int = 2
    vae_z_channels: int = 4
    vae_norm_num_groups: int = 32
    scale_factor: float = 0.13025
    #: The pixel size the reconstructor is run at by default.
    image_size: int = 768
    #: The token count the cross-attention is fed (256 bigG patch tokens officially).
    num_tokens: int = 256
    #: How VAE outputs become [0, 1] images by default: MindEye2's ``x * 0.8 + 0.2`` ("official",
    #: what its unCLIP was tuned to) or ``(x + 1) / 2`` ("standard", for reconstructors trained here).
    output_mapping: str = "official"
    #: The CFG scale sampling uses unless told otherwise: MindEye2's 5 for the official model; a
    #: small reconstructor trained here may do best with less (<= 1: no CFG, one UNet pass per step).
    guidance_scale: float = OfficialSampling.guidance_scale
    #: What the UNet predicts (diffusers' ``prediction_type``): ``epsilon`` as sgm's unCLIP, or
    #: ``v_prediction`` / ``sample``, which small reconstructors trained here converge on faster.
    prediction_type: str = "epsilon"
    discretization: DiscretizationConfig = DiscretizationConfig()

    def __post_init__(self) -> None:
        if self.adm_in_channels != 4 * self.size_embed_dim:
            raise ValueError(
                f"adm_in_channels ({self.adm_in_channels}) must be 4 x size_embed_dim ({self.size_embed_dim}): "
                "the vector is original size (h, w) and crop (top, left)"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r}: choose one of {', '.join(PREDICTION_TYPES)}")
        if self.image_size % self.vae_scale_factor:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the VAE factor {self.vae_scale_factor}")

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for the KL-f8 autoencoder)."""
        return 2 ** (len(self.vae_ch_mult) - 1)

    def replace(self, **changes: Any) -> UnclipConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def ldm_config(self) -> dict[str, Any]:
        """The configuration in the layout of sgm's ``unclip6.yaml`` (``model.params``)."""
        return {
            "model": {
                "params": {
                    "scale_factor": self.scale_factor,
                    "network_config": {
                        "params": {
                            "adm_in_channels": self.adm_in_channels,
                            "num_classes": "sequential",
                            "use_checkpoint": True,
                            "in_channels": self.vae_z_channels,
                            "out_channels": self.vae_z_channels,
                            "model_channels": self.model_channels,
                            "attention_resolutions": list(self.attention_resolutions),
                            "num_res_blocks": self.num_res_blocks,
                            "channel_mult": list(self.channel_mult),
                            "num_head_channels": self.num_head_channels,
                            "use_linear_in_transformer": True,
                            "transformer_depth": list(self.transformer_depth),
                            "context_dim": self.context_dim,
                            "spatial_transformer_attn_type": "softmax-xformers",
                        }
                    },
                    "first_stage_config": {
                        "params": {
                            "embed_dim": self.vae_z_channels,
                            "ddconfig": {
                                "attn_type": "vanilla-xformers",
                                "double_z": True,
                                "z_channels": self.vae_z_channels,
                                "resolution": 256,
                                "in_channels": 3,
                                "out_ch": 3,
                                "ch": self.vae_ch,
                                "ch_mult": list(self.vae_ch_mult),
                                "num_res_blocks": self.vae_num_res_blocks,
                                "attn_resolutions": [],
                                "dropout": 0.0,
                            },
                        }
                    },
                }
            }
        }

    def unet_config(self) -> dict[str, Any]:
        """``UNet2DConditionModel`` kwargs, derived by diffusers' own LDM helper.

        The helper maps ``num_classes: sequential`` with a context width other than SDXL's text
        widths to ``class_embed_type="projection"``: the 1024-d vector then goes through
        ``class_embedding`` (Linear, SiLU, Linear) and is added to the time embedding, exactly
        as sgm's ``label_emb`` does.
        """
        from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

        # An empty checkpoint makes the helper fall back to its default image size; the real
        # latent size is set below.
        config = create_unet_diffusers_config_from_ldm(self.ldm_config(), {})
        config["sample_size"] = self.image_size // self.vae_scale_factor
        config["norm_num_groups"] = self.norm_num_groups
        return config

    def vae_config(self) -> dict[str, Any]:
        """``AutoencoderKL`` kwargs, derived by diffusers' own LDM helper."""
        from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm

        config = create_vae_diffusers_config_from_ldm(self.ldm_config(), {})
        config["sample_size"] = self.image_size
        config["norm_num_groups"] = self.vae_norm_num_groups
        return config


OFFICIAL = UnclipConfig()

TINY = UnclipConfig(
    model_channels=32,
    channel_mult=(1, 2, 4),
    num_res_blocks=1,
    transformer_depth=(1, 1, 1),
    num_head_channels=16,
    # The token shape of rtrecon.embedders.openclip's tiny embedder (64 tokens of width 64).
    context_dim=64,
    adm_in_channels=128,
    size_embed_dim=32,
    norm_num_groups=8,
    vae_ch=16,
    vae_ch_mult=(1, 2, 4, 4),
    vae_num_res_blocks=1,
    vae_norm_num_groups=8,
    scale_factor=1.0,
    image_size=64,
    num_tokens=64,
)

# The synthetic world's trained reconstructor: TINY with wider heads and size embedding, a narrower
# deepest level, at 32 px through a two-level (f2) VAE, v-prediction and the standard output
# mapping, sampled without CFG. Why these: the scenes and their 8x8-patch tokens carry little
# beyond 32 px; 16x16 latents keep a UNet training step about a second on one CPU thread; (1, 2, 2)
# halves the UNet (7 MB of weights); on held-out pairs 4 DPM-Solver++ steps reconstruct as well
# without CFG as with scale 2 and far better than with the official 5, at half the cost per step.
SYNTHETIC = dataclasses.replace(
    TINY,
    channel_mult=(1, 2, 2),
    num_head_channels=32,
    adm_in_channels=256,
    size_embed_dim=64,
    vae_ch_mult=(1, 2),
    image_size=32,
    output_mapping="standard",
    prediction_type="v_prediction",
    guidance_scale=1.0,
)

OFFICIAL_SAMPLING = OfficialSampling()
