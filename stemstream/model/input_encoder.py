"""How the streaming decoder hears its input: a causal summary of the input latents per frame.

The paper fuses one input frame per position: position ``p`` carries frame ``p + t_f - 1``.
A model learns fast only from input placed at the position that predicts (a copy task learns
codebook 0 in 300 steps when the target frame sits at the predicting position and stays at
chance one position away), so with look-ahead (``t_f > 1``) the frame aligned with the
predicted one, frame ``p``, is 49 positions away at ``t_f = +1 s`` and barely used.

``kind = "conv"`` turns input frame ``f`` (the newest one position ``p = f - t_f + 1`` may
hear) into a causal summary of the frames ``f - R + 1 .. f``:

* the paper's projection of frame ``f`` (the decoder's ``in_proj``, passed in, so a paper
  checkpoint warm-starts losslessly),
* refined by a residual stack of causal depthwise convolutions (kernel 3, dilations 1, 2,
  4, ...) whose receptive field covers ``window`` frames: the latest onsets and harmony,
* plus, when ``t_f > 1``, a projection of the aligned frame ``f - t_f + 1`` (= ``p``; the
  *aligned tap*), added after the stack.

The taps and residual outputs start at zero, so a fresh encoder equals the paper's fusion and
training moves it away only as far as that helps. Frames before the stream's first are zero
(the convolutions pad on the left), so encoding a stream piece by piece from its start gives
exactly the offline result: frame ``f`` needs raw frames from ``max(0, f - context)`` on,
:attr:`InputEncoder.context` frames of history.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stemstream.errors import ConfigError

INPUT_ENCODERS = ("frame", "conv")


def dilations_for(window: int) -> list[int]:
    """Dilations of kernel-3 causal convolutions whose stack spans at least ``window`` frames."""
    dilations: list[int] = []
    span = 1
    while span < window:
        dilation = 2 ** len(dilations)
        dilations.append(dilation)
        span += 2 * dilation
    return dilations


class _CausalBlock(nn.Module):
    """``h + out(gelu(depthwise_causal(norm(h))))``; ``out`` starts at zero."""

    def __init__(self, dim: int, dilation: int, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.dilation = dilation
        self.norm = nn.LayerNorm(dim, **kw)
        self.depthwise = nn.Conv1d(dim, dim, 3, dilation=dilation, groups=dim, **kw)
        self.out = nn.Linear(dim, dim, **kw)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, T, D] -> [B, T, D]``, output frame ``t`` from input frames ``<= t``."""
        x = self.norm(h).transpose(1, 2)  # [B, D, T]
        x = self.depthwise(F.pad(x, (2 * self.dilation, 0)))
        return h + self.out(F.gelu(x.transpose(1, 2)))


def check_input_encoder(kind: str, window: int) -> None:
    if kind not in INPUT_ENCODERS:
        raise ConfigError(
            f"input_encoder must be one of {', '.join(INPUT_ENCODERS)}, got {kind!r}"
        )
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"input_window must be an integer >= 1 frame, got {window!r}")


class InputEncoder(nn.Module):
    """The ``conv`` encoder of the module docstring: the projected newest frame ``[B, T, D]``
    plus the aligned tap and the causal stack over the raw latents ``[B, T, D_in]``."""

    def __init__(
        self, input_dim: int, dim: int, window: int, future_frames: int, device=None, dtype=None
    ):
        super().__init__()
        check_input_encoder("conv", window)
        kw = {"device": device, "dtype": dtype}
        self.aligned_lag = max(0, future_frames - 1)
        self.aligned = None
        if self.aligned_lag:
            self.aligned = nn.Linear(input_dim, dim, bias=False, **kw)
            nn.init.zeros_(self.aligned.weight)
        self.blocks = nn.ModuleList(_CausalBlock(dim, d, **kw) for d in dilations_for(window))

    @property
    def context(self) -> int:
        """Past raw frames (before the newest) that one encoded frame depends on."""
        conv = sum(2 * block.dilation for block in self.blocks)
        return max(conv, self.aligned_lag)

    def forward(self, latents: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """``latents [B, T, D_in]``, ``projected [B, T, D]`` (frame ``t``'s own projection)
        -> ``[B, T, D]``; frame ``t`` depends on frames ``t - context .. t``."""
        h = projected
        for block in self.blocks:
            h = block(h)
        if self.aligned is not None:  # after the stack: the aligned frame arrives unblurred
            lag = self.aligned_lag
            shifted = F.pad(latents.transpose(1, 2), (lag, 0))[..., : latents.shape[1]]
            h = h + self.aligned(shifted.transpose(1, 2))
        return h
