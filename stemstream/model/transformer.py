"""Decoder-only Transformer backbone in the style of Llama 3 (paper appendix A.2, SPEC section 5).

Pre-norm blocks with the simplified RMSNorm (no learned gain), rotary position embeddings
applied at explicit absolute positions, query-key RMS normalisation over the head dimension with
a learned per-dimension scale, grouped-query attention, SwiGLU feed-forward and optional
cross-attention to a memory. Shape legend (SPEC section 1): ``B`` batch, ``S`` positions,
``D`` model dim, ``H`` heads, ``Hkv`` KV heads, ``Dh`` head dim, ``S_k`` key positions,
``S_mem`` memory positions.

Masks are boolean, ``True`` = may attend. :meth:`Transformer.forward` takes a mask tensor over
the keys it attends to, or a :data:`MaskFn` ``(q_positions, k_positions) -> mask`` that is
evaluated against the key positions a :class:`KVCache` returns, which is how block masks meet
ring caches whose slot order is not position order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stemstream.config import from_dict, to_dict
from stemstream.errors import ConfigError
from stemstream.model.kv_cache import CacheView, KVCache

__all__ = [
    "MaskFn",
    "Transformer",
    "TransformerConfig",
    "causal_mask_from_positions",
    "rms_norm",
]

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(q_positions [S] or [B, S], k_positions [S_k]) -> bool [S, S_k] or [B, S, S_k]``."""


