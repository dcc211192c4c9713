"""One configuration dataclass for the whole MindEye2 model.

``MindEye2Config`` holds every architectural number of the three parts (per-subject ridge
adapters, the residual MLP backbone with its retrieval and blurry heads, and the diffusion
prior). It is plain data: ``to_dict``/``from_dict`` round-trip it through JSON, and
``rtrecon.models.loading.infer_config`` rebuilds it from a checkpoint's keys and shapes.

Presets:

- ``MindEye2Config.final()``: the released ``final_*`` models (h=4096, blurry branch, subj01).
- ``MindEye2Config.realtime()``: the low-compute / real-time variant (h=1024, no blurry branch).
- ``MindEye2Config.tiny()``: a few-thousand-parameter model that runs every code path on a CPU in
  milliseconds (the tests' configuration).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["MindEye2Config", "NSD_VOXELS"]

#: nsdgeneral voxel counts of the eight NSD subjects (subj01..subj08).
NSD_VOXELS: dict[int, int] = {1: 15724, 2: 14278, 3: 15226, 4: 13153, 5: 13039, 6: 17907, 7: 12682, 8: 14386}


@dataclass(frozen=True)
class MindEye2Config:
    """Architecture of a MindEye2 model (adapters, backbone, heads, diffusion prior).

    Parameters
    ----------
    n_voxels : tuple of int
        Input size of each subject's ridge adapter, in subject-index order.
    hidden_dim : int
        Width of the shared space and of the MLP backbone (4096 released, 1024 real-time).
    n_blocks : int
        Number of residual mixer blocks.
    clip_tokens, clip_dim : int
        Target token grid (256 x 1664 for OpenCLIP ViT-bigG/14).
    blurry : bool
        Whether the low-level (blurry) branch exists.
    use_prior : bool
        Whether the diffusion prior exists.
    prior_depth, prior_heads, prior_dim_head : int
        Transformer depth, query heads and head width of the prior (one shared key/value head).
    prior_timesteps : int
        Length of the prior's training noise schedule (T).
    prior_ff_mult : int
        SwiGLU expansion of the prior's feed-forward blocks.
    prior_time_mlp_mult : int
        Hidden width multiplier of the time-embedding MLP.
    prior_rotary_dim : int or None
        Rotated features per head; ``None`` means ``min(32, prior_dim_head)`` as upstream.
    prior_rel_pos_buckets, prior_rel_pos_max_distance : int
        T5 relative-position bias buckets and maximum distance.
    prior_cosine_sim_scale : float
        Temperature of the prior's cosine-similarity attention.
    prior_cond_drop_prob : float
        Probability of dropping the brain and image conditioning in prior training (CFG).
    drop, blurry_drop : float
        Dropout of the mixer blocks and of the blurry branch (training only).
    seq_len : int
        Token length of the adapter output (1 in every released model).
    """

    n_voxels: tuple[int, ...] = (NSD_VOXELS[1],)
    hidden_dim: int = 4096
    n_blocks: int = 4
    clip_tokens: int = 256
    clip_dim: int = 1664
    blurry: bool = True
    use_prior: bool = True
    prior_depth: int = 6
    prior_heads: int = 32
    prior_dim_head: int = 52
    prior_timesteps: int = 100
    prior_ff_mult: int = 4
    prior_time_mlp_mult: int = 2
    prior_rotary_dim: int | None = None
    prior_rel_pos_buckets: int = 32
    prior_rel_pos_max_distance: int = 128
    prior_cosine_sim_scale: float = 16.0
    prior_cond_drop_prob: float = 0.2
    drop: float = 0.15
    blurry_drop: float = 0.3
    seq_len: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_voxels", tuple(int(v) for v in self.n_voxels))
        if self.prior_rotary_dim is None:
            object.__setattr__(self, "prior_rotary_dim", min(32, self.prior_dim_head))
        if not self.n_voxels or min(self.n_voxels) <= 0:
            raise ValueError(f"n_voxels must list at least one positive voxel count, got {self.n_voxels}")
        if self.seq_len != 1:
            raise ValueError("only seq_len=1 is supported (every released MindEye2 model uses it)")
        if self.use_prior and self.rotary_dim % 2:
            raise ValueError(f"rotary dimension must be even, got {self.rotary_dim}")

    @property
    def rotary_dim(self) -> int:
        return int(self.prior_rotary_dim)

    @property
    def out_dim(self) -> int:
        return self.clip_tokens * self.clip_dim

    @property
    def n_subjects(self) -> int:
        return len(self.n_voxels)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_voxels"] = list(self.n_voxels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MindEye2Config:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MindEye2Config fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> MindEye2Config:
        return replace(self, **changes)

    @classmethod
    def final(cls, n_voxels: tuple[int, ...] = (NSD_VOXELS[1],)) -> MindEye2Config:
        """The released ``final_*`` models: h=4096 with the blurry branch."""
        return cls(n_voxels=n_voxels, hidden_dim=4096, blurry=True)

    @classmethod
    def realtime(cls, n_voxels: tuple[int, ...] = (NSD_VOXELS[1],)) -> MindEye2Config:
        """The low-compute / real-time models: h=1024, no blurry branch."""
        return cls(n_voxels=n_voxels, hidden_dim=1024, blurry=False)

    @classmethod
    def tiny(cls, n_voxels: tuple[int, ...] = (50,), blurry: bool = False) -> MindEye2Config:
        """A model of a few thousand parameters that runs every path on a CPU in milliseconds."""
        return cls(
            n_voxels=n_voxels, hidden_dim=32, n_blocks=2, clip_tokens=4, clip_dim=16, blurry=blurry,
            prior_depth=2, prior_heads=2, prior_dim_head=8, prior_timesteps=10,
        )
