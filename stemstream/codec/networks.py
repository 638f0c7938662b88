"""The DAC generator's encoder and decoder networks (descript-audio-codec layout).

Module nesting and attribute names follow descript-audio-codec 1.0.0 (``dac/model/dac.py``)
so state dicts load unchanged: ``encoder.block.<i>...``, ``decoder.model.<i>...``. The causal
variant follows the causal fork used by Wu et al. (``slSeanWU/descript-audio-codec``): each
padded convolution becomes ``LeftPad`` + unpadded convolution (two ``Sequential`` entries,
which shifts the indices of later entries -- causal and non-causal checkpoints therefore
have different keys), and transposed convolutions lose their padding, keeping ``stride``
surplus samples per layer that the :class:`~stemstream.codec.dac.DAC` trims at the end.

Shapes: ``[B, C, L]``; the encoder maps ``[B, 1, N]`` to ``[B, D, N / hop]``.
"""

from __future__ import annotations

import math

import torch

from stemstream.codec.base import StreamState
from stemstream.codec.layers import (
    Chain,
    Snake1d,
    StreamingModule,
    Tanh,
    WNConv1d,
    WNConvTranspose1d,
    conv_layers,
)

DILATIONS = (1, 3, 9)


class ResidualUnit(StreamingModule):
    """``x + conv1x1(snake(conv7_dilated(snake(x))))``; length-preserving."""

    def __init__(self, dim: int, dilation: int = 1, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.block = Chain(
            Snake1d(dim),
            *conv_layers(causal, dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, L] -> [B, C, L]``."""
        y = self.block(x)
        crop = x.shape[-1] - y.shape[-1]
        if crop > 0:  # never with the paddings used here; kept from the reference
            x = x[..., crop:] if self.causal else x[..., crop // 2 : x.shape[-1] - crop // 2]
        return x + y

    def stream_step(self, x: torch.Tensor, state: StreamState, key: str) -> torch.Tensor:
        y = self.block.stream_step(x, state, f"{key}.block")
        return x + y

    def stream_flush(self, state: StreamState, key: str) -> torch.Tensor | None:
        if self.block.stream_flush(state, f"{key}.block") is not None:
            raise ValueError("a residual branch cannot emit a flush tail")
        return None


class EncoderBlock(StreamingModule):
    """Three residual units at ``dim // 2`` channels, then a strided conv to ``dim``."""

    def __init__(self, dim: int, stride: int, causal: bool = False) -> None:
        super().__init__()
        half = dim // 2
        self.block = Chain(
            *(ResidualUnit(half, dilation, causal) for dilation in DILATIONS),
            Snake1d(half),
            *conv_layers(
                causal, half, dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2)
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim // 2, L] -> [B, dim, L / stride]``."""
        return self.block(x)

    def stream_step(self, x: torch.Tensor, state: StreamState, key: str) -> torch.Tensor:
        return self.block.stream_step(x, state, f"{key}.block")


class Encoder(StreamingModule):
    """Waveform to continuous latent: conv, strided blocks doubling channels, conv."""

    def __init__(
        self, dim: int, rates: tuple[int, ...], latent_dim: int, causal: bool = False
    ) -> None:
        super().__init__()
        layers: list[StreamingModule] = conv_layers(causal, 1, dim, kernel_size=7, padding=3)
        for stride in rates:
            dim *= 2
            layers.append(EncoderBlock(dim, stride, causal))
        layers += [Snake1d(dim), *conv_layers(causal, dim, latent_dim, kernel_size=3, padding=1)]
        self.block = Chain(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, N] -> [B, D, N / hop]`` (``N`` a multiple of the hop)."""
        return self.block(x)

    def stream_step(self, x: torch.Tensor, state: StreamState, key: str) -> torch.Tensor:
        return self.block.stream_step(x, state, f"{key}.block")


class DecoderBlock(StreamingModule):
    """Snake, transposed conv upsampling by ``stride``, three residual units."""

    def __init__(self, in_dim: int, out_dim: int, stride: int, causal: bool = False) -> None:
        super().__init__()
        padding = 0 if causal else math.ceil(stride / 2)
        self.block = Chain(
            Snake1d(in_dim),
            WNConvTranspose1d(in_dim, out_dim, 2 * stride, stride, padding),
            *(ResidualUnit(out_dim, dilation, causal) for dilation in DILATIONS),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_dim, L] -> [B, out_dim, ~L * stride]`` (``(L + 1) * stride`` if causal)."""
        return self.block(x)

    def stream_step(self, x: torch.Tensor, state: StreamState, key: str) -> torch.Tensor:
        return self.block.stream_step(x, state, f"{key}.block")

    def stream_flush(self, state: StreamState, key: str) -> torch.Tensor | None:
        return self.block.stream_flush(state, f"{key}.block")


class Decoder(StreamingModule):
    """Latent to waveform: conv, upsampling blocks halving channels, conv, tanh."""

    def __init__(
        self, latent_dim: int, dim: int, rates: tuple[int, ...], causal: bool = False
    ) -> None:
        super().__init__()
        layers: list[StreamingModule] = conv_layers(
            causal, latent_dim, dim, kernel_size=7, padding=3
        )
        out_dim = dim
        for i, stride in enumerate(rates):
            in_dim, out_dim = dim // 2**i, dim // 2 ** (i + 1)
            layers.append(DecoderBlock(in_dim, out_dim, stride, causal))
        layers += [
            Snake1d(out_dim),
            *conv_layers(causal, out_dim, 1, kernel_size=7, padding=3),
            Tanh(),
        ]
        self.model = Chain(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, T] -> [B, 1, ~T * hop]`` (longer when causal; the codec trims it)."""
        return self.model(x)

    def stream_step(self, x: torch.Tensor, state: StreamState, key: str) -> torch.Tensor:
        return self.model.stream_step(x, state, f"{key}.model")

    def stream_flush(self, state: StreamState, key: str) -> torch.Tensor | None:
        return self.model.stream_flush(state, f"{key}.model")
