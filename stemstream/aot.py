"""Ahead-of-time compiled steps with an on-disk cache (issue 17).

A step (a module over tensors with static shapes except the dimensions named dynamic) is
exported with :func:`torch.export.export` and compiled with AOTInductor: frozen weights and a
C++ wrapper, so a call runs the generated kernels with no Python between them and no guards.
On a slow CPU a streaming step is dominated by per-operation overhead, which this removes.

Compiling needs a C++ compiler and takes up to a minute on a slow 2-core machine, so the
package is cached under :func:`cache_dir`, named by a digest of everything the step depends
on (:func:`digest`: the source of the modules that define it, the torch version, the
configuration and the weights). Later runs load it in about a second.
"""

from __future__ import annotations

import hashlib
import json
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
    """A short digest of the defining modules' source, the torch version, a JSON-able
    ``config`` and every tensor of ``module``'s state."""
    sha = hashlib.sha256(torch.__version__.encode())
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


def load_or_compile(name: str, key: str, build: Callable[[Path], None],
                    quiet: bool = False, load: Callable[[Path], Callable] | None = None,
                    suffix: str = ".pt2", needs_compiler: bool = True,
                    engine: str = "AOTInductor") -> tuple[Callable, RouteInfo]:
    """The compiled step ``name``-``key`` from the cache, compiling it with ``build(path)``
    first if it is missing, loaded with ``load`` (default: an AOTInductor package).

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
    except Exception as error:  # noqa: BLE001 - a stale or truncated package
        package.unlink(missing_ok=True)
        raise RouteError(f"the cached {name} {package} did not load ({error}); it was "
                         "removed, run again to rebuild it") from error
    route = "compiled" if engine == "AOTInductor" else "onnx"
    return loaded, RouteInfo(route, package, compile_s, time.perf_counter() - began,
                             engine=engine)


def _load_aoti(package: Path) -> Callable:
    return torch._inductor.aoti_load_package(str(package))
