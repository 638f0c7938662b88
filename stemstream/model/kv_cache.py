"""Key/value cache of one attention layer, with an optional ring (sliding window) mode.

Shape legend (SPEC section 1): ``B`` batch, ``Hkv`` KV heads, ``Dh`` head dim, ``s`` positions
appended by one call, ``C`` cache capacity (slots), ``S_k`` keys returned to attention.

The buffers are preallocated (``[B, Hkv, C, Dh]``) and written in place, like torchtune's and
gpt-fast's caches. Keys are stored *after* rotary embedding, each with its absolute position in
a ``[C]`` long buffer (``-1`` = empty slot). Attention builds its mask from those positions, so
the physical slot order does not matter: in ring mode (``window=W``) the cache keeps the newest
``W`` entries and overwrites the oldest, and a stream can run forever in constant memory.

The cache holds no batch-dependent positions: every row of the batch shares the same positions
(batched streams advance in lock step; padding is the mask's business).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from stemstream.errors import StemstreamError

__all__ = ["CacheOverflowError", "CacheView", "KVCache"]


class CacheOverflowError(StemstreamError):
    """More positions were appended than a (non-ring) cache can hold."""


class CacheView(NamedTuple):
    """What attention must see after :meth:`KVCache.update`.

    Attributes:
        keys: ``[B, Hkv, S_k, Dh]`` cached plus new keys (rotary embedding already applied).
        values: ``[B, Hkv, S_k, Dh]``.
        positions: long ``[S_k]`` absolute position of each key; ``-1`` marks an empty slot that
            attention must never see.
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor


