"""Reduced-precision weights for CPU inference.

Decoding one frame at batch 1 reads every weight once, so on a CPU it is bound by memory
bandwidth: int8 weights (dynamic quantisation of every ``nn.Linear``: int8 weights,
per-tensor scales, activations quantised on the fly, fp32 results) read 4x less. bf16 weights
are no faster on CPUs without native bf16 matmuls, which is why only int8 is offered here.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

WEIGHT_MODES = ("fp32", "int8")


def quantize_int8(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose ``nn.Linear`` layers hold int8 weights (CPU only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)


def convert_weights(module: nn.Module, weights: str) -> nn.Module:
    """Apply a weight mode from :data:`WEIGHT_MODES`."""
    if weights == "fp32":
        return module
    if weights == "int8":
        return quantize_int8(module)
    raise ValueError(f"unknown weight mode {weights!r}; known: {', '.join(WEIGHT_MODES)}")
