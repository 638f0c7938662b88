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

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from stemstream.aot import (
    RouteError,
    RouteInfo,
    check_route,
    compile_package,
    digest,
    load_or_compile,
)
from stemstream.errors import ConfigError
from stemstream.model import decode_step
from stemstream.model.decode_step import DecodeStep
from stemstream.model.quantize import WEIGHT_MODES

__all__ = ["OnnxStep", "RouteError", "RouteInfo", "accelerate", "compile_step",
           "example_inputs", "export_onnx", "step_key"]

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


STEP_INPUTS = ("tokens", "inst", "window", "frame_valid", "has_input", "rotation", "position",
               "slot", "cache_window", "slot_positions", "kv")
STEP_OUTPUTS = ("logits", "new_kv")


def _dynamic_shapes() -> tuple:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH)
    capacity = Dim("capacity", min=2, max=MAX_CAPACITY)
    return ({0: batch}, {0: batch}, {0: batch}, None, None, None, None, None, None,
            {0: capacity}, {2: batch, 4: capacity})


def compile_step(model: torch.nn.Module, package: Path) -> None:
    """Export and AOT-compile ``model``'s decode step into ``package``."""
    compile_package(DecodeStep(model), example_inputs(model, EXAMPLE_BATCH, EXAMPLE_CAPACITY),
                    _dynamic_shapes(), package)


def export_onnx(model: torch.nn.Module, path: Path, weights: str = "fp32") -> None:
    """Export ``model``'s decode step to ONNX (``torch.onnx.export``, dynamo) at ``path``,
    written atomically; ``weights="int8"``: then ONNX Runtime's dynamic quantisation (int8
    weights of every MatMul, activations quantised on the fly)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        fp32 = Path(tmp) / "step.onnx"
        with torch.inference_mode():
            program = torch.onnx.export(
                DecodeStep(model).eval(),
                example_inputs(model, EXAMPLE_BATCH, EXAMPLE_CAPACITY),
                dynamic_shapes=_dynamic_shapes(), input_names=list(STEP_INPUTS),
                output_names=list(STEP_OUTPUTS), dynamo=True, optimize=True, verbose=False,
            )
        program.save(str(fp32))
        if weights == "int8":
            logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
            int8 = Path(tmp) / "step-int8.onnx"
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
            fp32 = int8
        os.replace(fp32, path)


class OnnxStep:
    """A decode step exported to ONNX, run by ONNX Runtime on the CPU with the calling
    thread count; called like :class:`DecodeStep` (torch tensors in and out, no copies of
    the cache: ONNX Runtime reads the numpy views of the torch buffers)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = {item.name for item in self.session.get_inputs()}

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = {name: arg.numpy() for name, arg in zip(STEP_INPUTS, args, strict=True)
                 if name in self.inputs}
        logits, new = self.session.run(list(STEP_OUTPUTS), feeds)
        return torch.from_numpy(logits), torch.from_numpy(new)


def accelerate(model: torch.nn.Module, route: str = "auto", quiet: bool = False,
               weights: str = "fp32") -> RouteInfo:
    """Run ``model``'s single-position generation steps on ``route`` with ``weights``
    (sets ``model.step_route``; ``eager`` clears it). Returns what was chosen.

    ``auto``: ``compiled`` for float32 weights where a C++ compiler is installed, else
    ``eager``; ``onnx`` for int8 weights. int8 weights run only on ``onnx``.

    Raises:
        RouteError: a route asked for by name that cannot run here.
    """
    check_route(route)
    if weights not in WEIGHT_MODES:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}")
    model.step_route = None
    if weights == "int8":
        if route not in ("auto", "onnx"):
            raise RouteError(f"int8 weights run on the onnx route (ONNX Runtime), not "
                             f"--route {route}")
        route = "onnx"
    if route == "eager":
        return RouteInfo("eager")
    if {p.dtype for p in model.parameters()} != {torch.float32}:
        error = RouteError(f"the {route} route needs a float32 model")
        if route != "auto":
            raise error
        return RouteInfo("eager", note=str(error))
    if route == "onnx":
        step, info = load_or_compile(
            f"decode step onnx {weights}", onnx_key(model, weights),
            lambda path: export_onnx(model, path, weights), quiet, load=OnnxStep,
            suffix=".onnx", needs_compiler=False, engine=f"ONNX Runtime, {weights}",
        )
        model.step_route = step
        return info
    try:
        step, info = load_or_compile(
            "decode step", step_key(model), lambda path: compile_step(model, path), quiet
        )
    except RouteError as error:
        if route == "compiled":
            raise
        return RouteInfo("eager", note=str(error))
    model.step_route = step
    return info


def onnx_key(model: torch.nn.Module, weights: str) -> str:
    import onnxruntime

    return step_key(model) + f"-{onnxruntime.__version__}-{weights}".replace(".", "")
