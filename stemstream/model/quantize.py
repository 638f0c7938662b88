"""Weight modes of the streaming front ends.

Decoding one frame at batch 1 reads every weight once, so on a CPU it is bound by memory
bandwidth and per-operation overhead. ``int8`` runs the decode step on ONNX Runtime with int8
MatMul weights from its dynamic quantiser (activations quantised on the fly, float32 out):
:mod:`stemstream.model.routes`. The deprecated ``torch.ao.quantization`` path is gone. bf16
weights are no faster on CPUs without native bf16 matmuls, which is why they are not offered.
"""

from __future__ import annotations

from torch import nn

WEIGHT_MODES = ("fp32", "int8")


def num_weights(module: nn.Module) -> int:
    """Parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