class KVCache(nn.Module):
    """Preallocated key/value cache for one layer.

    Args:
        batch_size: B.
        num_kv_heads: Hkv.
        head_dim: Dh.
        max_seq_len: capacity in linear mode; appending past it raises
            :class:`CacheOverflowError`. Ignored (beyond validation) in ring mode.
        window: ``None`` for linear mode; ``W`` for ring mode, where the cache holds the newest
            ``W`` positions only and each query may attend to keys at positions ``> q - W``.
        device: buffer device.
        dtype: key/value dtype (positions are always long).
    """

    def __init__(
        self,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        max_seq_len: int,
        window: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim), ("max_seq_len", max_seq_len)):
            if value < 1:
                raise ValueError(f"KVCache {name} must be >= 1, got {value}")
        if window is not None and window < 1:
            raise ValueError(f"KVCache window must be >= 1 or None, got {window}")
        self.window = window
        capacity = window if window is not None else max_seq_len
        shape = (batch_size, num_kv_heads, capacity, head_dim)
        # Non-persistent: a model's state_dict must not depend on whether caches are attached;
        # sessions save caches explicitly through get_state().
        self.register_buffer("keys", torch.zeros(shape, device=device, dtype=dtype), False)
        self.register_buffer("values", torch.zeros(shape, device=device, dtype=dtype), False)
        self.register_buffer(
            "positions", torch.full((capacity,), -1, device=device, dtype=torch.long), False
        )
        # Kept on the device so default positions never force a host sync.
        self.register_buffer(
            "next_position", torch.zeros((), device=device, dtype=torch.long), False
        )
        self.length = 0  # entries ever written (minus rollbacks); host int: drives slicing
        self.filled = 0  # leading slots ever written; attention never needs slots past it

    @property
    def capacity(self) -> int:
        """C, the number of slots."""
        return self.keys.shape[2]

    @property
    def num_cached(self) -> int:
        """Entries attention currently sees (at most :attr:`capacity`)."""
        return min(self.length, self.capacity)

    def reset(self) -> None:
        """Empty the cache. Buffers are zeroed too so no content leaks into a new session."""
        self.keys.zero_()
        self.values.zero_()
        self.positions.fill_(-1)
        self.next_position.zero_()
        self.length = 0
        self.filled = 0

    def update(
        self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor | None = None
    ) -> CacheView:
        """Append ``s`` new entries and return everything attention must see.

        Args:
            k: ``[B, Hkv, s, Dh]`` new keys, rotary embedding already applied.
            v: ``[B, Hkv, s, Dh]`` new values.
            positions: long ``[s]`` absolute positions of the new entries; default: continue
                after the last appended position (starting at 0).

        Returns:
            A :class:`CacheView`. In linear mode and for single-position ring updates it views
            the buffers (no copy). A multi-position ring update that would overwrite entries
            still needed by its own earlier queries returns the old ring concatenated with the
            new entries (``S_k = C + s``); the window mask then restricts each query to its
            own ``W`` most recent positions.

        Raises:
            CacheOverflowError: linear mode and more than ``max_seq_len`` entries in total.
        """
        if k.shape != v.shape or k.ndim != 4 or k.shape[:2] != self.keys.shape[:2]:
            raise ValueError(
                f"expected keys/values [B, Hkv, s, Dh] = [{self.keys.shape[0]}, "
                f"{self.keys.shape[1]}, s, {self.keys.shape[3]}], got {tuple(k.shape)} and "
                f"{tuple(v.shape)}"
            )
        s = k.shape[2]
        if positions is None:
            positions = self.next_position + torch.arange(s, device=self.positions.device)
        elif positions.shape != (s,):
            raise ValueError(f"expected positions [{s}], got {tuple(positions.shape)}")
        capacity = self.capacity
        start = self.length
        if self.window is None and start + s > capacity:
            raise CacheOverflowError(
                f"KV cache overflow: {start} cached + {s} new positions exceed its capacity of "
                f"{capacity}; use a larger max_seq_len or a ring cache (window=...)"
            )
        self.next_position.copy_(positions[-1] + 1)
        self.length = start + s
        if start + s <= capacity:
            # Nothing is overwritten: linear mode, or a ring that has not wrapped yet.
            self._write(slice(start, start + s), k, v, positions)
            # After a ring rollback, slots past `start + s` may still hold visible entries.
            self.filled = end = max(self.filled, start + s)
            return CacheView(self.keys[:, :, :end], self.values[:, :, :end], self.positions[:end])
        self.filled = capacity
        if s == 1:
            # The overwritten slot holds position q - W, which the query may not see anyway.
            slot = start % capacity
            self._write(slice(slot, slot + 1), k, v, positions)
            return CacheView(self.keys, self.values, self.positions)
        # A block would overwrite keys its own earlier queries still need: attend over old ring
        # + new block, then keep the newest `capacity` of the block.
        view = CacheView(
            torch.cat([self.keys, k], dim=2),
            torch.cat([self.values, v], dim=2),
            torch.cat([self.positions, positions]),
        )
        keep = min(s, capacity)
        slots = (start + s - keep + torch.arange(keep, device=self.positions.device)) % capacity
        self.keys.index_copy_(2, slots, k[:, :, s - keep :])
        self.values.index_copy_(2, slots, v[:, :, s - keep :])
        self.positions.index_copy_(0, slots, positions[s - keep :])
        return view

    def _write(self, slots: slice, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        self.keys[:, :, slots] = k
        self.values[:, :, slots] = v
        self.positions[slots] = pos

    def rollback(self, num_positions: int) -> None:
        """Forget the ``num_positions`` most recently appended entries.

        Used to discard speculative positions (e.g. the token-only chunk positions of the
        ``k > 1`` streaming decoder). In ring mode, entries the rolled-back ones overwrote are
        not restored: the visible history is shorter until the ring refills. Callers needing an
        exact window after rollback can allocate ``window + k`` slots and pass a window mask.
        """
        if not 0 <= num_positions <= self.num_cached:
            raise ValueError(
                f"cannot roll back {num_positions} positions; {self.num_cached} are cached"
            )
        capacity = self.capacity
        for index in range(self.length - num_positions, self.length):
            self.positions[index % capacity] = -1
        self.length -= num_positions
        self.next_position.copy_(self.positions.max() + 1)

    def get_state(self) -> dict[str, torch.Tensor]:
        """Copies of everything needed to continue bit-identically (see :meth:`set_state`)."""
        return {
            "keys": self.keys.clone(),
            "values": self.values.clone(),
            "positions": self.positions.clone(),
            "next_position": self.next_position.clone(),
            "length": torch.tensor(self.length, dtype=torch.long),
        }

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`get_state` output into this cache's buffers (same shapes required)."""
        expected = {"keys", "values", "positions", "next_position", "length"}
        if set(state) != expected:
            raise ValueError(f"KVCache state needs keys {sorted(expected)}, got {sorted(state)}")
        for name in ("keys", "values", "positions", "next_position"):
            buffer = getattr(self, name)
            if state[name].shape != buffer.shape:
                raise ValueError(
                    f"KVCache state {name!r} has shape {tuple(state[name].shape)}, this cache "
                    f"needs {tuple(buffer.shape)}"
                )
            buffer.copy_(state[name])
        self.length = int(state["length"])
        written = torch.nonzero(self.positions >= 0)
        self.filled = int(written.max()) + 1 if len(written) else 0
