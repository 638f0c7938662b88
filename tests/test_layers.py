"""The layering of SPEC section 2 holds: a module imports only from its own layer or lower ones
(``base -> audio -> data -> codec -> model -> train -> stream -> eval -> cli``), at module level
or inside functions, and inference (``stream``) never imports training (``train``): models are
loaded by ``stemstream.model.checkpoints``. A new back-arrow fails here with the offending
import named."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "stemstream"

# lowest first; a module may import from its own layer and the layers before it, except the
# pairs in SEPARATE
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"__init__", "errors", "config", "outputs", "checkpoint", "metrics", "schedule",
              "training", "aot", "guidance"}),
    ("audio", {"audio", "features", "beats", "mixing"}),
    ("data", {"data"}),
    ("codec", {"codec"}),
    ("model", {"model"}),
    ("train", {"train"}),
    ("stream", {"stream"}),
    ("eval", {"eval"}),
    ("serve", {"serve"}),
    ("cli", {"cli"}),
]


SEPARATE = {("stream", "train"), ("train", "stream")}  # (importer, imported)


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
            elif theirs > mine or (LAYERS[mine][0], LAYERS[theirs][0]) in SEPARATE:
                problems.append(f"{relative}:{line} ({LAYERS[mine][0]}) imports "
                                f"stemstream.{target} ({LAYERS[theirs][0]})")
    return problems


def module_graph(package_dir: Path) -> dict[str, set[str]]:
    """``module -> modules it imports`` within the package (function-level imports included,
    ``if TYPE_CHECKING:`` blocks and imports of package ``__init__`` s left out)."""
    modules = {}
    for path in package_dir.rglob("*.py"):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] != "__init__":
            modules[".".join(parts)] = path
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for sub in ast.walk(node)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


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
    (package / "stream").mkdir()
    (package / "stream" / "files.py").write_text("from stemstream.train.loop import load\n")
    assert back_arrows(package) == ["codec/base.py:5 (codec) imports stemstream.train (train)",
                                    "stream/files.py:1 (stream) imports stemstream.train (train)"]


def test_no_import_cycle_between_modules(tmp_path):
    assert cycles(module_graph(PACKAGE)) == []
    package = tmp_path / "stemstream"
    package.mkdir()
    (package / "a.py").write_text("def f():\n    from stemstream.b import g\n")
    (package / "b.py").write_text("from stemstream import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from stemstream.a import f\n")
    assert cycles(module_graph(package)) == [["stemstream.a", "stemstream.b"]]
