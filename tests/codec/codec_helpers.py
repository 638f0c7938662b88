"""Helpers for codec tests: tiny codecs with non-trivial random weights, test audio."""

from __future__ import annotations

import math

import torch
from torch import nn

from stemstream.codec import DAC, DACConfig, MockCodec, MockCodecConfig


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a reproducible non-default value (biases and alphas too), so
    tests exercise all of them; weight-norm gains keep their scale."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            if name.endswith("alpha"):
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
            elif name.endswith("weight_g"):
                param.mul_(0.75 + 0.5 * torch.rand(param.shape, generator=gen))
            else:
                param.add_(0.1 * torch.randn(param.shape, generator=gen) * param.std())
    return module


def tiny_dac(causal: bool = True, seed: int = 0, **overrides) -> DAC:
    """The ``tiny`` preset with random weights, in eval mode."""
    config = DACConfig.preset("tiny", causal_encoder=causal, causal_decoder=causal, **overrides)
    torch.manual_seed(seed)
    return randomize_(DAC(config), seed).eval()


def tiny_mock(seed: int = 0) -> MockCodec:
    """A MockCodec with a short hop (40 samples) and 64-entry codebooks."""
    return MockCodec(MockCodecConfig(hop_length=40, codebook_size=64, seed=seed))


def make_audio(batch: int = 2, samples: int = 1000, seed: int = 0, rate: int = 16000):
    """``[B, 1, N]`` float32: three tones plus noise, peak about 0.6."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / rate
    freqs = 100 + 1500 * torch.rand(batch, 3, 1, generator=gen)
    tones = torch.sin(2 * math.pi * freqs * t).sum(1, keepdim=True) / 6
    return tones + 0.1 * torch.randn(batch, 1, samples, generator=gen)
