"""Sequence layouts of the streaming decoder: which input frame and which output token each
position carries, and who may attend to whom. Pure index logic, shared by training and tests.

Notation (SPEC section 1): ``S`` delayed output steps, future visibility ``t_f`` (frames), chunk
size ``k``. Position ``p`` predicts delayed step ``p``. Its token part is the embedding of step
``p - 1`` (the instrument token at ``p = 0``). Its input part is input frame ``p + t_f - 1``,
the newest frame step ``p`` may hear, or nothing when that frame does not exist (``t_f <= 0``
early on).

* ``k = 1``: one *fused* stream of ``S`` positions under a causal mask; every position carries
  both parts, so the logits of step ``s`` see input frames ``< s + t_f`` only.
* ``k > 1`` (appendix A.4): the steps of chunk ``[c, c + k)`` are all decided with the input
  horizon frozen at ``c + t_f``. The reference trains one chunk per sequence: a prefix of fused
  positions ``< c`` then ``k`` *chunk* positions that carry tokens only (the first of them also
  carries input frame ``c + t_f - 1``, which is already heard at ``c``). We train every chunk in
  one pass: ``S`` fused positions (context) followed by ``S`` chunk positions, with a block mask
  — chunk position ``p`` in chunk ``c`` sees fused positions ``< c`` and chunk positions
  ``c .. p`` — and the same rotary positions, so each chunk's logits equal the one-chunk
  formulation exactly (``tests/model/test_layout.py`` proves it through a model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stemstream.errors import ConfigError


@dataclass(frozen=True)
class Layout:
    """Per-position index tensors of one training sequence (length ``L``).

    Attributes:
        positions: long ``[L]`` rotary position (= delayed step predicted).
        token_step: long ``[L]`` delayed step whose tokens are embedded (-1: instrument token).
        input_frame: long ``[L]`` input frame fused in (-1: none).
        mask: bool ``[L, L]``, ``mask[i, j]`` = position ``i`` may attend to ``j``.
        loss: bool ``[L]`` positions whose predictions are trained.
    """

    positions: torch.Tensor
    token_step: torch.Tensor
    input_frame: torch.Tensor
    mask: torch.Tensor
    loss: torch.Tensor


def check_stream_args(future_frames: int, chunk_frames: int) -> None:
    if not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ConfigError(f"chunk size k must be an integer >= 1, got {chunk_frames!r}")
    if not isinstance(future_frames, int):
        raise ConfigError(
            f"future visibility t_f must be an integer number of frames, got {future_frames!r}"
        )


def input_frame_for(step: torch.Tensor, future_frames: int, num_input_frames: int) -> torch.Tensor:
    """Newest input frame visible at delayed step(s) ``step`` (``-1`` when none exists)."""
    frame = step + future_frames - 1
    return torch.where((frame >= 0) & (frame < num_input_frames), frame, -1)


def chunk_start(step: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    return step - step % chunk_frames


def training_layout(
    num_steps: int, future_frames: int, chunk_frames: int, num_input_frames: int
) -> Layout:
    """The all-chunks-in-one-pass layout for ``num_steps`` delayed steps."""
    check_stream_args(future_frames, chunk_frames)
    steps = torch.arange(num_steps)
    fused_input = input_frame_for(steps, future_frames, num_input_frames)
    causal = steps[None, :] <= steps[:, None]
    if chunk_frames == 1:
        return Layout(
            steps, steps - 1, fused_input, causal, torch.ones(num_steps, dtype=torch.bool)
        )
    starts = chunk_start(steps, chunk_frames)
    chunk_input = torch.where(
        steps == starts, input_frame_for(starts, future_frames, num_input_frames), -1
    )
    to_fused = steps[None, :] < starts[:, None]  # chunk position -> fused context before c
    same_chunk = (starts[None, :] == starts[:, None]) & causal
    top = torch.cat([causal, torch.zeros_like(causal)], dim=1)
    bottom = torch.cat([to_fused, same_chunk], dim=1)
    return Layout(
        positions=torch.cat([steps, steps]),
        token_step=torch.cat([steps - 1, steps - 1]),
        input_frame=torch.cat([fused_input, chunk_input]),
        mask=torch.cat([top, bottom], dim=0),
        loss=torch.cat(
            [torch.zeros(num_steps, dtype=torch.bool), torch.ones(num_steps, dtype=torch.bool)]
        ),
    )


def one_chunk_layout(
    chunk: int, num_steps: int, future_frames: int, chunk_frames: int, num_input_frames: int
) -> Layout:
    """The reference formulation for the chunk starting at step ``chunk``: fused positions
    ``< chunk`` then the chunk's token-only positions, causal mask, loss on the chunk."""
    check_stream_args(future_frames, chunk_frames)
    end = min(chunk + chunk_frames, num_steps)
    steps = torch.arange(end)
    frames = input_frame_for(steps, future_frames, num_input_frames)
    in_chunk = steps >= chunk
    frames = torch.where(in_chunk & (steps != chunk), -1, frames)
    return Layout(steps, steps - 1, frames, steps[None, :] <= steps[:, None], in_chunk)
