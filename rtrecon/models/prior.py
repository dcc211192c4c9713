"""The diffusion prior network: a DALL-E-2-style transformer that denoises CLIP image tokens.

``PriorNetwork(config)`` is MindEye2's ``PriorNetwork`` (built on dalle2-pytorch 1.15.6 upstream;
written here from scratch with identical key names and arithmetic). One call

    pred_x0 = net(image_embed, timesteps, brain_embed)

maps noisy image tokens ``(B, S, D)``, integer or float diffusion times ``(B,)`` and the
backbone's brain tokens ``(B, S, D)`` to the predicted clean image tokens ``(B, S, D)``.
``net.forward_with_cond_scale(..., cond_scale)`` applies classifier-free guidance against the
learned null embeddings.

The sequence is ``[brain tokens (S) | time token (1) | image tokens + learned_query (S)]``; the
prediction is the last ``S`` outputs. Each layer is pre-norm multi-query attention (``heads``
query heads, one shared key/value head, a learned null key/value, rotary embedding on the first
``min(32, dim_head)`` features, cosine-similarity logits at scale 16, a T5 relative-position
bias over ``n`` queries and ``n + 1`` keys) followed by a SwiGLU feed-forward. LayerNorms are
dalle2's gain-only kind: variance without Bessel correction, ``eps`` 1e-5 for float32 inputs and
1e-3 for any other dtype; the final one first divides by the signed feature maximum.

Under ``torch.autocast`` (the official fp16 inference) the module has no casts of its own beyond
upstream's, so the dtypes flow as upstream's do: the token sequence and residual stream are
float32 (the noisy image tokens are), matrix products are half, and a LayerNorm sees a half
tensor (eps 1e-3) only after a projection (``to_out``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rtrecon.models.config import MindEye2Config

__all__ = ["PriorNetwork", "GainLayerNorm", "RotaryEmbedding", "RelPosBias"]


class GainLayerNorm(nn.Module):
    """dalle2's LayerNorm: gain only, biased variance, dtype-dependent eps, optional stable mode."""

    def __init__(self, dim: int, stable: bool = False) -> None:
        super().__init__()
        self.stable = stable
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        if self.stable:
            x = x / x.amax(dim=-1, keepdim=True).detach()
        var = torch.var(x, dim=-1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=-1, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g


class RotaryEmbedding(nn.Module):
    """Interleaved-pair rotary embedding on the first ``dim`` features (shared by all layers).

    ``freqs`` is a frozen parameter, as in rotary-embedding-torch, so that it appears in the
    state dict under every attention layer that shares it.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def angles(self, seq_len: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(seq_len, device=device, dtype=torch.float32)
        angles = pos[:, None] * self.freqs.float()[None, :]
        # each frequency drives one interleaved pair (stack, not repeat_interleave, for ONNX)
        return torch.stack((angles, angles), dim=-1).reshape(seq_len, -1)

    @staticmethod
    def rotate(t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        rot = angles.shape[-1]
        head, tail = t[..., :rot], t[..., rot:]
        # interleaved pairs (d0, d1), (d2, d3), ... -> (-d1, d0), (-d3, d2), ...
        rotated_half = torch.stack((-head[..., 1::2], head[..., 0::2]), dim=-1).reshape(head.shape)
        # As rotary-embedding-torch (autocast off, float32 angles): half inputs rotate in float32
        # and are rounded back once.
        rotated = (head.float() * angles.cos() + rotated_half.float() * angles.sin()).to(t.dtype)
        return rotated if rot == t.shape[-1] else torch.cat((rotated, tail), dim=-1)


class RelPosBias(nn.Module):
    """T5 bucketed relative-position bias, ``(heads, n_queries, n_keys)``."""

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 128) -> None:
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def bucket(self, relative_position: torch.Tensor) -> torch.Tensor:
        n = (-relative_position).clamp(min=0)
        max_exact = self.num_buckets // 2
        # clamp before the log so that n=0 gives no -inf (it is replaced by the exact branch anyway)
        large = max_exact + (
            torch.log(n.float().clamp(min=1) / max_exact)
            / math.log(self.max_distance / max_exact)
            * (self.num_buckets - max_exact)
        ).long()
        large = large.clamp(max=self.num_buckets - 1)
        return torch.where(n < max_exact, n, large)

    def forward(self, n_queries: int, n_keys: int, device: torch.device) -> torch.Tensor:
        q = torch.arange(n_queries, device=device)
        k = torch.arange(n_keys, device=device)
        values = self.relative_attention_bias(self.bucket(k[None, :] - q[:, None]))
        return values.permute(2, 0, 1)


class Attention(nn.Module):
    """Pre-norm multi-query cosine-similarity attention with a learned null key/value."""

    def __init__(self, dim: int, heads: int, dim_head: int, rotary: RotaryEmbedding, scale: float) -> None:
        super().__init__()
        self.heads, self.dim_head, self.scale = heads, dim_head, scale
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.norm = GainLayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)
        self.rotary_emb = rotary
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False), GainLayerNorm(dim))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        q = self.to_q(x).reshape(b, n, self.heads, self.dim_head).transpose(1, 2) * self.scale
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q = RotaryEmbedding.rotate(q, angles)
        k = RotaryEmbedding.rotate(k, angles)
        null_kv = self.null_kv.to(x.dtype)[:, None, None, :].expand(2, b, 1, self.dim_head)
        nk, nv = null_kv[0], null_kv[1]
        k = torch.cat((nk, k), dim=-2)
        v = torch.cat((nv, v), dim=-2)
        root = math.sqrt(self.scale)
        q = F.normalize(q, dim=-1) * root
        k = F.normalize(k, dim=-1) * root
        sim = torch.einsum("bhid,bjd->bhij", q, k) + attn_bias.to(q.dtype)
        attn = sim.softmax(dim=-1, dtype=torch.float32).to(sim.dtype)
        out = torch.einsum("bhij,bjd->bhid", attn, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.silu(gate)


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    inner = int(mult * dim)
    # Identity/Dropout placeholders keep the official indices (.0 norm, .1 in, .5 out).
    return nn.Sequential(
        GainLayerNorm(dim), nn.Linear(dim, 2 * inner, bias=False), SwiGLU(), nn.Identity(), nn.Identity(),
        nn.Linear(inner, dim, bias=False),
    )


class CausalTransformer(nn.Module):
    """The prior's transformer (bidirectional; the upstream name is kept for the keys)."""

    def __init__(self, config: MindEye2Config) -> None:
        super().__init__()
        dim = config.clip_dim
        self.rel_pos_bias = RelPosBias(config.prior_heads, config.prior_rel_pos_buckets, config.prior_rel_pos_max_distance)
        rotary = RotaryEmbedding(config.rotary_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                Attention(dim, config.prior_heads, config.prior_dim_head, rotary, config.prior_cosine_sim_scale),
                _feed_forward(dim, config.prior_ff_mult),
            ])
            for _ in range(config.prior_depth)
        )
        self.norm = GainLayerNorm(dim, stable=True)
        self.project_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        attn_bias = self.rel_pos_bias(n, n + 1, x.device)
        angles = self.layers[0][0].rotary_emb.angles(n, x.device)
        for attn, ff in self.layers:
            x = attn(x, attn_bias, angles) + x
            x = ff(x) + x
        return self.project_out(self.norm(x))


