"""Reconstruction and adversarial losses for codec training (DAC's recipe).

* :class:`MultiScaleMelLoss` — L1 between log-mel spectrograms at several STFT sizes
  (DAC: windows 32..2048, mel bins 5..320; scaled to 16 kHz here by the caller's config).
* :class:`MultiResolutionSTFTLoss` — spectral convergence + log-magnitude L1.
* ``generator_adv_loss`` / ``discriminator_adv_loss`` — least-squares GAN terms, and
  ``feature_matching_loss`` — L1 between discriminator features of real and fake audio.

All losses take waveforms ``[B, 1, N]`` and return a scalar tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _stft_mag(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """``[B, 1, N] -> [B, F, T]`` magnitude (reflect-free, centre-padded like DAC)."""
    spec = torch.stft(x.squeeze(1), n_fft, hop, window=window, return_complex=True, center=True)
    return spec.abs()


class MultiScaleMelLoss(nn.Module):
    """Log-mel L1 summed over scales; ``log10(clamp(mel, 1e-5))`` as in DAC."""

    def __init__(
        self,
        sample_rate: int,
        window_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
        fmin: float = 0.0,
    ):
        super().__init__()
        import librosa

        if len(window_lengths) != len(n_mels):
            raise ValueError("window_lengths and n_mels must have the same length")
        self.window_lengths = tuple(window_lengths)
        for i, (win, mels) in enumerate(zip(window_lengths, n_mels, strict=True)):
            fb = librosa.filters.mel(
                sr=sample_rate,
                n_fft=win,
                n_mels=mels,
                fmin=fmin,
                fmax=sample_rate / 2,
                norm="slaney",
                htk=False,
            )
            self.register_buffer(
                f"fb{i}", torch.from_numpy(fb.astype(np.float32)), persistent=False
            )
            self.register_buffer(f"win{i}", torch.hann_window(win), persistent=False)

    def log_mels(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, win in enumerate(self.window_lengths):
            mag = _stft_mag(x.float(), win, win // 4, getattr(self, f"win{i}"))
            mel = getattr(self, f"fb{i}") @ mag
            out.append(torch.log10(mel.clamp_min(1e-5)))
        return out

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return sum(
            F.l1_loss(f, r) for f, r in zip(self.log_mels(fake), self.log_mels(real), strict=True)
        )


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1 at several resolutions (mean over scales)."""

    def __init__(self, fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128)):
        super().__init__()
        self.fft_sizes = tuple(fft_sizes)
        for n in self.fft_sizes:
            self.register_buffer(f"win{n}", torch.hann_window(n), persistent=False)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        total = fake.new_zeros(())
        for n in self.fft_sizes:
            window = getattr(self, f"win{n}")
            f = _stft_mag(fake.float(), n, n // 4, window)
            r = _stft_mag(real.float(), n, n // 4, window)
            sc = torch.linalg.norm(r - f) / torch.linalg.norm(r).clamp_min(1e-7)
            mag = F.l1_loss(torch.log(f.clamp_min(1e-5)), torch.log(r.clamp_min(1e-5)))
            total = total + sc + mag
        return total / len(self.fft_sizes)


def discriminator_adv_loss(
    real_outs: list[list[torch.Tensor]], fake_outs: list[list[torch.Tensor]]
) -> torch.Tensor:
    """Least-squares GAN loss for the discriminators: real -> 1, fake -> 0.

    Each element of ``*_outs`` is one sub-discriminator's list of feature maps, logits last.
    """
    loss = real_outs[0][-1].new_zeros(())
    for real, fake in zip(real_outs, fake_outs, strict=True):
        loss = loss + torch.mean((1 - real[-1]) ** 2) + torch.mean(fake[-1] ** 2)
    return loss


def generator_adv_loss(fake_outs: list[list[torch.Tensor]]) -> torch.Tensor:
    """Least-squares GAN loss for the generator: fake -> 1."""
    return sum(torch.mean((1 - fake[-1]) ** 2) for fake in fake_outs)


def feature_matching_loss(
    real_outs: list[list[torch.Tensor]], fake_outs: list[list[torch.Tensor]]
) -> torch.Tensor:
    """L1 between intermediate discriminator features (real detached), logits excluded."""
    loss = fake_outs[0][-1].new_zeros(())
    for real, fake in zip(real_outs, fake_outs, strict=True):
        for r, f in zip(real[:-1], fake[:-1], strict=True):
            loss = loss + F.l1_loss(f, r.detach())
    return loss


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB per item: ``[B, 1, N] -> [B]``."""
    est = estimate.flatten(1) - estimate.flatten(1).mean(-1, keepdim=True)
    ref = reference.flatten(1) - reference.flatten(1).mean(-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * ref
    noise = est - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))
