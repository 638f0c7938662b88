"""Bach chorales from music21's bundled corpus (371 four-voice pieces) as :class:`Song` s.

Each voice becomes one stem with a plausible General-MIDI program (a string quartet, organ,
brass or woodwind choir, or a mixed consort, drawn from the seed). Parts are exported from
``part.stripTies().flatten().notesAndRests`` rather than with repeats expanded, because a few
chorales carry repeat marks that break plain export. The chord timeline comes from
``chordify()`` sampled on every beat.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pretty_midi

from stemstream.data.song import Chord, Song, SongInfo

NUM_CHORALES = 371
_PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# (soprano, alto, tenor, bass) GM programs per ensemble.
_ENSEMBLES: dict[str, tuple[int, int, int, int]] = {
    "strings": (40, 40, 41, 42),
    "organ": (19, 19, 19, 19),
    "brass": (56, 60, 57, 58),
    "woodwinds": (73, 68, 71, 70),
    "choir-strings": (52, 53, 41, 43),
    "mixed": (68, 71, 42, 32),
    "piano-pad": (0, 48, 49, 32),
}
_QUALITY = {"major": "maj", "minor": "min", "diminished": "dim", "augmented": "aug"}


@functools.lru_cache(maxsize=1)
def chorale_paths() -> tuple[str, ...]:
    """Corpus paths of the 371 chorales, in music21's canonical order."""
    from music21 import corpus

    return tuple(corpus.chorales.Iterator(returnType="filename"))


def chorale_split(index: int, fractions=(0.8, 0.1, 0.1)) -> str:
    """The split a chorale always belongs to, whatever the corpus size or seed (by name hash),
    so a piece never appears in two splits."""
    digest = hashlib.sha1(chorale_paths()[index].encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    return "validation" if u < fractions[0] + fractions[1] else "test"


def _chord_timeline(score, seconds_per_quarter: float) -> list[Chord]:
    chords: list[Chord] = []
    for ch in score.chordify().flatten().getElementsByClass("Chord"):
        if not ch.pitches:
            continue
        root = ch.root().pitchClass
        quality = _QUALITY.get(ch.quality, "other")
        if ch.isSeventh() and quality in ("maj", "min"):
            quality = "7" if ch.isDominantSeventh() else quality + "7"
        start = float(ch.offset) * seconds_per_quarter
        end = start + float(ch.quarterLength) * seconds_per_quarter
        if chords and chords[-1].root == root and chords[-1].quality == quality:
            chords[-1].end = end
        else:
            chords.append(Chord(start, end, root, quality, _PITCH_NAMES[root] + quality))
    for prev, nxt in zip(chords, chords[1:], strict=False):
        prev.end = nxt.start  # contiguous timeline (rests extend the previous chord)
    return chords


def load_chorale(index: int, seed: int) -> Song:
    """Chorale ``index`` (0..370) with tempo, ensemble and humanisation drawn from ``seed``."""
    from music21 import corpus

    path = chorale_paths()[index]
    score = corpus.parse(path)
    rng = np.random.default_rng(seed)
    bpm = float(rng.uniform(60.0, 96.0))
    spq = 60.0 / bpm
    ensemble = list(_ENSEMBLES)[int(rng.integers(len(_ENSEMBLES)))]
    programs = _ENSEMBLES[ensemble]

    midi = pretty_midi.PrettyMIDI(initial_tempo=bpm)
    roles = []
    for voice, part in enumerate(score.parts[:4]):
        program = programs[min(voice, 3)]
        inst = pretty_midi.Instrument(program=program, name=part.partName or f"voice{voice}")
        for el in part.stripTies().flatten().notesAndRests:
            if el.isRest:
                continue
            pitches = [p.midi for p in el.pitches]
            start = float(el.offset) * spq
            dur = float(el.quarterLength) * spq
            if dur <= 0:  # grace notes
                continue
            jitter = float(rng.normal(0.0, 0.006))
            velocity = int(np.clip(rng.normal(78, 8), 40, 120))
            for pitch in pitches:
                inst.notes.append(
                    pretty_midi.Note(velocity, pitch, max(0.0, start + jitter), start + dur * 0.97)
                )
        midi.instruments.append(inst)
        roles.append(f"{('soprano', 'alto', 'tenor', 'bass')[min(voice, 3)]} ({ensemble})")

    ts = score.parts[0].recurse().getElementsByClass("TimeSignature").first()
    meter = ts.ratioString if ts is not None else "4/4"
    num, den = (int(v) for v in meter.split("/"))
    midi.time_signature_changes.append(pretty_midi.TimeSignature(num, den, 0.0))
    key = score.analyze("key")
    name = path.split("/")[-1]
    info = SongInfo(
        source="chorales",
        name=name,
        tempo_bpm=bpm,
        meter=meter,
        key=f"{key.tonic.name} {key.mode}",
        chords=_chord_timeline(score, spq),
        sections=[{"name": "chorale", "start": 0.0, "end": round(midi.get_end_time(), 4)}],
        roles=roles,
    )
    return Song(midi, info)
