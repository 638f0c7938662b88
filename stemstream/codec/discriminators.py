"""Discriminators for codec training: multi-period (HiFi-GAN/DAC) and multi-resolution
multi-band STFT (DAC's MRD). Each sub-discriminator returns its list of feature maps with the
logits last; the ensembles return one such list per sub-discriminator.

Weight norm as in DAC; the discriminators never leave the training code, so their layout need
not match DAC checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def _conv2d(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.Conv2d(*args, **kwargs))


class PeriodDiscriminator(nn.Module):
    """Reshapes ``[B, 1, N]`` to ``[B, 1, N/p, p]`` and applies 2-D convs along time."""

    def __init__(self, period: int, channels: int = 32, max_channels: int = 512):
        super().__init__()
        self.period = period
        chans = [1] + [min(channels * 4**i, max_channels) for i in range(4)]
        self.convs = nn.ModuleList(
            [
                _conv2d(cin, cout, (5, 1), (3, 1), padding=(2, 0))
                for cin, cout in zip(chans[:-1], chans[1:], strict=True)
            ]
            + [_conv2d(chans[-1], chans[-1], (5, 1), 1, padding=(2, 0))]
        )
        self.out = _conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        pad = (-x.shape[-1]) % self.period
        x = F.pad(x, (0, pad), mode="reflect")
        x = x.view(x.shape[0], 1, -1, self.period)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            feats.append(x)
        feats.append(self.out(x))
        return feats


class BandedSTFTDiscriminator(nn.Module):
    """Complex STFT (real/imag as channels) split into frequency bands, each band processed by
    its own conv stack, features concatenated along frequency (DAC's MRD)."""

    def __init__(
        self,
        n_fft: int,
        channels: int = 32,
        bands: Sequence[tuple[float, float]] = (
            (0.0, 0.1),
            (0.1, 0.25),
            (0.25, 0.5),
            (0.5, 0.75),
            (0.75, 1.0),
        ),
    ):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        n_bins = n_fft // 2 + 1
        self.bands = [(int(a * n_bins), int(b * n_bins)) for a, b in bands]

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                [
                    _conv2d(2, channels, (3, 9), (1, 1), padding=(1, 4)),
                    _conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                    _conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                    _conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                    _conv2d(channels, channels, (3, 3), (1, 1), padding=(1, 1)),
                ]
            )

        self.stacks = nn.ModuleList([stack() for _ in self.bands])
        self.out = _conv2d(channels, 1, (3, 3), 1, padding=(1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        spec = torch.stft(
            x.squeeze(1).float(),
            self.n_fft,
            self.n_fft // 4,
            window=self.window,
            return_complex=True,
        )
        spec = torch.view_as_real(spec).permute(0, 3, 2, 1)  # [B, 2, T, F]
        feats, outs = [], []
        for (lo, hi), convs in zip(self.bands, self.stacks, strict=True):
            h = spec[..., lo:hi]
            for conv in convs:
                h = F.leaky_relu(conv(h), 0.1)
                feats.append(h)
            outs.append(h)
        feats.append(self.out(torch.cat(outs, dim=-1)))
        return feats


class Discriminator(nn.Module):
    """Ensemble: periods (2, 3, 5, 7, 11) and STFT sizes (2048, 1024, 512) by default."""

    def __init__(
        self,
        periods: Sequence[int] = (2, 3, 5, 7, 11),
        fft_sizes: Sequence[int] = (2048, 1024, 512),
        channels: int = 32,
    ):
        super().__init__()
        self.subs = nn.ModuleList(
            [PeriodDiscriminator(p, channels) for p in periods]
            + [BandedSTFTDiscriminator(n, channels) for n in fft_sizes]
        )

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return [sub(x) for sub in self.subs]
