"""How a streaming decoder runs its per-position step: ``eager`` PyTorch or ``compiled``
(issue 17).

``compiled`` exports :class:`~stemstream.model.decode_step.DecodeStep` with
:func:`torch.export.export` (batch and cache capacity dynamic) and compiles it ahead of time
with AOTInductor (frozen weights, a C++ wrapper: no Python between kernels, no guards), so a
decode step costs little more than reading the weights. Compiling takes about a minute on a
slow 2-core CPU and needs a C++ compiler; the package is cached on disk, keyed by the
model's config and weights, the step's source and the torch version, so later runs load it
in about a second.

``auto`` is ``compiled`` where a C++ compiler is installed and the weights are float32, and
``eager`` otherwise (with one line saying why). The machinery (export, compile, cache) is
:mod:`stemstream.aot`.
"""

from __future__ import annotations

import torch

from stemstream.aot import (
    RouteError,
    RouteInfo,
    check_route,
    compile_package,
    digest,
    load_or_compile,
)
from stemstream.model import decode_step
from stemstream.model.decode_step import DecodeStep

__all__ = ["RouteError", "RouteInfo", "accelerate", "compile_step", "example_inputs",
           "step_key"]

EXAMPLE_BATCH, EXAMPLE_CAPACITY = 2, 64  # export traces these; both dimensions stay dynamic
MAX_BATCH, MAX_CAPACITY = 4096, 1 << 22


def step_key(model: torch.nn.Module) -> str:
    """A digest of everything the compiled step depends on."""
    config = model.config.to_dict()
    # t_f and k do not enter the step (a position's window and cache are its arguments)
    config = {k: v for k, v in config.items() if k not in ("future_frames", "chunk_frames")}
    aligned = model.input_encoder is not None and model.input_encoder.aligned_lag
    return digest([decode_step], {"config": config, "aligned": aligned}, model)


def example_inputs(model: torch.nn.Module, batch: int, capacity: int) -> tuple:
    """Arguments of :meth:`DecodeStep.forward` of the right shapes (values arbitrary)."""
    cfg, backbone = model.config, model.backbone.config
    frames = model.input_context + 1
    long = torch.long
    return (
        torch.zeros(batch, cfg.num_codebooks, dtype=long),
        torch.zeros(batch, dtype=long),
        torch.zeros(batch, frames, cfg.input_dim),
        torch.ones(frames, dtype=torch.bool),
        torch.tensor(True),
        torch.zeros(backbone.head_dim // 2, 2),
        torch.tensor(capacity, dtype=long),
        torch.tensor(0, dtype=long),
        torch.tensor(capacity, dtype=long),
        torch.arange(capacity),
        torch.zeros(backbone.num_layers, 2, batch, backbone.num_kv_heads, capacity,
                    backbone.head_dim),
    )


def compile_step(model: torch.nn.Module, package) -> None:
    """Export and AOT-compile ``model``'s decode step into ``package``."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH)
    capacity = Dim("capacity", min=2, max=MAX_CAPACITY)
    dynamic = ({0: batch}, {0: batch}, {0: batch}, None, None, None, None, None, None,
               {0: capacity}, {2: batch, 4: capacity})
    compile_package(DecodeStep(model), example_inputs(model, EXAMPLE_BATCH, EXAMPLE_CAPACITY),
                    dynamic, package)


def accelerate(model: torch.nn.Module, route: str = "auto", quiet: bool = False) -> RouteInfo:
    """Run ``model``'s single-position generation steps on ``route`` (sets
    ``model.step_route``; ``eager`` clears it). Returns what was chosen.

    Raises:
        RouteError: ``compiled`` asked for where it cannot run.
    """
    check_route(route)
    model.step_route = None
    if route == "eager":
        return RouteInfo("eager")
    try:
        return _compiled(model, quiet)
    except RouteError as error:
        if route == "compiled":
            raise
        return RouteInfo("eager", note=str(error))


def _compiled(model: torch.nn.Module, quiet: bool) -> RouteInfo:
    from stemstream.model.quantize import Int8Linear

    if any(isinstance(m, Int8Linear) for m in model.modules()):
        raise RouteError("the compiled route does not take int8 weights")
    if {p.dtype for p in model.parameters()} != {torch.float32}:
        raise RouteError("the compiled route needs float32 weights")
    step, info = load_or_compile(
        "decode step", step_key(model), lambda path: compile_step(model, path), quiet
    )
    model.step_route = step
    return info
