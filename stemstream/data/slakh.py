"""Reader for Slakh2100-layout corpora: the real Slakh2100 (original, redux, 16 kHz variants)
and our synthetic corpus, which writes the identical layout (SPEC section 3)::

    ROOT/<split>/TrackNNNNN/{metadata.yaml, mix.flac, stems/SNN.flac, MIDI/SNN.mid, all_src.mid}

Splits are whatever directories under ``ROOT`` hold tracks (``train``, ``validation``, ``test``
and, in the original Slakh, ``omitted``). The reader is tolerant of Slakh's metadata quirks:
class names such as ``Drums`` or ``Strings (continued)``, ``program_num: 128`` for drums,
``audio_rendered: false`` stems without audio, missing keys, extra keys, tracks without
``mix.flac``. Names it does not know become the ``Unknown`` class with a logged warning.
Structural problems (unreadable or malformed ``metadata.yaml``, a root without tracks) raise
:class:`~stemstream.errors.CorpusError` with a one-line message naming the path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from stemstream import audio
from stemstream.data.instruments import (
    PERCUSSIVE,
    UNKNOWN,
    class_from_name,
    class_from_program,
)
from stemstream.errors import ConfigError, CorpusError

log = logging.getLogger(__name__)

METADATA = "metadata.yaml"
STANDARD_SPLITS = ("train", "validation", "test", "omitted")
_AUDIO_SUFFIXES = (".flac", ".wav", ".ogg")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml is ~10x faster on Slakh


@dataclass(frozen=True)
class StemInfo:
    """One rendered stem of a track.

    Attributes:
        stem_id: Slakh stem key, e.g. ``"S03"``.
        inst_class: instrument class id (see :mod:`stemstream.data.instruments`).
        program: ``program_num`` from the metadata: 0-based GM program, 128 for Slakh drums,
            -1 when missing.
        is_drum: drum stem (always class ``Percussive``).
        audio_path: the stem's audio file (exists when the corpus was read).
        midi_path: the stem's MIDI file, or ``None`` when absent.
    """

    stem_id: str
    inst_class: int
    program: int
    is_drum: bool
    audio_path: Path
    midi_path: Path | None


@dataclass(frozen=True)
class TrackInfo:
    """One track: its rendered stems (sorted by id) and, for our synthetic corpus, the
    ``stemstream`` metadata mapping (tempo, meter, key, chords...; empty for real Slakh)."""

    name: str
    split: str
    path: Path
    stems: tuple[StemInfo, ...]
    info: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def mix_path(self) -> Path | None:
        """``mix.flac`` when the track has one (otherwise the mix is the sum of the stems)."""
        return _find_audio(self.path / "mix")

    def stem(self, stem_id: str) -> StemInfo:
        """The stem called ``stem_id``; :class:`CorpusError` if the track has none."""
        for stem in self.stems:
            if stem.stem_id == stem_id:
                return stem
        raise CorpusError(f"{self.path}: no rendered stem {stem_id!r}")

    def load_stems(self, sample_rate: int) -> dict[str, np.ndarray]:
        """Decode every stem as mono at ``sample_rate``.

        Returns:
            ``stem_id -> float32 [N]``; all the same length ``N`` (shorter stems are padded
            with zeros at the end, as Slakh renders stems of slightly different lengths).
        """
        waves = {s.stem_id: audio.load(s.audio_path, sample_rate, channels=1).samples[0]
                 for s in self.stems}
        length = max((w.shape[0] for w in waves.values()), default=0)
        return {sid: _pad_to(w, length) for sid, w in waves.items()}

    def load_mix(self, sample_rate: int) -> np.ndarray:
        """The mixture, ``float32 [N]``: ``mix.flac`` when present, else the sum of stems."""
        mix_path = self.mix_path
        if mix_path is not None:
            return audio.load(mix_path, sample_rate, channels=1).samples[0]
        stems = self.load_stems(sample_rate)
        if not stems:
            raise CorpusError(f"{self.path}: no mix and no rendered stems")
        return np.sum(list(stems.values()), axis=0, dtype=np.float32)


class SlakhCorpus:
    """A Slakh2100-layout corpus directory.

    Args:
        root: the corpus root (the directory holding the split directories).

    Raises:
        CorpusError: ``root`` is missing or holds no ``<split>/<track>/metadata.yaml``.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CorpusError(f"{self.root}: corpus directory does not exist")
        self._track_dirs = {split.name: dirs for split in _subdirs(self.root)
                            if (dirs := [d for d in _subdirs(split) if (d / METADATA).is_file()])}
        for name in STANDARD_SPLITS:  # a standard split may legitimately be empty
            if (self.root / name).is_dir():
                self._track_dirs.setdefault(name, [])
        if not any(self._track_dirs.values()):
            if (self.root / METADATA).is_file() or any(
                    (d / METADATA).is_file() for d in _subdirs(self.root)):
                hint = "; it looks like a track or split directory, pass the corpus root"
            else:
                hint = ""
            raise CorpusError(f"{self.root}: not a Slakh-layout corpus (expected "
                              f"<split>/<Track>/{METADATA}){hint}")
        order = {name: i for i, name in enumerate(STANDARD_SPLITS)}
        self.splits: list[str] = sorted(self._track_dirs,
                                        key=lambda s: (order.get(s, len(order)), s))
        self._cache: dict[str, list[TrackInfo]] = {}

    def __repr__(self) -> str:
        return f"SlakhCorpus({str(self.root)!r}, splits={self.splits})"

    def check_splits(self, splits: Sequence[str] | None) -> None:
        """Raise :class:`CorpusError` naming the requested splits the corpus lacks."""
        unknown = [s for s in (splits or ()) if s not in self.splits]
        if unknown:
            raise CorpusError(f"{self.root}: no split {', '.join(map(repr, unknown))}; the "
                              f"corpus has {', '.join(self.splits) or 'none'}")

    def tracks(self, split: str) -> list[TrackInfo]:
        """All tracks of ``split``, sorted by name (metadata parsed once and cached)."""
        if split not in self._track_dirs:
            raise CorpusError(f"{self.root}: no split {split!r}; "
                              f"available: {', '.join(self.splits)}")
        if split not in self._cache:
            dirs = sorted(self._track_dirs[split], key=lambda d: d.name)
            self._cache[split] = [read_track(d, split) for d in dirs]
        return list(self._cache[split])


