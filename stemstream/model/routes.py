"""How a streaming decoder runs its per-position step (issue 17): ``eager`` PyTorch, ``onnx``
(ONNX Runtime) or ``compiled`` (AOTInductor).

Both non-eager routes capture :class:`~stemstream.model.decode_step.DecodeStep` whole with
:func:`torch.export.export` (batch and cache capacity dynamic; machinery in
:mod:`stemstream.aot`), so a decode step runs one graph with no Python between its
operations. ``onnx`` exports it to ONNX and runs it on ONNX Runtime, with float32 weights or,
for ``weights="int8"``, int8 MatMul weights from ONNX Runtime's dynamic quantiser (validation
loss +0.0007 nats on the default: ``benchmarks/route_quality.py``). ``compiled`` compiles it
with AOTInductor and needs a C++ compiler. Building either takes about a minute on a slow
2-core CPU; the result is cached on disk, keyed by the model's config and weights, the
step's source and the library versions.

``auto`` is ``onnx`` (measured the faster of the two on a 2-core CPU,
``benchmarks/stream_speed.py``), falling back to ``eager`` with one line saying why.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from stemstream.aot import (
    OnnxModule,
    RouteError,
    RouteInfo,
    check_route,
    compile_package,
    digest,
    export_onnx,
    load_or_compile,
    onnx_version,
)
from stemstream.errors import ConfigError
from stemstream.model import decode_step
from stemstream.model.decode_step import DecodeStep
from stemstream.model.quantize import WEIGHT_MODES

__all__ = ["RouteError", "RouteInfo", "accelerate", "compile_step", "example_inputs",
           "export_step_onnx", "rows_step", "step_key"]

EXAMPLE_BATCH, EXAMPLE_CAPACITY = 2, 64  # export traces these; both dimensions stay dynamic
MAX_BATCH, MAX_CAPACITY = 4096, 1 << 22
WARMUP_CAPACITY = 512  # a session's default KV ring


def step_key(model: torch.nn.Module) -> str:
    """A digest of everything the compiled step depends on."""
    config = model.config.to_dict()
    # t_f and k do not enter the step (a position's window and cache are its arguments)
    config = {k: v for k, v in config.items() if k not in ("future_frames", "chunk_frames")}
    aligned = model.input_encoder is not None and model.input_encoder.aligned_lag
    # this module too: it defines the step's inputs (their shapes and dynamic dimensions)
    return digest([decode_step, sys.modules[__name__]], {"config": config, "aligned": aligned},
                  model)


def example_inputs(model: torch.nn.Module, batch: int, capacity: int,
                   rows: bool = False) -> tuple:
    """Arguments of :meth:`DecodeStep.forward` of the right shapes (values arbitrary);
    ``rows``: the per-row form (every row at its own position: a batch of streams)."""
    cfg, backbone = model.config, model.backbone.config
    frames = model.input_context + 1
    long = torch.long
    per_row = (batch,) if rows else ()
    return (
        torch.zeros(batch, cfg.num_codebooks, dtype=long),
        torch.zeros(batch, dtype=long),
        torch.zeros(batch, frames, cfg.input_channels),
        torch.ones(*per_row, frames, dtype=torch.bool),
        torch.ones(batch, dtype=torch.bool),  # per row in both forms (guided streams)
        torch.zeros(*per_row, backbone.head_dim // 2, 2),
        torch.full(per_row, capacity, dtype=long),
        torch.zeros(per_row, dtype=long),
        torch.tensor(capacity, dtype=long),
        torch.arange(capacity).expand(*per_row, capacity).contiguous(),
        [torch.zeros(batch, backbone.num_kv_heads, capacity, backbone.head_dim)
         for _ in range(2 * backbone.num_layers)],
    )


STEP_INPUTS = ("tokens", "inst", "window", "frame_valid", "has_input", "rotation", "position",
               "slot", "cache_window", "slot_positions")
STEP_OUTPUTS = ("logits", "new_kv")


def step_inputs(model: torch.nn.Module) -> list[str]:
    """The step's flat input names: :data:`STEP_INPUTS` then each layer's keys and values."""
    layers = model.backbone.config.num_layers
    return [*STEP_INPUTS, *(f"{kind}_{i}" for i in range(layers) for kind in ("keys", "values"))]


def _dynamic_shapes(model: torch.nn.Module, rows: bool = False) -> tuple:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH)
    capacity = Dim("capacity", min=2, max=MAX_CAPACITY)
    caches = [{0: batch, 2: capacity}] * (2 * model.backbone.config.num_layers)
    if rows:
        return ({0: batch}, {0: batch}, {0: batch}, {0: batch}, {0: batch}, {0: batch},
                {0: batch}, {0: batch}, None, {0: batch, 1: capacity}, caches)
    return ({0: batch}, {0: batch}, {0: batch}, None, {0: batch}, None, None, None, None,
            {0: capacity}, caches)


def compile_step(model: torch.nn.Module, package: Path, rows: bool = False) -> None:
    """Export and AOT-compile ``model``'s decode step into ``package``."""
    compile_package(DecodeStep(model),
                    example_inputs(model, EXAMPLE_BATCH, EXAMPLE_CAPACITY, rows),
                    _dynamic_shapes(model, rows), package)


