"""One generation position of the streaming decoder as a pure function of tensors, so a
compiler can capture it whole (issue 17: on a slow CPU a decode step is per-op overhead, not
arithmetic).

:meth:`StreamingDecoder.generate_chunk` runs each single-position step (every step at
``k = 1``; the token-only steps of a chunk at ``k > 1``) through :class:`DecodeStep` when a
route is attached (:func:`stemstream.model.routes.accelerate`). The step computes, for one
position: token embeddings, the input encoder over its fixed window of raw input frames,
the fusion, every block with its KV cache and the heads' logits. Sampling, the delay
pattern's pads and multi-position calls (a ``k > 1`` chunk's re-fed positions) stay eager.

Shapes are static so the graph is captured once: the cache is each layer's whole
preallocated keys and values, ``[B, Hkv, C, Dh]`` each (views of one stacked buffer), whose
slots attention masks by the absolute positions they hold (as
:class:`~stemstream.model.kv_cache.KVCache` does). The step does not write the cache; it
returns the new keys and values, and the caller stores them (one copy per step), so the graph
is functional and exportable.

The KV caches of a :class:`~stemstream.model.streaming.GenerationState` are re-bound to views
of one stacked buffer (:func:`stack_caches`), with one positions buffer that all layers share
(they always hold the same positions), so the eager path and the step read and write the same
memory and can be mixed freely within a stream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stemstream.model.kv_cache import KVCache
from stemstream.model.transformer import rms_norm

NO_WINDOW = 2**62  # the "window" of a linear cache: every written slot is visible


class DecodeStep(nn.Module):
    """See the module docstring. ``model`` is a :class:`StreamingDecoder` (not copied: the
    step reads its weights)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.frames = model.input_context + 1  # raw input frames one position hears

    def forward(
        self,
        tokens: torch.Tensor,
        inst: torch.Tensor,
        window: torch.Tensor,
        frame_valid: torch.Tensor,
        has_input: torch.Tensor,
        rotation: torch.Tensor,
        position: torch.Tensor,
        slot: torch.Tensor,
        cache_window: torch.Tensor,
        slot_positions: torch.Tensor,
        caches: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One position (of every row; per-row arguments for rows at different positions are
        described in brackets).

        Args:
            tokens: long ``[B, K]`` the previous step's delayed tokens (``-1``: the
                instrument position).
            inst: long ``[B]`` instrument classes.
            window: ``[B, F, D_in]`` raw input latents of frames ``f - F + 1 .. f`` (``f``
                the newest visible frame, ``F`` = :attr:`frames`).
            frame_valid: bool ``[F]`` (``[B, F]``): frames before the stream's first are
                ``False``.
            has_input: bool ``[B]`` (or ``[]``): ``False`` where the row's position hears no
                input (the unconditional half of a guided stream hears none).
            rotation: ``[Dh/2, 2]`` (``[B, Dh/2, 2]``) the position's rotary (cos, sin) pairs.
            position: long ``[]`` (``[B]``) the position.
            slot: long ``[]`` (``[B]``) the cache slot the new entry will occupy.
            cache_window: long ``[]`` the ring's window (:data:`NO_WINDOW` for a linear cache).
            slot_positions: long ``[C]`` (``[B, C]``) positions the slots hold before this
                step (-1 empty).
            caches: per layer its cached keys (rotated) and values, ``[B, Hkv, C, Dh]``
                each: ``[keys_0, values_0, keys_1, ...]``.

        Returns:
            logits ``[B, K, V]`` and the new entries ``[layers, 2, B, Hkv, Dh]``.
        """
        model = self.model
        heard = self._heard(window, frame_valid)  # [B, D]
        emb = model.embed_tokens(tokens[:, :, None], inst)  # [B, 1, D]
        x = model.fuse(heard[:, None], has_input[..., None] if has_input.dim() else has_input,
                       emb)
        slots = torch.arange(slot_positions.shape[-1], device=slot_positions.device)
        position, slot = position[..., None], slot[..., None]  # [1] or [B, 1]
        visible = (
            (slot_positions >= 0)
            & (slot_positions <= position)
            & (slot_positions > position - cache_window)
            & (slots != slot)
        )
        if visible.dim() == 2:  # per row: [B, 1, 1, C] against the scores [B, Hkv, G, C]
            visible = visible[:, None, None]
        backbone = model.backbone
        pair_rotation = _pair_rotation(rotation)  # once for every layer
        new = []
        for index, block in enumerate(backbone.layers):
            attended, k, v = self._attend(
                block.attention, rms_norm(x, block.eps), pair_rotation, caches[2 * index],
                caches[2 * index + 1], visible
            )
            x = x + attended
            x = x + block.feed_forward(rms_norm(x, block.eps))
            new.append(torch.stack([k, v]))
        hidden = rms_norm(x, backbone.config.norm_eps)
        return model.logits(hidden)[:, 0], torch.stack(new)

    def _heard(self, window: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """What the position hears ``[B, D]``: :meth:`StreamingDecoder.condition` of the
        window's last frame, frames before the stream zeroed as the encoder's padding is."""
        model = self.model
        window = model.input_view(window)
        projected = model.in_proj(window)
        encoder = model.input_encoder
        if encoder is None:
            return projected[:, -1]
        mask = (valid if valid.dim() == 2 else valid[None])[..., None]  # [1 or B, F, 1]
        h = projected
        frames = window.shape[1]
        for block in encoder.blocks:
            # the depthwise causal conv as three shifted multiply-adds: a compiler fuses
            # them into one loop (a conv call costs more than its arithmetic here)
            x = F.pad(block.norm(h) * mask, (0, 0, 2 * block.dilation, 0))  # [B, T+2d, D]
            weight = block.depthwise.weight[:, 0]  # [D, 3]
            x = block.depthwise.bias + sum(
                x[:, tap * block.dilation : tap * block.dilation + frames] * weight[:, tap]
                for tap in range(3)
            )
            h = h + block.out(F.gelu(x))
        h = h[:, -1]
        if encoder.aligned is not None:
            lag = encoder.aligned_lag
            aligned = window[:, -1 - lag] * mask[:, -1 - lag]
            h = h + encoder.aligned(aligned)
        return h

    @staticmethod
    def _attend(
        attention: nn.Module,
        h: torch.Tensor,
        rotation: tuple[torch.Tensor, torch.Tensor],
        keys: torch.Tensor,
        values: torch.Tensor,
        visible: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention of one position over the cache's visible slots plus itself.
        ``h [B, 1, D]``, ``keys``, ``values [B, Hkv, C, Dh]`` ->
        ``([B, 1, D], k, v [B, Hkv, Dh])``."""
        batch = h.shape[0]
        heads, kv_heads, head_dim = attention.num_heads, attention.num_kv_heads, attention.head_dim
        group = heads // kv_heads
        q = attention.wq(h).view(batch, kv_heads, group, head_dim)
        k, v = attention.wkv(h).split(attention.kv_width, dim=-1)
        k = k.view(batch, kv_heads, head_dim)
        v = v.view(batch, kv_heads, head_dim)
        rotation_q = rotation_k = rotation
        if rotation[0].dim() == 3:  # per row [B, Dh/2, .]: broadcast over the heads
            rotation_q = tuple(r[:, None, None] for r in rotation)
            rotation_k = tuple(r[:, None] for r in rotation)
        q = _rotate(rms_norm(q, attention.eps, attention.q_norm), rotation_q)
        k = _rotate(rms_norm(k, attention.eps, attention.k_norm), rotation_k)
        scale = 1.0 / math.sqrt(head_dim)
        old = torch.matmul(q, keys.transpose(-1, -2)) * scale  # [B, Hkv, G, C]
        old = old.masked_fill(~visible, float("-inf"))
        own = (q * k[:, :, None]).sum(-1, keepdim=True) * scale  # [B, Hkv, G, 1]
        probs = torch.softmax(torch.cat([old, own], dim=-1), dim=-1)
        out = torch.matmul(probs[..., :-1], values) + probs[..., -1:] * v[:, :, None]
        return attention.wo(out.reshape(batch, 1, heads * head_dim)), k, v


