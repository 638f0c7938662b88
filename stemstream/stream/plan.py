"""The timing of a stream, derived once (SPEC section 1): what a model with future visibility
``t_f`` and chunk size ``k`` over ``K`` delayed codebooks can promise at output latency ``L``.

Every other module (the session, its report, the benchmark, live play) reads these quantities
from a :class:`StreamPlan` instead of re-deriving them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_CODEC_BLOCK = 8  # frames


@dataclass(frozen=True)
class StreamPlan:
    """``t_f`` = ``future_frames``, ``k`` = ``chunk_frames``, ``K`` = ``num_codebooks``, the
    codec's ``frame_rate_hz`` and the output delay ``latency_s`` (``L``)."""

    future_frames: int
    chunk_frames: int
    num_codebooks: int
    frame_rate_hz: float
    latency_s: float = 0.0

    @classmethod
    def of(cls, model_config: Any, frame_rate_hz: float, latency_s: float = 0.0) -> StreamPlan:
        """The plan of a streaming model's config (its ``t_f``, ``k`` and ``K``)."""
        return cls(model_config.future_frames, model_config.chunk_frames,
                   model_config.num_codebooks, frame_rate_hz, latency_s)

    @property
    def frame_seconds(self) -> float:
        return 1.0 / self.frame_rate_hz

    @property
    def recency_gap_frames(self) -> float:
        """The mean ``(t - c) - t_f`` over a chunk's frames: how far, on average, a decided
        frame lies beyond the newest input it heard (SPEC section 1)."""
        return (self.chunk_frames - 1) / 2 - self.future_frames

    @property
    def lag_frames(self) -> int:
        """Frames between a frame's start and the newest input its last codebook needs: frame
        ``t`` is complete at step ``t + K - 1``, which hears input up to ``t + t_f + K - 2``."""
        return self.future_frames + self.num_codebooks - 1

    @property
    def min_latency_s(self) -> float:
        """The output delay ``L`` below which deadlines are missed even with free compute."""
        return max(0, self.lag_frames) * self.frame_seconds

    @property
    def codec_block_frames(self) -> int:
        """Frames per codec call that the latency budget allows: holding input and output for
        a block of ``n`` frames delays a frame by up to ``2 (n - 1)`` frames, given at most
        half of the slack ``L`` leaves beyond the model's own lag (at least 1; at most
        :data:`MAX_CODEC_BLOCK`, past which a call's overhead is already shared out)."""
        slack = self.latency_s / self.frame_seconds - max(0, self.lag_frames)
        return min(MAX_CODEC_BLOCK, max(1, 1 + int(slack // 4)))

    @property
    def in_time_future_frames(self) -> int:
        """The largest ``t_f`` a model may be trained with to play in time (``L = 0``)."""
        return -self.num_codebooks