def read_track(path: Path, split: str) -> TrackInfo:
    """Parse one track directory's ``metadata.yaml`` into a :class:`TrackInfo`.

    Stems not rendered, or rendered but without an audio file, are left out (the latter with a
    warning). Raises :class:`CorpusError` naming the file when the metadata is malformed.
    """
    meta_path = path / METADATA
    try:
        meta = yaml.load(meta_path.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise CorpusError(f"{meta_path}: cannot read metadata ({reason})") from err
    if not isinstance(meta, dict):
        raise CorpusError(f"{meta_path}: metadata is not a mapping")
    stems_meta = meta.get("stems")
    if not isinstance(stems_meta, dict):
        raise CorpusError(f"{meta_path}: missing or malformed 'stems' mapping")
    info = meta.get("stemstream") or {}
    if not isinstance(info, dict):
        raise CorpusError(f"{meta_path}: 'stemstream' entry is not a mapping")
    audio_dir = path / str(meta.get("audio_dir") or "stems")
    midi_dir = path / str(meta.get("midi_dir") or "MIDI")
    stems = []
    for stem_id in sorted(stems_meta, key=str):
        entry = stems_meta[stem_id]
        if not isinstance(entry, dict):
            raise CorpusError(f"{meta_path}: stem {stem_id!r} is not a mapping")
        stem = _read_stem(str(stem_id), entry, audio_dir, midi_dir, meta_path)
        if stem is not None:
            stems.append(stem)
    return TrackInfo(path.name, split, path, tuple(stems), dict(info))


def _read_stem(stem_id: str, entry: dict, audio_dir: Path, midi_dir: Path,
               meta_path: Path) -> StemInfo | None:
    if not _as_bool(entry.get("audio_rendered", True), "audio_rendered", stem_id, meta_path):
        return None
    audio_path = _find_audio(audio_dir / stem_id)
    if audio_path is None:
        log.warning("%s: stem %s is marked rendered but has no audio in %s; skipped",
                    meta_path, stem_id, audio_dir)
        return None
    name = entry.get("inst_class")
    is_drum = _as_bool(entry.get("is_drum", False), "is_drum", stem_id, meta_path) or (
        isinstance(name, str) and name.strip().lower() == "drums")
    program = entry.get("program_num", 128 if is_drum else -1)
    if isinstance(program, bool) or not isinstance(program, int):
        raise CorpusError(f"{meta_path}: stem {stem_id} has non-integer program_num {program!r}")
    midi_path = midi_dir / f"{stem_id}.mid"
    return StemInfo(stem_id, _stem_class(name, program, is_drum, stem_id, meta_path), program,
                    is_drum, audio_path, midi_path if midi_path.is_file() else None)


def _stem_class(name: object, program: int, is_drum: bool, stem_id: str,
                meta_path: Path) -> int:
    """Drums win; then the metadata's class name; then the GM program; else Unknown."""
    if is_drum:
        return PERCUSSIVE
    if isinstance(name, str) and name.strip():
        try:
            return class_from_name(name)
        except ConfigError:
            log.warning("%s: stem %s has unknown inst_class %r; using Unknown",
                        meta_path, stem_id, name)
            return UNKNOWN
    if 0 <= program <= 127:
        return class_from_program(program)
    log.warning("%s: stem %s has no inst_class and no GM program; using Unknown",
                meta_path, stem_id)
    return UNKNOWN


def _as_bool(value: object, key: str, stem_id: str, meta_path: Path) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise CorpusError(f"{meta_path}: stem {stem_id} has non-boolean {key} {value!r}")


def _find_audio(stem: Path) -> Path | None:
    for suffix in _AUDIO_SUFFIXES:
        candidate = stem.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _subdirs(path: Path) -> list[Path]:
    """Visible subdirectories (skips ``.TrackNNNNN.partial`` dirs of an interrupted synth)."""
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError as err:
        raise CorpusError(f"{path}: cannot list directory ({err})") from err


def _pad_to(wave: np.ndarray, length: int) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.shape[0] >= length:
        return wave
    return np.pad(wave, (0, length - wave.shape[0]))
