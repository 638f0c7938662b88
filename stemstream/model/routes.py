"""How a streaming decoder runs its per-position step: ``eager`` PyTorch or ``compiled``
(issue 17).

``compiled`` exports :class:`~stemstream.model.decode_step.DecodeStep` with
:func:`torch.export.export` (batch and cache capacity dynamic) and compiles it ahead of time
with AOTInductor (frozen weights, a C++ wrapper: no Python between kernels, no guards), so a
decode step costs little more than reading the weights. Compiling takes about a minute on a
slow 2-core CPU and needs a C++ compiler; the package is cached on disk, keyed by the
model's config and weights, the step's source and the torch version, so later runs load it
in well under a second.

``auto`` is ``compiled`` where a C++ compiler is installed and the weights are float32, and
``eager`` otherwise (with one line saying why).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from stemstream.errors import ConfigError
from stemstream.model import decode_step
from stemstream.model.decode_step import DecodeStep

log = logging.getLogger(__name__)

ROUTES = ("auto", "eager", "compiled")
EXAMPLE_BATCH, EXAMPLE_CAPACITY = 2, 64  # export traces these; both dimensions stay dynamic
MAX_BATCH, MAX_CAPACITY = 4096, 1 << 22


class RouteError(ConfigError):
    """A route cannot be used here (no C++ compiler, quantised weights, failed compile)."""


@dataclass(frozen=True)
class RouteInfo:
    """Which route a model runs on, and for ``compiled`` the package and what it cost:
    ``compile_s`` (0 on a cache hit) and ``load_s``."""

    name: str
    package: Path | None = None
    compile_s: float = 0.0
    load_s: float = 0.0
    note: str = ""

    def describe(self) -> str:
        if self.name == "eager":
            return "eager" + (f" ({self.note})" if self.note else "")
        how = f"compiled in {self.compile_s:.0f} s" if self.compile_s else "cached"
        return f"compiled (AOTInductor, {how}, loaded in {self.load_s:.2f} s)"


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


def step_key(model: torch.nn.Module) -> str:
    """A digest of everything the compiled step depends on."""
    digest = hashlib.sha256()
    digest.update(torch.__version__.encode())
    digest.update(Path(decode_step.__file__).read_bytes())
    config = model.config.to_dict()
    # t_f and k do not enter the step (a position's window and cache are its arguments)
    config = {k: v for k, v in config.items() if k not in ("future_frames", "chunk_frames")}
    digest.update(json.dumps(config, sort_keys=True).encode())
    digest.update(str(model.input_encoder is not None and model.input_encoder.aligned_lag)
                  .encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


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


def compile_step(model: torch.nn.Module, package: Path) -> None:
    """Export and AOT-compile ``model``'s decode step into ``package`` (written atomically)."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH)
    capacity = Dim("capacity", min=2, max=MAX_CAPACITY)
    dynamic = ({0: batch}, {0: batch}, {0: batch}, None, None, None, None, None, None,
               {0: capacity}, {2: batch, 4: capacity})
    step = DecodeStep(model).eval()
    package.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=package.parent) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.inference_mode():
            exported = torch.export.export(
                step, example_inputs(model, EXAMPLE_BATCH, EXAMPLE_CAPACITY),
                dynamic_shapes=dynamic, strict=False,
            )
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            built = torch._inductor.aoti_compile_and_package(
                exported, package_path=str(Path(tmp) / "step.pt2")
            )
        os.replace(built, package)


def accelerate(model: torch.nn.Module, route: str = "auto", quiet: bool = False) -> RouteInfo:
    """Run ``model``'s single-position generation steps on ``route`` (sets
    ``model.step_route``; ``eager`` clears it). Returns what was chosen.

    Raises:
        RouteError: ``compiled`` asked for where it cannot run.
    """
    if route not in ROUTES:
        raise ConfigError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    if route == "eager":
        model.step_route = None
        return RouteInfo("eager")
    try:
        return _compiled(model, quiet)
    except RouteError as error:
        if route == "compiled":
            raise
        model.step_route = None
        return RouteInfo("eager", note=str(error))


def _compiled(model: torch.nn.Module, quiet: bool) -> RouteInfo:
    weights = {p.dtype for p in model.parameters()}
    if weights != {torch.float32} or not hasattr(model, "no_input"):
        raise RouteError("the compiled route needs a float32 streaming decoder")
    from stemstream.model.quantize import Int8Linear

    if any(isinstance(m, Int8Linear) for m in model.modules()):
        raise RouteError("the compiled route does not take int8 weights")
    package = cache_dir() / "compiled" / f"step-{step_key(model)}.pt2"
    compile_s = 0.0
    if not package.exists():
        if compiler() is None:
            raise RouteError("the compiled route needs a C++ compiler (g++): "
                             "run scripts/setup.sh or pass --route eager")
        if not quiet:
            print(f"compiling the decode step for this model once (about a minute; cached "
                  f"in {package.parent})", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            compile_step(model, package)
        except Exception as error:  # noqa: BLE001 - any compiler failure: say it in one line
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise RouteError(f"compiling the decode step failed: {type(error).__name__}: "
                             f"{first[:200]}") from error
        compile_s = time.perf_counter() - began
    began = time.perf_counter()
    try:
        loaded = torch._inductor.aoti_load_package(str(package))
    except Exception as error:  # noqa: BLE001 - a stale or truncated package: rebuild next time
        package.unlink(missing_ok=True)
        raise RouteError(f"the cached compiled step {package} did not load ({error}); it was "
                         "removed, run again to rebuild it") from error
    model.step_route = loaded
    return RouteInfo("compiled", package, compile_s, time.perf_counter() - began)
