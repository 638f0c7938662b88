"""Ahead-of-time compiled steps with an on-disk cache (issue 17).

A step (a module over tensors with static shapes except the dimensions named dynamic) is
captured whole by :func:`torch.export.export`, so a call runs one graph with no Python
between its operations. On a slow CPU a streaming step is dominated by per-operation
overhead, which this removes. Two engines run the graph:

* **ONNX Runtime** (route ``onnx``, :func:`export_onnx`, :class:`OnnxModule`): the graph
  exported to ONNX (``torch.onnx.export``, dynamo), optionally with int8 MatMul weights from
  ONNX Runtime's dynamic quantiser. No compiler needed; measured fastest here.
* **AOTInductor** (route ``compiled``, :func:`compile_package`): frozen weights and generated
  C++ kernels; needs a C++ compiler.

Building takes up to a minute on a slow 2-core machine, so the result is cached under
:func:`cache_dir`, named by a digest of everything the step depends on (:func:`digest`: the
source of the modules that define it, the torch version, the configuration and the weights).
Later runs load it in about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from stemstream.errors import ConfigError

ROUTES = ("auto", "eager", "compiled", "onnx")
OPSET = 23  # RMSNormalization is one ONNX op from opset 23 on


class RouteError(ConfigError):
    """A route cannot be used here (no C++ compiler, quantised weights, failed compile)."""


@dataclass(frozen=True)
class RouteInfo:
    """Which route a module runs on, and for ``compiled`` the package and what it cost:
    ``compile_s`` (0 on a cache hit) and ``load_s``; ``note`` says why ``auto`` fell back."""

    name: str
    package: Path | None = None
    compile_s: float = 0.0
    load_s: float = 0.0
    note: str = ""
    engine: str = "AOTInductor"

    def describe(self) -> str:
        if self.name == "eager":
            return "eager" + (f" ({self.note})" if self.note else "")
        how = f"built in {self.compile_s:.0f} s" if self.compile_s else "cached"
        return f"{self.name} ({self.engine}, {how}, loaded in {self.load_s:.2f} s)"


def check_route(route: str) -> None:
    if route not in ROUTES:
        raise ConfigError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")


def cache_dir() -> Path:
    """Where compiled packages live: ``$STEMSTREAM_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/stemstream``, else ``~/.cache/stemstream``."""
    root = os.environ.get("STEMSTREAM_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "stemstream"


def compiler() -> str | None:
    """The C++ compiler Inductor would use, or None."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def digest(sources: Iterable[ModuleType], config: Any, module: torch.nn.Module) -> str:
    """A short digest of this module's and the defining modules' source, the torch version,
    a JSON-able ``config`` and every tensor of ``module``'s state."""
    sha = hashlib.sha256(torch.__version__.encode())
    sha.update(Path(__file__).read_bytes())  # how steps are exported and compiled
    for source in sources:
        sha.update(Path(source.__file__).read_bytes())
    sha.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        sha.update(name.encode())
        sha.update(str(tensor.dtype).encode())
        sha.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()[:20]


def compile_package(step: torch.nn.Module, example: tuple, dynamic: tuple,
                    package: Path) -> None:
    """Export ``step`` on ``example`` inputs (``dynamic``: :func:`torch.export.export`'s
    ``dynamic_shapes``) and AOT-compile it into ``package``, written atomically."""
    import torch._inductor.config as inductor_config

    package.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=package.parent) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.inference_mode():
            exported = torch.export.export(step.eval(), example, dynamic_shapes=dynamic,
                                           strict=False)
        with inductor_config.patch(freezing=True):
            built = torch._inductor.aoti_compile_and_package(
                exported, package_path=str(Path(tmp) / "step.pt2")
            )
        os.replace(built, package)


