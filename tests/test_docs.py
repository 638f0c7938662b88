"""The docs cannot drift from the code: every `stemstream ...` command line in a shell block of
README.md, docs/*.md and the model cards names a real command with options it takes, and the
README's Python example runs as written (on a short file with the shipped model)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import numpy as np
import pytest
import soundfile as sf

from stemstream.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "models").glob("*/README.md"))]
BLOCK = re.compile(r"```(bash|sh|shell)\n(.*?)```", re.S)


def _command_lines(text: str) -> list[str]:
    """The `stemstream` invocations of the shell blocks, continuation lines joined and
    comments, placeholders ([...] / ...) and shell operators after the command dropped."""
    lines = []
    for _, body in BLOCK.findall(text):
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("#"):
                continue
            for part in re.split(r"&&|\|\||;|\|", line):
                part = part.strip()
                match = re.match(r"^(?:\S*/)?stemstream\s+(.*)$", part)
                if match and "-m stemstream.cli" not in part:
                    lines.append(re.sub(r"\[[^\]]*\]", "", match.group(1)).replace("...", ""))
    return lines


def _cases() -> list[tuple[str, str]]:
    return [(path.relative_to(ROOT).as_posix(), line) for path in DOCS
            for line in _command_lines(path.read_text(encoding="utf-8"))]


def test_the_docs_show_commands():
    assert len(_cases()) > 20


@pytest.mark.parametrize(("doc", "line"), _cases())
def test_documented_command_exists_with_its_options(doc, line):
    words = shlex.split(line)
    command: click.Command = cli
    ctx = click.Context(cli)
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        name = words.pop(0)
        sub = command.get_command(ctx, name)
        assert sub is not None, f"{doc}: `stemstream {line}`: no command {name!r}"
        command = sub
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in words:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            assert option in known, f"{doc}: `stemstream {line}`: {option} is not an option"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "Session(" in b]
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "song.wav", (0.1 * rng.standard_normal((8820, 2))).astype(np.float32),
             44100)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["session"].stats.chunks > 0


def test_the_check_catches_a_drifted_line():
    lines = _command_lines("```bash\nstemstream accompany in.wav --instrument Bass \\\n"
                           "    --no-such-flag -o x.wav   # comment\n```\n")
    assert lines[0].split() == "accompany in.wav --instrument Bass --no-such-flag -o x.wav".split()
    with pytest.raises(AssertionError, match="--no-such-flag is not an option"):
        test_documented_command_exists_with_its_options("x.md", lines[0])
    with pytest.raises(AssertionError, match="no command 'acompany'"):
        test_documented_command_exists_with_its_options("x.md", "acompany in.wav")