@dataclass(frozen=True)
class TransformerConfig:
    """Backbone hyper-parameters.

    Attributes:
        dim: D, model width.
        num_layers: number of blocks.
        num_heads: H, query heads; ``Dh = D / H`` must be even (rotary pairs).
        num_kv_heads: Hkv, key/value heads shared by groups of ``H / Hkv`` query heads.
        ffn_hidden: SwiGLU hidden width; ``None`` = 8/3 D rounded up to ``ffn_multiple_of``.
        ffn_multiple_of: rounding of the default ``ffn_hidden``.
        rope_theta: rotary base.
        max_seq_len: positions covered by the precomputed rotary table and the default linear
            cache size; later positions still work (their angles are computed on the fly).
        dropout: attention-probability and residual dropout.
        cross_attention: add a cross-attention sublayer after self-attention in every block.
        cross_dim: memory width; ``None`` = ``dim``.
        norm_eps: epsilon of every RMSNorm.
    """

    dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    ffn_hidden: int | None = None
    ffn_multiple_of: int = 256
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    dropout: float = 0.0
    cross_attention: bool = False
    cross_dim: int | None = None
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("dim", "num_layers", "num_heads", "num_kv_heads", "ffn_multiple_of",
                     "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"TransformerConfig.{name} must be an int >= 1, got {value!r}")
        for name in ("ffn_hidden", "cross_dim"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"TransformerConfig.{name} must be None or an int >= 1, "
                                  f"got {value!r}")
        if self.dim % self.num_heads:
            raise ConfigError(f"num_heads {self.num_heads} must divide dim {self.dim}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_kv_heads {self.num_kv_heads} must divide num_heads {self.num_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head dim {self.head_dim} (dim / num_heads) must be even for RoPE")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta must be > 0, got {self.rope_theta}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be > 0, got {self.norm_eps}")
        if self.cross_dim is not None and not self.cross_attention:
            raise ConfigError("cross_dim is set but cross_attention is off")

    @property
    def head_dim(self) -> int:
        """Dh."""
        return self.dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU hidden width actually used."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        return self.ffn_multiple_of * math.ceil(int(8 * self.dim / 3) / self.ffn_multiple_of)

    @property
    def memory_dim(self) -> int:
        """Width of the cross-attention memory."""
        return self.cross_dim if self.cross_dim is not None else self.dim

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data; :meth:`from_dict` inverts it."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Build from :meth:`to_dict` data; unknown keys raise :class:`ConfigError`."""
        return from_dict(cls, data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TransformerConfig:
        """A named preset (see :data:`TRANSFORMER_PRESETS`), optionally with fields replaced."""
        if name not in TRANSFORMER_PRESETS:
            raise ConfigError(
                f"unknown transformer preset {name!r}; known: {', '.join(TRANSFORMER_PRESETS)}"
            )
        return dataclasses.replace(TRANSFORMER_PRESETS[name], **overrides)


TRANSFORMER_PRESETS: dict[str, TransformerConfig] = {
    # Tests: 0.12M backbone parameters.
    "tiny": TransformerConfig(dim=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=256),
    # Shipped real-time model: 4.7M backbone parameters. Decoding on CPU at batch 1 is bound by
    # reading the weights (and per-op overhead), so width x depth is picked by measurement:
    # ~4.2 ms/token on one core of the 2-core dev machine with a 256+ position cache (dim 384 x
    # 8 layers took ~8 ms), leaving room for embeddings, heads and the codec in a 20 ms frame.
    "cpu": TransformerConfig(dim=256, num_layers=6, num_heads=4, num_kv_heads=2,
                             max_seq_len=4096),
    # Paper size (A.2): 188.8M backbone parameters (~220M with the LM's embeddings and heads).
    "paper": TransformerConfig(dim=1024, num_layers=16, num_heads=16, num_kv_heads=8,
                               max_seq_len=4096),
}  # fmt: skip


def rms_norm(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the last dim (times ``weight``), in float32 at least."""
    compute = torch.promote_types(x.dtype, torch.float32)
    weight = weight.to(compute) if weight is not None else None
    return F.rms_norm(x.to(compute), (x.shape[-1],), weight, eps).type_as(x)


def causal_mask_from_positions(
    q_positions: torch.Tensor, k_positions: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """Causal mask by absolute position: ``0 <= k <= q`` (and ``k > q - window``).

    Args:
        q_positions: long ``[S]`` or ``[B, S]``.
        k_positions: long ``[S_k]`` or ``[B, S_k]``; negative = empty cache slot.
        window: if set, each query sees only its ``window`` most recent positions.

    Returns:
        bool ``[S, S_k]`` or ``[B, S, S_k]``.
    """
    q = q_positions.unsqueeze(-1)
    k = k_positions.unsqueeze(-2)
    mask = (k <= q) & (k >= 0)
    if window is not None:
        mask &= k > q - window
    return mask


class RotaryEmbedding(nn.Module):
    """Rotary embedding over adjacent pairs ``(x[2i], x[2i+1])`` at explicit positions.

    Each pair is a complex number rotated by ``exp(i * position * theta^(-2i/Dh))``. The
    rotations are precomputed (in float64, then cast) for positions ``< max_seq_len``; later
    positions, e.g. an hour-long ring-cache stream, are computed on the fly in float64 so the
    angle stays exact however large the position.
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        inv_freq = theta ** -(torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)
        self.register_buffer("table", self._rotations(torch.arange(max_seq_len, device=device)),
                             persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # ``module.to(torch.bfloat16)`` would cast the complex table to a real dtype (dropping
        # the imaginary part) and the float64 frequencies to bf16: follow the device only.
        kept = {"inv_freq": self.inv_freq, "table": self.table}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            setattr(self, name, old.to(getattr(self, name).device))
        return self

    def _rotations(self, positions: torch.Tensor) -> torch.Tensor:
        angles = positions.to(torch.float64).unsqueeze(-1) * self.inv_freq
        return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)

    def rotations(self, positions: torch.Tensor) -> torch.Tensor:
        """complex64 ``[..., Dh/2]`` rotations for long ``positions [...]``."""
        if int(positions.max()) < self.table.shape[0]:
            return self.table[positions]
        return self._rotations(positions)

    @staticmethod
    def apply(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """Rotate ``x [B, h, S, Dh]`` by ``rotations [S, Dh/2]`` or ``[B, 1, S, Dh/2]``."""
        compute = torch.promote_types(x.dtype, torch.float32)
        pairs = torch.view_as_complex(x.to(compute).unflatten(-1, (-1, 2)))  # (B, h, S, Dh/2)
        return torch.view_as_real(pairs * rotations).flatten(-2).type_as(x)


class _Folded(NamedTuple):
    """A final attention mask ``[B or 1, 1, G * S, S_k]``, in the query layout of
    :meth:`Attention._attend`; built by the first layer and reused by the others."""

    mask: torch.Tensor


def _fold(mask: torch.Tensor, group: int, seq: int) -> _Folded:
    """bool ``[S, S_k]`` / ``[B, S, S_k]`` (or broadcastable) -> :class:`_Folded`."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    mask = mask.expand(mask.shape[0], seq, mask.shape[-1])  # (B or 1, S, S_k)
    mask = mask.unsqueeze(1).expand(-1, group, -1, -1)  # (B or 1, G, S, S_k)
    return _Folded(mask.reshape(mask.shape[0], 1, group * seq, mask.shape[-1]))


AttentionMask = torch.Tensor | MaskFn | _Folded | None


class Attention(nn.Module):
    """Grouped-query attention with qk-norm; self-attention (RoPE, cache) or cross-attention."""

    def __init__(self, config: TransformerConfig, kv_dim: int, cross: bool,
                 device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim, self.eps, self.dropout = config.head_dim, config.norm_eps, config.dropout
        self.cross = cross
        self.kv_width = config.num_kv_heads * config.head_dim
        self.wq = nn.Linear(config.dim, config.dim, bias=False, **factory)
        # Keys and values in one matmul: on CPU, decoding a token is dominated by per-op cost.
        self.wkv = nn.Linear(kv_dim, 2 * self.kv_width, bias=False, **factory)
        self.wo = nn.Linear(config.dim, config.dim, bias=False, **factory)
        # qk-norm: RMS over Dh with a learned per-dimension scale (shared by all heads).
        self.q_norm = nn.Parameter(torch.ones(config.head_dim, **factory))
        self.k_norm = nn.Parameter(torch.ones(config.head_dim, **factory))

    def forward(
        self,
        x: torch.Tensor,
        kv_input: torch.Tensor,
        rotations: torch.Tensor | None,
        mask: AttentionMask,
        q_positions: torch.Tensor | None,
        cache: KVCache | None,
    ) -> tuple[torch.Tensor, _Folded | None]:
        """Attend from ``x [B, S, D]`` to ``kv_input [B, S_kv, D_kv]``.

        Args:
            rotations: RoPE rotations of the queries' positions (self-attention only).
            mask: bool ``[S, S_k]`` / ``[B, S, S_k]``, a :data:`MaskFn`, a mask folded by an
                earlier layer, or ``None`` (causal in sequence order without a cache, causal by
                position with one; no mask for cross-attention).

        Returns:
            ``[B, S, D]`` and the folded mask used (``None`` for the built-in causal kernel),
            which the next layer can reuse: all caches hold the same positions.
        """
        batch, seq, _ = x.shape
        q = self.wq(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.wkv(kv_input).split(self.kv_width, dim=-1)
        k = k.view(batch, -1, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, -1, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q, self.eps, self.q_norm), rms_norm(k, self.eps, self.k_norm)
        if rotations is not None:
            q, k = RotaryEmbedding.apply(q, rotations), RotaryEmbedding.apply(k, rotations)
        if cache is not None:
            view: CacheView = cache.update(k, v, q_positions)
            k, v = view.keys, view.values
            if not isinstance(mask, _Folded):
                mask = self._cache_mask(mask, q_positions, view.positions, cache.window)
        elif callable(mask) and not isinstance(mask, _Folded):
            mask = mask(q_positions, q_positions)
        if mask is not None and not isinstance(mask, _Folded):
            mask = _fold(mask, self.num_heads // self.num_kv_heads, seq)
        out = self._attend(q, k, v, mask)  # (B, H, S, Dh)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1)), mask

    @staticmethod
    def _cache_mask(mask: torch.Tensor | MaskFn | None, q_positions: torch.Tensor,
                    k_positions: torch.Tensor, window: int | None) -> torch.Tensor:
        # The cache decides what exists (empty slots, the ring's window); the caller's mask may
        # only restrict it further.
        if mask is None:
            return causal_mask_from_positions(q_positions, k_positions, window)
        if callable(mask):
            mask = mask(q_positions, k_positions)
        exists = k_positions >= 0
        if window is not None:
            exists = exists & (k_positions > q_positions.unsqueeze(-1) - window)
        return mask & exists

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: _Folded | None) -> torch.Tensor:
        """SDPA of ``q [B, H, S, Dh]`` over ``k, v [B, Hkv, S_k, Dh]``; ``None`` = causal."""
        dropout = self.dropout if self.training else 0.0
        if mask is None:
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=not self.cross, dropout_p=dropout, enable_gqa=True
            )
        # GQA without repeating K/V (which would copy the whole cache every step): fold each
        # group of H/Hkv query heads into the query axis of its KV head.
        batch, heads, seq, head_dim = q.shape
        q = q.reshape(batch, self.num_kv_heads, heads // self.num_kv_heads * seq, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.mask, dropout_p=dropout)
        return out.view(batch, heads, seq, head_dim)


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int, device: torch.device | str | None,
                 dtype: torch.dtype | None) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False, device=device, dtype=dtype)
        self.w3 = nn.Linear(dim, hidden, bias=False, device=device, dtype=dtype)
        self.w2 = nn.Linear(hidden, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention, SwiGLU, each residual."""

    def __init__(self, config: TransformerConfig, device: torch.device | str | None,
                 dtype: torch.dtype | None) -> None:
        super().__init__()
        self.eps = config.norm_eps
        self.attention = Attention(config, config.dim, False, device, dtype)
        self.cross_attention = (
            Attention(config, config.memory_dim, True, device, dtype)
            if config.cross_attention else None
        )
        self.feed_forward = FeedForward(config.dim, config.hidden_dim, device, dtype)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, positions: torch.Tensor,
                mask: AttentionMask, memory: torch.Tensor | None, memory_mask: AttentionMask,
                cache: KVCache | None) -> tuple[torch.Tensor, AttentionMask, AttentionMask]:
        """``x [B, S, D]`` -> ``[B, S, D]``, plus the resolved self- and cross-attention masks
        for the next block (see :meth:`Attention.forward`)."""
        h = rms_norm(x, self.eps)
        attended, mask = self.attention(h, h, rotations, mask, positions, cache)
        x = x + self.drop(attended)
        if self.cross_attention is not None:
            h = rms_norm(x, self.eps)
            attended, memory_mask = self.cross_attention(h, memory, None, memory_mask, None, None)
            x = x + self.drop(attended)
        return x + self.drop(self.feed_forward(rms_norm(x, self.eps))), mask, memory_mask


class Transformer(nn.Module):
    """Stack of :class:`Block` with a final RMSNorm. Embeddings and heads belong to the LMs.

    Initialisation: every linear weight ~ N(0, 0.02); the output projections that write into
    the residual stream (attention ``wo``, SwiGLU ``w2``) use std ``0.02 / sqrt(2 num_layers)``
    (GPT-2), so the residual variance does not grow with depth; qk-norm scales start at 1.
    """

    def __init__(self, config: TransformerConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = config
        self.rope = RotaryEmbedding(config.head_dim, config.max_seq_len, config.rope_theta,
                                    device)
        self.layers = nn.ModuleList(Block(config, device, dtype) for _ in range(config.num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw all weights with the documented initialisation."""
        out_std = 0.02 / math.sqrt(2 * self.config.num_layers)
        for name, param in self.named_parameters():
            if name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(param, 0.0, out_std)
            elif param.ndim == 2:
                nn.init.normal_(param, 0.0, 0.02)
            else:
                nn.init.ones_(param)

    def num_parameters(self) -> int:
        """Trainable parameters of the backbone."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def make_caches(self, batch_size: int, max_seq_len: int | None = None,
                    window: int | None = None, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> list[KVCache]:
        """One :class:`KVCache` per layer.

        Args:
            batch_size: B.
            max_seq_len: linear capacity; default ``config.max_seq_len``.
            window: ring mode with this many positions (constant memory, endless streams).
            device: default: the model's device.
            dtype: default: the model's dtype.
        """
        weight = self.layers[0].attention.wq.weight
        return [
            KVCache(batch_size, self.config.num_kv_heads, self.config.head_dim,
                    max_seq_len or self.config.max_seq_len, window,
                    device or weight.device, dtype or weight.dtype)
            for _ in self.layers
        ]

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | MaskFn | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """Run the stack.

        Args:
            x: ``[B, S, D]``.
            positions: long ``[S]`` or ``[B, S]`` absolute (rotary) positions; ``[S]`` with
                caches, whose positions are shared by the batch.
            mask: self-attention mask, ``True`` = may attend. A bool tensor ``[S, S_k]`` or
                ``[B, S, S_k]`` over the attended keys (the ``S`` inputs without caches, the
                slots of ``caches[i].update``'s view with them), or a :data:`MaskFn` called
                with the query and key positions (the way to combine block masks with ring
                caches). ``None``: causal in sequence order without caches, causal by position
                with them. With caches, empty slots and the ring window are always masked.
            memory: ``[B, S_mem, cross_dim]`` for cross-attention (required iff configured).
            memory_mask: bool ``[B, 1, S_mem]`` (or broadcastable to ``[B, S, S_mem]``) memory
                keys each query may attend to; ``None`` = all.
            caches: from :meth:`make_caches`; the new keys are appended and attention sees
                cached plus new positions.

        Returns:
            ``[B, S, D]``, final RMSNorm applied.
        """
        if x.ndim != 3 or x.shape[-1] != self.config.dim:
            raise ValueError(f"expected x [B, S, {self.config.dim}], got {tuple(x.shape)}")
        if positions.shape not in ((x.shape[1],), x.shape[:2]):
            raise ValueError(f"expected positions [S] or [B, S] for x {tuple(x.shape)}, got "
                             f"{tuple(positions.shape)}")
        if (memory is None) == self.config.cross_attention:
            raise ValueError("memory must be given iff the config has cross_attention")
        if caches is not None:
            if len(caches) != len(self.layers):
                raise ValueError(f"expected {len(self.layers)} caches, got {len(caches)}")
            if positions.ndim != 1:
                raise ValueError("with caches, positions must be [S] (shared by the batch)")
        rotations = self.rope.rotations(positions)
        if positions.ndim == 2:  # (B, S, Dh/2) -> broadcast over heads
            rotations = rotations.unsqueeze(1)
        for index, layer in enumerate(self.layers):
            cache = caches[index] if caches is not None else None
            x, mask, memory_mask = layer(x, rotations, positions, mask, memory, memory_mask, cache)
        return rms_norm(x, self.config.norm_eps)