class SinusoidalPosEmb(nn.Module):
    """``[sin, cos]`` embedding of a continuous time, frequencies ``exp(-ln(1e4) k / (half - 1))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
        emb = t.float()[:, None] * freqs[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class TimeMLP(nn.Module):
    """dalle2's MLP: ``Linear -> SiLU`` twice, then ``Linear`` (keys ``net.0.0``, ``net.1.0``, ``net.2``)."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        hidden = mult * dim
        self.net = nn.Sequential(
            nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Identity()),
            nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Identity()),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.net[2].weight.dtype))


class PriorNetwork(nn.Module):
    """MindEye2's prior network (``learned_query_mode="pos_emb"``, continuous time, no self-conditioning)."""

    def __init__(self, config: MindEye2Config) -> None:
        super().__init__()
        dim, tokens = config.clip_dim, config.clip_tokens
        self.num_tokens = tokens
        self.learned_query = nn.Parameter(torch.randn(tokens, dim) * dim**-0.5)
        self.null_brain_embeds = nn.Parameter(torch.randn(tokens, dim))
        self.null_image_embed = nn.Parameter(torch.randn(tokens, dim))
        self.to_time_embeds = nn.Sequential(nn.Sequential(SinusoidalPosEmb(dim), TimeMLP(dim, config.prior_time_mlp_mult)))
        self.causal_transformer = CausalTransformer(config)

    @staticmethod
    def _keep_mask(batch: int, drop_prob: float, device: torch.device) -> torch.Tensor | None:
        """Per-sample keep mask ``(B,1,1)``, or ``None`` when nothing is dropped."""
        if drop_prob <= 0:
            return None
        if drop_prob >= 1:
            return torch.zeros(batch, 1, 1, dtype=torch.bool, device=device)
        return (torch.rand(batch, device=device) < 1 - drop_prob)[:, None, None]

    def forward(
        self,
        image_embed: torch.Tensor,
        timesteps: torch.Tensor,
        brain_embed: torch.Tensor,
        *,
        brain_cond_drop_prob: float = 0.0,
        image_cond_drop_prob: float = 0.0,
    ) -> torch.Tensor:
        """Predicted clean image tokens ``(B, S, D)``.

        ``brain_cond_drop_prob``/``image_cond_drop_prob`` replace each sample's brain tokens /
        noisy image tokens by the null embeddings with that probability (training-time CFG
        dropout; 1.0 gives the unconditional branch).
        """
        batch = image_embed.shape[0]
        brain_keep = self._keep_mask(batch, brain_cond_drop_prob, image_embed.device)
        if brain_keep is not None:
            brain_embed = torch.where(brain_keep, brain_embed, self.null_brain_embeds.to(brain_embed.dtype)[None])
        image_keep = self._keep_mask(batch, image_cond_drop_prob, image_embed.device)
        if image_keep is not None:
            image_embed = torch.where(image_keep, image_embed, self.null_image_embed.to(image_embed.dtype)[None])
        time_embed = self.to_time_embeds(timesteps)[:, None, :].to(image_embed.dtype)
        image_embed = image_embed + self.learned_query.to(image_embed.dtype)[None]
        tokens = torch.cat((brain_embed.to(image_embed.dtype), time_embed, image_embed), dim=-2)
        return self.causal_transformer(tokens)[:, -self.num_tokens :, :]

    def forward_with_cond_scale(
        self, image_embed: torch.Tensor, timesteps: torch.Tensor, brain_embed: torch.Tensor, cond_scale: float = 1.0
    ) -> torch.Tensor:
        """Classifier-free guidance: ``null + (cond - null) * cond_scale``."""
        cond = self(image_embed, timesteps, brain_embed)
        if cond_scale == 1:
            return cond
        null = self(image_embed, timesteps, brain_embed, brain_cond_drop_prob=1.0, image_cond_drop_prob=1.0)
        return null + (cond - null) * cond_scale
