"""A symbolic song: one MIDI instrument per stem plus the musical facts we record.

Both MIDI sources (procedural songs and Bach chorales) produce a :class:`Song`; the renderer
turns it into a Slakh-format track. ``info`` is stored in the track's ``metadata.yaml`` under
the ``stemstream`` key so tests and evaluation can use tempo, meter, key and chords.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pretty_midi


@dataclass
class Chord:
    """A chord held from ``start`` to ``end`` seconds. ``root`` is a pitch class 0..11."""

    start: float
    end: float
    root: int
    quality: str  # "maj", "min", "dim", "7", "maj7", "min7", "sus4", ...
    symbol: str  # human readable, e.g. "F#min7"

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": round(self.start, 4),
            "end": round(self.end, 4),
            "root": self.root,
            "quality": self.quality,
            "symbol": self.symbol,
        }


@dataclass
class SongInfo:
    """Musical facts of a song, written to metadata for tests and evaluation."""

    source: str  # "procedural" or "chorale"
    name: str  # e.g. "procedural-seed1234" or "bwv269"
    tempo_bpm: float
    meter: str  # "4/4", "3/4", "6/8"
    key: str  # e.g. "D minor"
    chords: list[Chord] = field(default_factory=list)
    sections: list[dict[str, Any]] = field(default_factory=list)  # {"name", "start", "end"}
    roles: list[str] = field(default_factory=list)  # per instrument: "drums", "bass", "melody"...

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "name": self.name,
            "tempo_bpm": round(float(self.tempo_bpm), 3),
            "meter": self.meter,
            "key": self.key,
            "chords": [c.as_dict() for c in self.chords],
            "sections": self.sections,
            "roles": self.roles,
        }


@dataclass
class Song:
    """``midi`` has exactly one ``pretty_midi.Instrument`` per stem, in stem order."""

    midi: pretty_midi.PrettyMIDI
    info: SongInfo

    @property
    def duration(self) -> float:
        return float(self.midi.get_end_time())
