"""Convolution building blocks of the DAC generator, offline and streaming.

Every module here is a :class:`StreamingModule`: besides ``forward`` (whole signals) it has
``stream_step(x, state, key)``, which takes the next block of a signal and returns the part
of the output that block makes final, keeping what it needs from the past in ``state`` (a
flat ``{name: tensor}`` dict, so a stream can be saved and restored), and ``stream_flush``,
which ends the stream and returns what offline processing would still emit.

Streaming requires the causal layout: a :class:`LeftPad` before a padding-free convolution
(the causal DAC of Wu et al.) and transposed convolutions without padding. Concretely:

- a causal convolution keeps the last ``(kernel - 1) * dilation`` input samples (plus, when
  strided, the samples of an unfinished stride);
- a transposed convolution keeps the ``kernel - stride`` output samples still awaiting
  overlap-add contributions from the next input frame; ``stream_flush`` emits them.

Weight-normalised convolutions store ``weight_g`` / ``weight_v`` like
``torch.nn.utils.weight_norm`` (the parameter names of descript-audio-codec checkpoints).
Shapes: ``[B, C, L]`` (batch, channels, time steps at the layer's rate).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stemstream.codec.base import StreamState


class PointwiseConv1d(nn.Conv1d):
    """A kernel-1 ``nn.Conv1d`` (same parameters, so checkpoints are interchangeable) that
    runs as a matrix product: on CPU, conv1d with kernel 1 goes through a slow im2col path
    whose per-call cost dominates the few-frame blocks of streaming."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, T] -> [B, C_out, T]``."""
        return F.linear(x.transpose(1, 2), self.weight[:, :, 0], self.bias).transpose(1, 2)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, T] -> [B*T, C_out]`` (frames as rows), without a transpose back."""
        return F.linear(x.transpose(1, 2), self.weight[:, :, 0], self.bias).reshape(
            -1, self.out_channels
        )


def _empty(x: torch.Tensor, channels: int) -> torch.Tensor:
    return x.new_zeros(x.shape[0], channels, 0)


class StreamingModule(nn.Module):
    """A module that can also run block by block (stateless by default)."""

    def stream_step(self, x: torch.Tensor, state: StreamState, key: str) -> torch.Tensor:
        """Process the next block ``x`` ``[B, C, n]``; return the output it makes final."""
        return self(x)

    def stream_flush(self, state: StreamState, key: str) -> torch.Tensor | None:
        """End of stream: the output offline processing emits beyond the streamed part."""
        return None


class Chain(nn.Sequential, StreamingModule):
    """``nn.Sequential`` (same state-dict keys) whose children stream in order."""

    def stream_step(self, x: torch.Tensor, state: StreamState, key: str) -> torch.Tensor:
        for name, child in self.named_children():
            x = child.stream_step(x, state, f"{key}.{name}")
        return x

    def stream_flush(self, state: StreamState, key: str) -> torch.Tensor | None:
        # A child's tail flows through the children after it, then they add their own.
        pending: torch.Tensor | None = None
        for name, child in self.named_children():
            child_key = f"{key}.{name}"
            if pending is not None:
                pending = child.stream_step(pending, state, child_key)
            tail = child.stream_flush(state, child_key)
            if tail is not None:
                pending = tail if pending is None else torch.cat([pending, tail], dim=-1)
        return pending


class Snake1d(StreamingModule):
    """Snake activation ``x + sin(alpha * x)^2 / (alpha + 1e-9)`` with per-channel ``alpha``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, L] -> [B, C, L]``."""
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class Tanh(StreamingModule):
    """``tanh`` (parameter-free, so it does not change state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


class LeftPad(StreamingModule):
    """Zero padding on the left only (the causal reference's ``nn.ZeroPad1d((p, 0))``).

    Streaming: the zeros precede the first block; later blocks pass through.
    """

    def __init__(self, padding: int) -> None:
        super().__init__()
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, L] -> [B, C, padding + L]``."""
        return F.pad(x, (self.padding, 0))

    def stream_step(self, x: torch.Tensor, state: StreamState, key: str) -> torch.Tensor:
        if key in state:
            return x
        state[key] = torch.ones((), dtype=torch.bool)
        return self(x)

    def extra_repr(self) -> str:
        return f"padding={self.padding}"


class WNConv1d(StreamingModule):
    """Weight-normalised ``Conv1d``: ``weight = weight_g * weight_v / ||weight_v||``.

    The norm is taken per output channel, as ``torch.nn.utils.weight_norm`` (dim 0) does.
    Biases start at zero (default biases made a small codec ignore its input).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        padding: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.dilation, self.padding = dilation, padding
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_g = nn.Parameter(torch.empty(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv1d``'s default weight init, ``g = ||v||``, zero bias."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
            self.weight_g.copy_(self.weight_v.norm(dim=(1, 2), keepdim=True))
            self.bias.zero_()

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``[C_out, C_in, kernel]``."""
        # torch._weight_norm is what torch.nn.utils.weight_norm itself evaluates.
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    @property
    def receptive_field(self) -> int:
        """Input samples one output sample sees: ``(kernel - 1) * dilation + 1``."""
        return (self.kernel_size - 1) * self.dilation + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, L] -> [B, C_out, (L + 2 * padding - receptive_field) // stride + 1]``."""
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def stream_step(self, x: torch.Tensor, state: StreamState, key: str) -> torch.Tensor:
        if self.padding:
            raise ValueError("streaming needs padding-free convolutions (causal layout)")
        past = state.get(key)
        if past is not None:
            x = torch.cat([past, x], dim=-1)
        span = self.receptive_field
        outputs = (x.shape[-1] - span) // self.stride + 1 if x.shape[-1] >= span else 0
        # Keep the inputs that later outputs still need.
        state[key] = x[..., outputs * self.stride :]
        if outputs == 0:
            return _empty(x, self.out_channels)
        return self(x[..., : (outputs - 1) * self.stride + span])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, dilation={self.dilation}, padding={self.padding}"
        )


class WNConvTranspose1d(StreamingModule):
    """Weight-normalised ``ConvTranspose1d`` (norm per *input* channel, as DAC's).

    ``weight_v`` is ``[C_in, C_out, kernel]``. With ``padding=0`` an input of length ``L``
    gives ``(L - 1) * stride + kernel`` samples; streaming emits ``L * stride`` of them and
    keeps the last ``kernel - stride`` for the overlap-add with the next frame.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int = 0
    ) -> None:
        super().__init__()
        if kernel_size < stride:
            raise ValueError("kernel_size must be >= stride")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_g = nn.Parameter(torch.empty(in_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(in_channels, out_channels, kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.ConvTranspose1d``'s default weight init, ``g = ||v||``, zero bias."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
            self.weight_g.copy_(self.weight_v.norm(dim=(1, 2), keepdim=True))
            self.bias.zero_()

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``[C_in, C_out, kernel]``."""
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, L] -> [B, C_out, (L - 1) * stride - 2 * padding + kernel]``."""
        return F.conv_transpose1d(x, self.weight, self.bias, self.stride, self.padding)

    def stream_step(self, x: torch.Tensor, state: StreamState, key: str) -> torch.Tensor:
        if self.padding:
            raise ValueError("streaming needs padding-free transposed convolutions")
        if x.shape[-1] == 0:
            return _empty(x, self.out_channels)
        y = F.conv_transpose1d(x, self.weight, None, self.stride)
        overlap = state.get(key)
        if overlap is not None:
            y = torch.cat([y[..., : overlap.shape[-1]] + overlap, y[..., overlap.shape[-1] :]], -1)
        done = x.shape[-1] * self.stride
        state[key] = y[..., done:]
        return y[..., :done] + self.bias[:, None]

    def stream_flush(self, state: StreamState, key: str) -> torch.Tensor | None:
        overlap = state.pop(key, None)
        return None if overlap is None else overlap + self.bias[:, None]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )


def conv_layers(
    causal: bool,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    padding: int = 0,
) -> list[StreamingModule]:
    """A weight-normalised convolution, causal or with DAC's symmetric ``padding``.

    Causal: ``[LeftPad((kernel - 1) * dilation), WNConv1d(padding=0)]`` -- two modules, which
    is exactly the causal reference's layout (so its state-dict indices match).
    """
    if causal:
        return [
            LeftPad((kernel_size - 1) * dilation),
            WNConv1d(in_channels, out_channels, kernel_size, stride, dilation, padding=0),
        ]
    return [WNConv1d(in_channels, out_channels, kernel_size, stride, dilation, padding)]
