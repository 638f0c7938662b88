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


class Int8Linear(nn.Module):
    """A dynamically quantised ``nn.Linear`` (int8 weights, per-tensor scale, activations
    quantised on the fly, fp32 out) that calls its kernel directly: the same numbers as
    ``torch.ao``'s dynamic Linear module without its per-call Python, which costs ~10 us, a
    lot for a decoder step that runs ~40 of them."""

    def __init__(self, quantized: nn.Module) -> None:
        super().__init__()
        self.in_features, self.out_features = quantized.in_features, quantized.out_features
        self.packed = quantized._packed_params._packed_params
        self.reduce_range = quantized.version is not None and quantized.version >= 4
        weight, bias = self.packed.unpack()
        self.num_weights = weight.numel() + (0 if bias is None else bias.numel())

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (for device/dtype queries; not used by :meth:`forward`)."""
        return self.packed.unpack()[0].dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, self.reduce_range)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose ``nn.Linear`` layers hold int8 weights (CPU only)."""
    if type(module) is nn.Linear:  # torch.ao swaps children only
        return quantize_int8(nn.Sequential(module))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
        quantized = torch.ao.quantization.quantize_dynamic(module, {nn.Linear},
                                                           dtype=torch.qint8)
        dynamic = torch.ao.nn.quantized.dynamic.Linear
        for parent in list(quantized.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, dynamic):
                    setattr(parent, name, Int8Linear(child))
        return quantized


def convert_weights(module: nn.Module, weights: str) -> nn.Module:
    """Apply a weight mode from :data:`WEIGHT_MODES`."""
    if weights == "fp32":
        return module
    if weights == "int8":
        return quantize_int8(module)
    raise ValueError(f"unknown weight mode {weights!r}; known: {', '.join(WEIGHT_MODES)}")


def num_weights(module: nn.Module) -> int:
    """Parameters of ``module``, counting the int8 weights of :class:`Int8Linear` layers (which
    are not ``nn.Parameter`` s)."""
    return sum(p.numel() for p in module.parameters()) + sum(
        m.num_weights for m in module.modules() if isinstance(m, Int8Linear))