def export_onnx(step: torch.nn.Module, example: tuple, dynamic: tuple, path: Path,
                input_names: list[str], output_names: list[str], weights: str = "fp32") -> None:
    """Export ``step`` to ONNX at ``path`` (written atomically) with named inputs and outputs;
    ``weights="int8"``: then ONNX Runtime's dynamic quantisation (int8 weights of every
    MatMul, activations quantised on the fly, float32 out)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path.parent.mkdir(parents=True, exist_ok=True)
    quiet_loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "")]
    levels = [logger.level for logger in quiet_loggers]
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in quiet_loggers:
            logger.setLevel(logging.ERROR)
        try:
            built = Path(tmp) / "step.onnx"
            with torch.inference_mode():
                program = torch.onnx.export(
                    step.eval(), example, dynamic_shapes=dynamic, input_names=input_names,
                    output_names=output_names, dynamo=True, optimize=True, verbose=False,
                    opset_version=OPSET,
                )
            program.save(str(built))
            if weights == "int8":
                quantized = Path(tmp) / "step-int8.onnx"
                quantize_dynamic(str(built), str(quantized), weight_type=QuantType.QInt8)
                built = quantized
            os.replace(built, path)
        finally:
            for logger, level in zip(quiet_loggers, levels, strict=True):
                logger.setLevel(level)


class OnnxModule:
    """An exported step run by ONNX Runtime on the CPU, called with torch tensors (or lists
    of them, flattened) in the export's input order and returning torch tensors (numpy views
    both ways: the inputs, a KV cache included, are not copied). One thread by default: a
    frame's matrix products are too small for intra-op threads to pay, and a second thread
    that competes with other work on a 2-core machine costs far more than it gives."""

    def __init__(self, path: Path, input_names: list[str], output_names: list[str],
                 threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        kept = {item.name for item in self.session.get_inputs()}  # unused inputs are dropped
        self.input_names = [(name, name in kept) for name in input_names]
        self.output_names = list(output_names)

    def __call__(self, *args: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        flat = [item for arg in args for item in (arg if isinstance(arg, list) else [arg])]
        feeds = {name: arg.numpy() for (name, kept), arg
                 in zip(self.input_names, flat, strict=True) if kept}
        return tuple(torch.from_numpy(out) for out in self.session.run(self.output_names, feeds))


def onnx_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def load_or_compile(name: str, key: str, build: Callable[[Path], None],
                    quiet: bool = False, load: Callable[[Path], Callable] | None = None,
                    suffix: str = ".pt2", needs_compiler: bool = True,
                    engine: str = "AOTInductor",
                    warmup: tuple | None = None) -> tuple[Callable, RouteInfo]:
    """The compiled step ``name``-``key`` from the cache, compiling it with ``build(path)``
    first if it is missing, loaded with ``load`` (default: an AOTInductor package) and, with
    ``warmup`` inputs, run twice on them (an engine's first calls plan memory and are slow:
    in a live stream they would be missed deadlines).

    Raises:
        RouteError: no C++ compiler, or compiling / loading failed (a package that does not
            load is removed so the next run rebuilds it).
    """
    package = cache_dir() / "compiled" / f"{name.replace(' ', '-')}-{key}{suffix}"
    compile_s = 0.0
    if not package.exists():
        if needs_compiler and compiler() is None:
            raise RouteError("the compiled route needs a C++ compiler (g++): "
                             "run scripts/setup.sh or pass --route eager")
        if not quiet:
            print(f"building the {name} once (about a minute; cached in "
                  f"{package.parent})", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            build(package)
        except Exception as error:  # noqa: BLE001 - any compiler failure: say it in one line
            text = str(error).strip()
            first = text.splitlines()[0][:200] if text else ""
            raise RouteError(f"compiling the {name} failed: {type(error).__name__}: "
                             f"{first}") from error
        compile_s = time.perf_counter() - began
    began = time.perf_counter()
    try:
        loaded = (load or _load_aoti)(package)
        with torch.inference_mode():
            for _ in range(2 if warmup is not None else 0):
                loaded(*warmup)
    except Exception as error:  # noqa: BLE001 - a stale or truncated package
        package.unlink(missing_ok=True)
        raise RouteError(f"the cached {name} {package} did not load ({error}); it was "
                         "removed, run again to rebuild it") from error
    route = "compiled" if engine == "AOTInductor" else "onnx"
    return loaded, RouteInfo(route, package, compile_s, time.perf_counter() - began,
                             engine=engine)


def _load_aoti(package: Path) -> Callable:
    return torch._inductor.aoti_load_package(str(package))