def export_step_onnx(model: torch.nn.Module, path: Path, weights: str = "fp32",
                     rows: bool = False) -> None:
    """Export ``model``'s decode step to ONNX (:func:`stemstream.aot.export_onnx`)."""
    export_onnx(DecodeStep(model), example_inputs(model, EXAMPLE_BATCH, EXAMPLE_CAPACITY, rows),
                _dynamic_shapes(model, rows), path, step_inputs(model), list(STEP_OUTPUTS),
                weights)


def check_weights(route: str, weights: str) -> None:
    """A :class:`ConfigError` for unknown ``weights``, a :class:`RouteError` for int8 weights
    on a route other than ``onnx`` / ``auto`` (only ONNX Runtime runs them)."""
    check_route(route)
    if weights not in WEIGHT_MODES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}")
    if weights == "int8" and route not in ("auto", "onnx"):
        raise RouteError(f"int8 weights run on the onnx route (ONNX Runtime), not "
                         f"--route {route}")


def rows_step(model: torch.nn.Module, route: str = "auto", quiet: bool = False,
              weights: str = "fp32") -> tuple[torch.nn.Module | None, RouteInfo]:
    """The per-row decode step (a batch of streams at their own positions, for
    :class:`~stemstream.model.batched.StreamPool`) on ``route``: ``(step, info)``, step
    ``None`` for eager (the pool then runs :class:`DecodeStep` itself). ``auto`` falls back to
    eager as :func:`accelerate` does; int8 ``weights`` need ``onnx`` or ``auto``."""
    check_weights(route, weights)
    if route == "eager" or (route == "auto" and weights == "fp32" and
                            {p.dtype for p in model.parameters()} != {torch.float32}):
        return None, RouteInfo("eager")
    name = "onnx" if route in ("auto", "onnx") else "compiled"
    warmup = example_inputs(model, 2, WARMUP_CAPACITY, rows=True)
    try:
        if name == "compiled":
            return load_or_compile(
                "rows step", step_key(model) + "-rows",
                lambda path: compile_step(model, path, rows=True), quiet, warmup=warmup)
        return load_or_compile(
            f"rows step onnx {weights}", onnx_key(model, weights) + "-rows",
            lambda path: export_step_onnx(model, path, weights, rows=True), quiet,
            load=lambda path: OnnxModule(path, step_inputs(model), list(STEP_OUTPUTS)),
            suffix=".onnx", needs_compiler=False, engine=f"ONNX Runtime, {weights}",
            warmup=warmup)
    except RouteError as error:
        if route != "auto":
            raise
        return None, RouteInfo("eager", note=str(error))


def accelerate(model: torch.nn.Module, route: str = "auto", quiet: bool = False,
               weights: str = "fp32") -> RouteInfo:
    """Run ``model``'s single-position generation steps on ``route`` with ``weights``
    (sets ``model.step_route``; ``eager`` clears it). Returns what was chosen.

    int8 weights run only on ``onnx``; ``auto`` falls back to ``eager`` (float32) where the
    onnx route cannot be built, with the reason in :attr:`RouteInfo.note`.

    Raises:
        RouteError: a route asked for by name that cannot run here.
    """
    check_weights(route, weights)
    model.step_route = None
    if route == "eager":
        return RouteInfo("eager")
    warmup = example_inputs(model, 1, WARMUP_CAPACITY)
    try:
        if {p.dtype for p in model.parameters()} != {torch.float32}:
            raise RouteError(f"the {route} route needs a float32 model")
        if route == "compiled":
            step, info = load_or_compile(
                "decode step", step_key(model), lambda path: compile_step(model, path), quiet,
                warmup=warmup,
            )
        else:
            step, info = load_or_compile(
                f"decode step onnx {weights}", onnx_key(model, weights),
                lambda path: export_step_onnx(model, path, weights), quiet,
                load=lambda path: OnnxModule(path, step_inputs(model), list(STEP_OUTPUTS)),
                suffix=".onnx", needs_compiler=False, engine=f"ONNX Runtime, {weights}",
                warmup=warmup,
            )
    except RouteError as error:
        if route != "auto":
            raise
        return RouteInfo("eager", note=str(error))
    model.step_route = step
    return info


def onnx_key(model: torch.nn.Module, weights: str) -> str:
    return step_key(model) + f"-ort{onnx_version()}-{weights}".replace(".", "")
