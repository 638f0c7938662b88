"""Output paths: checked before any work starts, written atomically.

A command validates every path it will write (:func:`check_output_path`) before it loads a
model or computes audio, so a bad path costs no time and a failure leaves nothing behind; each
file is then written to a temporary sibling and renamed into place (:func:`atomic_output`), so
an interrupted or failed write never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from stemstream.errors import StemstreamError


class OutputError(StemstreamError):
    """An output path that cannot be written (or would overwrite an input)."""


# Containers whose default encoding libsndfile picks from the suffix alone.
_AUDIO_FORMATS = ("WAV", "FLAC", "OGG", "AIFF", "AU", "CAF", "W64", "RF64", "MP3")


def audio_suffixes() -> set[str]:
    """Suffixes of the audio files stemstream writes (``.wav``, ``.flac``, ``.ogg``...)."""
    import soundfile as sf

    available = sf.available_formats()
    return {f".{name.lower()}" for name in _AUDIO_FORMATS if name in available}


def check_output_path(
    path: str | Path,
    what: str = "output",
    inputs: Iterable[str | Path] = (),
    suffixes: Iterable[str] | None = None,
) -> Path:
    """``path`` as a :class:`Path` if a file can be written there; else :class:`OutputError`.

    Args:
        path: the file to write (its folder is created when missing).
        what: how the message names it (e.g. ``"--mix"``).
        inputs: paths the command reads: writing over one of them is refused.
        suffixes: the allowed suffixes (e.g. audio formats), or ``None`` for any.
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise OutputError(f"{what} {path}: not a file name")
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a directory; give a file name")
    if path.exists() and not path.is_file():
        raise OutputError(f"{what} {path}: exists and is not a regular file")
    if suffixes is not None:
        allowed = sorted({s.lower() for s in suffixes})
        if path.suffix.lower() not in allowed:
            shown = ", ".join(allowed) if len(allowed) <= 12 else ", ".join(allowed[:12]) + "..."
            raise OutputError(
                f"{what} {path}: unknown file type {path.suffix or '(no suffix)'!r}; "
                f"use one of {shown}"
            )
    for source in inputs:
        if _same_file(path, Path(source)):
            raise OutputError(f"{what} {path}: is an input of this command; refusing to "
                              "overwrite it")
    folder = _existing_ancestor(path.parent)
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: folder {folder} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path}: exists and is not writable")
    return path


def check_distinct(paths: Iterable[str | Path | None]) -> None:
    """Refuse two outputs of one command that name the same file."""
    seen: dict[Path, Path] = {}
    for path in paths:
        if path is None:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise OutputError(f"{path}: given for two outputs of this command")
        seen[key] = Path(path)


def prepare_output_dir(path: str | Path, what: str = "output folder",
                       create: bool = True) -> Path:
    """Create the folder ``path`` (and its parents) for a command's outputs, or raise
    :class:`OutputError` in one line: an existing file of that name, no permission, a full
    or read-only disk. ``create=False`` only checks (a command that validates its inputs
    next creates the folder once they are known to be good)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path}: exists and is not a directory")
    folder = _existing_ancestor(path)
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: {folder} is not writable")
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what} {path}: cannot create it ({err.strerror or err})") from None
    return path


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def check_outputs(
    inputs: Iterable[str | Path],
    audio: dict[str, str | Path | None] | None = None,
    json: dict[str, str | Path | None] | None = None,
    plots: dict[str, str | Path | None] | None = None,
) -> None:
    """Check every output of a command before it starts (``{option: path or None}`` per
    kind): writable, of a known type, not one of ``inputs``, no file named twice."""
    inputs = list(inputs)
    kinds = ((audio, audio_suffixes()), (json, (".json",)), (plots, PLOT_SUFFIXES))
    paths = []
    for options, suffixes in kinds:
        for what, path in (options or {}).items():
            if path is not None:
                paths.append(check_output_path(path, what, inputs, suffixes))
    check_distinct(paths)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write; on success it is renamed
    to ``path``, on any error removed. Raises :class:`OutputError` for a failed write."""
    path = Path(path)
    if path.exists() and not path.is_file():  # never rename over a device, fifo or folder
        raise OutputError(f"{path}: exists and is not a regular file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{path}: cannot create its folder ({err.strerror or err})") from None
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err.strerror or err})") from None
    except RuntimeError as err:  # soundfile reports write failures (disk full...) this way
        raise OutputError(f"{path}: cannot write ({err})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def all_or_nothing() -> Iterator[list[Path]]:
    """Yield a list to append each file a command writes; if the command then fails, the
    files already written are removed, so a failed command leaves nothing that looks
    finished."""
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                Path(path).unlink()
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _existing_ancestor(folder: Path) -> Path:
    folder = folder if str(folder) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def open_atomic(path: str | Path, newline: str | None = None) -> Iterator[Any]:
    """``open(path, "w")`` whose file appears, complete, only when the block succeeds."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline=newline) as handle:
        yield handle
