"""Many streams of one streaming decoder advanced in one batched forward (issue 18: a server
holds many sessions, and at batch 1 every weight matrix is read for one row: a GEMV; a batch
of sessions turns it into a GEMM at about the same cost).

A :class:`StreamPool` owns the KV caches of up to ``rows`` streams in one buffer
``[layers, 2, rows, Hkv, C, Dh]`` with per-row slot positions ``[rows, C]``. A stream joins
with :meth:`StreamPool.adopt`: its :class:`~stemstream.model.streaming.GenerationState`'s
caches are re-bound to views of a free row, so everything that reads or writes them (the eager
path, a compiled decode step, snapshots) keeps working on that row. Streams may sit at
different positions, ring slots and input frames: :meth:`StreamPool.step` runs one position of
any subset of rows through :class:`~stemstream.model.decode_step.DecodeStep` with per-row
positions, slots, rotations and input windows, and writes each row's new cache entry.

Each row samples with its own sampling settings and generator, so a batch of streams yields
exactly what each yields alone (greedy: identical tokens; the logits agree to float rounding,
as a GEMM and a GEMV may sum in different orders).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from stemstream.errors import ConfigError
from stemstream.guidance import format_guidance
from stemstream.model.decode_step import NO_WINDOW, DecodeStep
from stemstream.model.kv_cache import CacheOverflowError
from stemstream.model.sampling import (
    SamplingConfig,
    guided_logits,
    sample_streams,
)
from stemstream.model.streaming import GenerationState, StreamingDecoder


@dataclass
class StreamStep:
    """One row's next position: its state, the input heard so far (``[1, D_in, T']`` from
    stream frame ``input_offset``), whether the input has ended, and how to sample."""

    state: GenerationState
    input_latents: torch.Tensor
    input_offset: int = 0
    input_complete: bool = False
    sampling: SamplingConfig | None = None
    generator: torch.Generator | None = None


class StreamPool:
    """KV caches of up to ``rows`` single streams (batch 1 each) of ``model`` in one buffer;
    ``window`` is the ring size every stream uses (see the module docstring); ``step``: a
    compiled per-row decode step (:func:`stemstream.model.routes.rows_step`) to run instead
    of the eager :class:`DecodeStep`."""

    def __init__(self, model: StreamingDecoder, rows: int, window: int,
                 step: torch.nn.Module | None = None) -> None:
        if rows < 1:
            raise ConfigError(f"a stream pool needs >= 1 rows, got {rows}")
        if model.config.chunk_frames != 1:
            raise ConfigError(
                f"batched streams need k = 1 (one position per step); this model has "
                f"k = {model.config.chunk_frames}: run its sessions one by one"
            )
        self.model = model
        self.window = window
        self.step_module = step if step is not None else DecodeStep(model)
        cfg = model.backbone.config
        param = model.no_input
        shape = (len(model.backbone.layers), 2, rows, cfg.num_kv_heads, window, cfg.head_dim)
        self.kv = torch.zeros(shape, dtype=param.dtype, device=param.device)
        self.positions = torch.full((rows, window), -1, dtype=torch.long, device=param.device)
        self.next_position = torch.zeros(rows, dtype=torch.long, device=param.device)
        self.owner: list[GenerationState | None] = [None] * rows

    @property
    def rows(self) -> int:
        return len(self.owner)

    @property
    def free_rows(self) -> int:
        return self.owner.count(None)

    def adopt(self, state: GenerationState) -> int:
        """Move a stream into free rows (its cache contents come along) and return its first
        row. The state must be a single stream (batch 1) with a ring of :attr:`window`
        slots; a guided one takes two adjacent rows (with and without its input)."""
        caches = state.caches
        if state.inst.shape[0] != 1:
            raise ConfigError("a stream pool holds single streams (batch 1)")
        if caches[0].window != self.window or caches[0].capacity != self.window:
            raise ConfigError(f"a stream pool holds streams with a ring of {self.window} "
                              f"slots, this one has {caches[0].capacity}")
        need = 2 if state.guided else 1
        free = [r for r in range(self.rows - need + 1)
                if all(o is None for o in self.owner[r : r + need])]
        if not free:
            raise ConfigError(f"the stream pool is full ({self.rows} rows; a guided stream "
                              "takes two)")
        row = free[0]
        kv = self.kv[:, :, row : row + need]  # [layers, 2, need, Hkv, C, Dh]
        for layer, cache in enumerate(caches):
            kv[layer, 0].copy_(cache.keys)
            kv[layer, 1].copy_(cache.values)
        self.positions[row : row + need].copy_(caches[0].positions)
        self.next_position[row : row + need].copy_(caches[0].next_position)
        views = [kv[layer, j] for layer in range(len(caches)) for j in (0, 1)]
        for layer, cache in enumerate(caches):
            cache.keys, cache.values = views[2 * layer], views[2 * layer + 1]
            cache.positions = self.positions[row]
            cache.next_position = self.next_position[row]
            cache.stacked = kv  # stack_caches() sees the row as already stacked
        caches[0].stacked_views = views
        self.owner[row : row + need] = [state] * need
        return row

    def release(self, state: GenerationState) -> None:
        """Free the row of ``state`` (which keeps private copies of its caches, so it stays
        usable alone) and zero it, so nothing leaks into the next stream."""
        row = self.row_of(state)
        need = 2 if state.guided else 1
        for cache in state.caches:
            cache.keys, cache.values = cache.keys.clone(), cache.values.clone()
            cache.positions = cache.positions.clone()
            cache.next_position = cache.next_position.clone()
            cache.stacked = None
        self.kv[:, :, row : row + need].zero_()
        self.positions[row : row + need].fill_(-1)
        self.next_position[row : row + need].zero_()
        self.owner[row : row + need] = [None] * need

    def row_of(self, state: GenerationState) -> int:
        for row, owner in enumerate(self.owner):
            if owner is state:
                return row
        raise ConfigError("this stream is not in the pool")

    @torch.no_grad()
    def step(self, streams: Sequence[StreamStep]) -> list[torch.Tensor]:
        """Advance each stream by one position in one batched forward; return each one's
        delayed tokens ``[1, K]`` (appended to its state, as
        :meth:`StreamingDecoder.generate_chunk` does at ``k = 1``)."""
        if not streams:
            return []
        model, cfg = self.model, self.model.config
        rows, tokens, windows, valids, has_input, steps, insts = [], [], [], [], [], [], []
        for item in streams:
            state = item.state
            sampling = item.sampling or SamplingConfig()
            if sampling.guided and not state.guided:
                raise ConfigError(f"input guidance {format_guidance(sampling.guidance)} needs a "
                                  "stream made with new_state(..., guided=True)")
            row = self.row_of(state)
            step = state.step
            need = step + cfg.future_frames
            heard = item.input_offset + item.input_latents.shape[-1]
            if need > heard and not item.input_complete:
                raise ConfigError(f"step {step} needs {need} input frames "
                                  f"(t_f = {cfg.future_frames}), got {heard}")
            cache = state.caches[0]
            if cache.window is None and cache.length >= cache.capacity:
                raise CacheOverflowError("KV cache overflow")
            window, valid, hears = model.step_window(
                item.input_latents, step + cfg.future_frames - 1, item.input_offset
            )
            # a guided stream's second row: the same stream hearing nothing
            for half in range(2 if state.guided else 1):
                rows.append(row + half)
                tokens.append(model.previous_tokens(state, step))
                insts.append(state.inst)
                windows.append(window)
                valids.append(valid)
                has_input.append(hears and half == 0)
                steps.append(step)
        device = self.kv.device
        rows_t = torch.tensor(rows, device=device)
        steps_t = torch.tensor(steps, device=device)
        slots_t = torch.tensor([self.owner[r].caches[0].length % self.window for r in rows],
                               device=device)
        contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
        if contiguous:  # views, no copy
            lo, hi = rows[0], rows[0] + len(rows)
            kv, slot_positions = self.kv[:, :, lo:hi], self.positions[lo:hi]
        else:
            kv, slot_positions = self.kv[:, :, rows_t], self.positions[rows_t]
        caches = [kv[layer, j] for layer in range(kv.shape[0]) for j in (0, 1)]
        rotation = torch.view_as_real(model.backbone.rope.rotations(steps_t)).contiguous()
        logits, new = self.step_module(
            torch.cat(tokens),
            torch.cat(insts),
            torch.cat(windows).contiguous(),
            torch.stack(valids),
            torch.tensor(has_input, device=device),
            rotation,
            steps_t,
            slots_t,
            torch.tensor(self.window or NO_WINDOW, device=device),
            slot_positions.contiguous(),
            [cache.contiguous() for cache in caches],
        )
        # new: [layers, 2, n, Hkv, Dh] -> each row's slot
        self.kv[:, :, rows_t, :, slots_t] = new.permute(2, 0, 1, 3, 4)
        self.positions[rows_t, slots_t] = steps_t
        self.next_position[rows_t] = steps_t + 1
        stream_logits, settings, index = [], [], 0
        for item in streams:
            state = item.state
            sampling = item.sampling or SamplingConfig()
            for cache in state.caches:
                cache.length += 1
                cache.filled = max(cache.filled, int(slots_t[index]) + 1)
            step_logits = logits[index : index + 1]
            if state.guided:
                step_logits = guided_logits(step_logits, logits[index + 1 : index + 2],
                                            sampling.guidance)
            index += 2 if state.guided else 1
            stream_logits.append(step_logits)
            settings.append((sampling.temperature, sampling.top_k))
        # one top-k for all streams, each drawing from its own generator (as alone)
        tokens = sample_streams(stream_logits, settings, [item.generator for item in streams],
                                valid_vocab=cfg.codebook_size)
        out = []
        for item, chosen in zip(streams, tokens, strict=True):
            out.append(model.append_tokens(item.state, chosen, item.state.step))
            item.state.step += 1
        return out