def _rotate(x: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary embedding of ``x [..., Dh]`` over adjacent pairs ``(a, b)``: the real form of
    :meth:`RotaryEmbedding.apply`, ``(a cos - b sin, b cos + a sin)`` =
    ``pairs * cos + flip(pairs) * (-sin, sin)`` (few graph nodes), with ``rotation`` from
    :func:`_pair_rotation`."""
    cos, signed_sin = rotation
    pairs = x.unflatten(-1, (-1, 2))
    return (pairs * cos + pairs.flip(-1) * signed_sin).flatten(-2)


def _pair_rotation(rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., Dh/2, 2]`` (cos, sin) -> ``cos [..., Dh/2, 1]`` and ``(-sin, sin)
    [..., Dh/2, 2]``."""
    sign = torch.tensor([-1.0, 1.0], dtype=rotation.dtype, device=rotation.device)
    return rotation[..., :1], rotation[..., 1:] * sign


def stack_caches(caches: list[KVCache]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Re-bind ``caches`` (one per layer, same shapes) to views of one stacked buffer
    ``[layers, 2, B, Hkv, C, Dh]`` holding their contents, and to one shared positions
    buffer; returns the stacked buffer and the step's ``caches`` argument (its views).
    Idempotent."""
    first = caches[0]
    stacked = getattr(first, "stacked", None)
    if stacked is not None and all(getattr(c, "stacked", None) is stacked for c in caches):
        return stacked, first.stacked_views
    stacked = torch.stack([torch.stack([c.keys, c.values]) for c in caches])
    positions, next_position = first.positions, first.next_position
    for index, cache in enumerate(caches):
        if not torch.equal(cache.positions, positions):
            raise ValueError("the caches of one stream must hold the same positions")
        cache.keys, cache.values = stacked[index, 0], stacked[index, 1]
        cache.positions, cache.next_position = positions, next_position
        cache.stacked = stacked
    first.stacked_views = [view for pair in stacked for view in pair]
    return stacked, first.stacked_views
