"""The layering of SPEC section 2 holds: a module imports only from its own layer or lower ones
(``base -> audio -> data -> codec -> model -> train -> stream -> eval -> cli``), at module level
or inside functions. A new back-arrow fails here with the offending import named."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "stemstream"

# lowest first; a module may import from its own layer and the layers before it
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"__init__", "errors", "config", "outputs", "checkpoint", "metrics", "schedule",
              "training", "aot"}),
    ("audio", {"audio", "features", "beats", "mixing"}),
    ("data", {"data"}),
    ("codec", {"codec"}),
    ("model", {"model"}),
    ("train", {"train"}),
    ("stream", {"stream"}),
    ("eval", {"eval"}),
    ("cli", {"cli"}),
]


def layer_of(name: str) -> int | None:
    """The layer index of ``stemstream.<name>...`` (``name`` the first component)."""
    for index, (_, members) in enumerate(LAYERS):
        if name in members:
            return index
    return None


def imports(path: Path, package: str = "stemstream") -> list[tuple[str, int]]:
    """``(first component after the package, line)`` of every import of the package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != package:
                continue
            if len(parts) > 1:
                found.append((parts[1], node.lineno))
            else:  # from stemstream import audio, __version__
                found.extend((alias.name if layer_of(alias.name) is not None else "__init__",
                              node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    found.append((parts[1], node.lineno))
    return found


def back_arrows(package_dir: Path) -> list[str]:
    """Every import from a higher layer, and every module no layer claims."""
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir)
        own = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        mine = layer_of(own)
        if mine is None:
            problems.append(f"{relative}: in no layer (add it to LAYERS)")
            continue
        for target, line in imports(path, package_dir.name):
            theirs = layer_of(target)
            if theirs is None:
                problems.append(f"{relative}:{line} imports stemstream.{target}, in no layer")
            elif theirs > mine:
                problems.append(f"{relative}:{line} ({LAYERS[mine][0]}) imports "
                                f"stemstream.{target} ({LAYERS[theirs][0]})")
    return problems


def test_no_module_imports_from_a_higher_layer():
    assert back_arrows(PACKAGE) == []


def test_a_back_arrow_is_caught(tmp_path):
    """The check can fail: a codec module importing the training layer, even from inside a
    function, is reported with its line."""
    package = tmp_path / "stemstream"
    (package / "codec").mkdir(parents=True)
    (package / "train").mkdir()
    (package / "__init__.py").write_text("")
    (package / "train" / "loop.py").write_text("from stemstream.codec import base\n")
    (package / "codec" / "base.py").write_text(
        "import numpy\n\n\ndef f():\n    from stemstream.train.loop import x\n")
    (package / "codec" / "tokens.py").write_text("from stemstream import audio\n")
    assert back_arrows(package) == ["codec/base.py:5 (codec) imports stemstream.train (train)"]
