"""Procedural band songs: a seeded songwriter that writes General-MIDI multitrack songs.

A :class:`SongPlan` fixes key, mode, tempo, meter, form and one chord progression per section
name; every part (drums, bass, comping, pad, arpeggio, melody) is then written against that plan,
so the stems depend on each other as in a band: the bass plays the chord roots on the beat, the
comping and pads voice the same chords, the melody lands on chord tones on strong beats, and the
drums mark bars, fills and section starts. A part is written once per section name and copied
to every repeat of that section (only the humanisation differs). All randomness comes from
``numpy.random.default_rng(seed)``, so a seed always gives the same song.

Times inside this module are in quarter notes from the section or song start; they become
seconds only when the MIDI is built. ``tempo_bpm`` is quarter notes per minute, as in MIDI, in
every meter (a 6/8 bar is three quarters long).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np
import pretty_midi

from stemstream.data.song import Chord, Song, SongInfo

_PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
}
_INTERVALS = {
    "maj": (0, 4, 7),
    "min": (0, 3, 7),
    "dim": (0, 3, 6),
    "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11),
    "min7": (0, 3, 7, 10),
}
# fmt: off
# Progressions as (semitones above the tonic, quality), one entry per chord slot.
_PROGRESSIONS = {
    "major": [[(0, "maj"), (7, "maj"), (9, "min"), (5, "maj")],     # I-V-vi-IV
              [(0, "maj"), (9, "min"), (5, "maj"), (7, "maj")],     # I-vi-IV-V
              [(2, "min7"), (7, "7"), (0, "maj7"), (0, "maj7")],    # ii-V-I
              [(0, "7"), (5, "7"), (0, "7"), (7, "7")],             # blues-ish I7-IV7-I7-V7
              [(0, "maj"), (5, "maj"), (7, "maj"), (5, "maj")],     # I-IV-V-IV
              [(9, "min"), (5, "maj"), (0, "maj"), (7, "maj")]],    # vi-IV-I-V
    "minor": [[(0, "min"), (8, "maj"), (3, "maj"), (10, "maj")],    # i-VI-III-VII
              [(0, "min"), (10, "maj"), (8, "maj"), (7, "maj")],    # Andalusian cadence
              [(0, "min"), (5, "min"), (7, "7"), (0, "min")],       # i-iv-V7-i
              [(0, "min7"), (5, "min7"), (10, "7"), (3, "maj7")],   # i-iv-VII-III
              [(2, "dim"), (7, "7"), (0, "min"), (0, "min")]],      # ii°-V7-i
    "dorian": [[(0, "min7"), (5, "7"), (0, "min7"), (5, "7")],      # i-IV vamp
               [(0, "min"), (10, "maj"), (5, "maj"), (0, "min")],   # i-VII-IV-i
               [(0, "min7"), (2, "min7"), (5, "7"), (0, "min7")]],  # i-ii-IV-i
}
_FORMS = (("A", "A", "B", "A"), ("A", "B", "A", "B"), ("A", "A", "B", "B"),
          ("verse", "chorus", "verse", "chorus"), ("verse", "verse", "chorus", "verse"))
# GM programs per role. Sound effects (120-127) and synth effects (96-103) are left out: they
# are odd or nearly inaudible in FluidR3_GM / TimGM6mb.
_PROGRAMS = {
    "bass": (32, 33, 34, 35, 36, 37, 38, 39),
    "comping": (0, 1, 2, 4, 5, 7, 24, 25, 26, 27, 28, 29),
    "pad": (16, 17, 18, 19, 48, 49, 50, 51, 52, 53, 88, 89, 90, 91, 92, 94),
    "arpeggio": (0, 4, 6, 8, 10, 11, 12, 24, 25, 46, 81),
    "melody": (11, 22, 40, 56, 64, 65, 66, 68, 71, 73, 74, 80, 81),
}
_OPTIONAL_ROLES, _ROLE_WEIGHTS = ("comping", "pad", "arpeggio", "melody"), (0.25, 0.2, 0.15, 0.4)
# Comping hits and melody rhythms as onsets within one bar, per meter. A melody phrase uses
# free bars and closes with an ending bar whose last note is held.
_COMP_RHYTHMS = {"4/4": [[0, 1, 2, 3], [0, 1.5], [0.5, 1.5, 2.5, 3.5], [0, 1, 1.5, 2.5, 3], [0, 2]],
                 "3/4": [[1, 2], [0, 1, 2], [0], [0, 1, 1.5, 2]],
                 "6/8": [[0, 0.5, 1, 1.5, 2, 2.5], [0, 1.5], [0, 1, 1.5, 2.5]]}
_MELODY_FREE = {"4/4": [[0, 1, 2, 3], [0, 1.5, 2, 3], [0, 0.5, 1, 2, 3], [0, 1, 1.5, 2, 2.5, 3]],
                "3/4": [[0, 1, 2], [0, 1, 1.5, 2], [0, 0.5, 1, 2]],
                "6/8": [[0, 1, 1.5, 2.5], [0, 0.5, 1, 1.5, 2, 2.5], [0, 1, 1.5, 2, 2.5]]}
_MELODY_ENDING = {"4/4": [[0, 1, 2], [0, 2]], "3/4": [[0, 1], [0]], "6/8": [[0, 1], [0]]}
# fmt: on
_KICK, _SNARE, _CLOSED_HAT, _RIDE, _CRASH = 36, 38, 42, 51, 49
_FILL_PITCHES = (38, 38, 50, 48, 47, 45, 43, 41)  # snare, then toms from high to low
_E1, _G3 = 28, 55  # bass register
_MELODY_RANGE = range(60, 85)
_MONOPHONIC = ("bass", "melody", "arpeggio")


@dataclass(frozen=True)
class Meter:
    """A time signature in quarter notes."""

    name: str
    bar_q: float
    beat_q: float  # 1 in simple meters, a dotted quarter in 6/8
    strong_q: tuple[float, ...]  # onsets within the bar where the melody sits on a chord tone


_METERS = {
    "4/4": Meter("4/4", 4.0, 1.0, (0.0, 2.0)),
    "3/4": Meter("3/4", 3.0, 1.0, (0.0,)),
    "6/8": Meter("6/8", 3.0, 1.5, (0.0, 1.5)),
}
_METER_WEIGHTS = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class Slot:
    """One chord from ``start`` to ``end`` quarters after its section's start."""

    start: float
    end: float
    root: int  # pitch class
    quality: str
    final: bool = False  # the closing tonic, which every part simply holds

    @property
    def pitch_classes(self) -> list[int]:
        return [(self.root + i) % 12 for i in _INTERVALS[self.quality]]


@dataclass(frozen=True)
class Section:
    name: str
    start_bar: int
    num_bars: int
    slots: tuple[Slot, ...]


@dataclass(frozen=True)
class SongPlan:
    """Everything the parts share: key, tempo, meter, form with chords, and the band."""

    tonic: int
    mode: str
    tempo_bpm: float
    meter: Meter
    sections: tuple[Section, ...]
    roles: tuple[str, ...]

    @property
    def seconds_per_q(self) -> float:
        return 60.0 / self.tempo_bpm

    @property
    def duration_s(self) -> float:
        return sum(s.num_bars for s in self.sections) * self.meter.bar_q * self.seconds_per_q


@dataclass(frozen=True)
class Note:
    start: float  # quarters
    end: float
    pitch: int
    velocity: int


def _cycle(prog: list[tuple[int, str]], tonic: int, num_slots: int, slot_q: float) -> list[Slot]:
    """Repeat a progression over ``num_slots`` chords of ``slot_q`` quarters each."""
    chords = [prog[i % len(prog)] for i in range(num_slots)]
    return [
        Slot(i * slot_q, (i + 1) * slot_q, (tonic + o) % 12, q) for i, (o, q) in enumerate(chords)
    ]


def _with_cadence(slots: list[Slot], tonic: int, mode: str, bar_q: float) -> list[Slot]:
    """End on a V7-I cadence: the dominant in the second-to-last bar, the tonic held in the last."""
    last = slots[-1].end - bar_q
    dominant = (tonic + 7) % 12
    body = [replace(s, root=dominant, quality="7") if s.start >= last - bar_q else s for s in slots]
    tonic_chord = Slot(last, last + bar_q, tonic, "maj" if mode == "major" else "min", final=True)
    return [s for s in body if s.start < last] + [tonic_chord]


def _plan_song(rng: np.random.Generator, seconds: float) -> SongPlan:
    """Draw key, mode, tempo, meter, form, progressions and the band for one song."""
    tonic, mode = int(rng.integers(12)), str(rng.choice(list(_SCALES), p=[0.5, 0.35, 0.15]))
    tempo = float(rng.integers(70, 171))
    meter = _METERS[str(rng.choice(list(_METERS), p=_METER_WEIGHTS))]
    # Two chords a bar split 3/4 unevenly, so 3/4 keeps one.
    chords_per_bar = 2 if meter.name != "3/4" and rng.random() < 0.3 else 1
    bar_s = meter.bar_q * 60.0 / tempo
    num_bars = max(round(seconds / bar_s), int(np.ceil(5.0 / bar_s)))
    section_bars = 8 if num_bars >= 33 and rng.random() < 0.5 else 4 if num_bars >= 9 else 2
    section_bars = min(section_bars, max(num_bars - 1, 1))
    form = _FORMS[rng.integers(len(_FORMS))]
    order = rng.permutation(len(_PROGRESSIONS[mode]))  # a different progression per name
    progs = {name: _PROGRESSIONS[mode][order[i]] for i, name in enumerate(dict.fromkeys(form))}
    num_full = (num_bars - 1) // section_bars  # the rest, at least one bar, is the outro
    sections = []
    for i in range(num_full + 1):
        name = form[i % len(form)] if i < num_full else "outro"
        n = section_bars if i < num_full else num_bars - num_full * section_bars
        slots = _cycle(
            progs.get(name, progs[form[0]]), tonic, n * chords_per_bar, meter.bar_q / chords_per_bar
        )
        if name == "outro":
            slots = _with_cadence(slots, tonic, mode, meter.bar_q)
        sections.append(Section(name, i * section_bars, n, tuple(slots)))
    extra = rng.choice(
        _OPTIONAL_ROLES, size=int(rng.integers(2, 5)), replace=False, p=_ROLE_WEIGHTS
    )
    roles = ("drums", "bass", *(r for r in _OPTIONAL_ROLES if r in extra))
    return SongPlan(tonic, mode, tempo, meter, tuple(sections), roles)


def _accent(meter: Meter, t: float) -> int:
    """Velocity boost: most on the downbeat, some on other beats, none off the beat."""
    beats = (t % meter.bar_q) / meter.beat_q
    return 14 if beats < 1e-6 else 7 if abs(beats - round(beats)) < 1e-6 else 0


def _grid(start: float, end: float, step: float) -> list[float]:
    return [float(t) for t in np.arange(start, end - 1e-6, step)]


def _drums(plan: SongPlan, sec: Section, rng: np.random.Generator) -> list[Note]:
    """A groove carrying the meter, a crash on the section start and a fill in its last bar."""
    m, name = plan.meter, plan.meter.name
    hat = _RIDE if rng.random() < 0.3 else _CLOSED_HAT
    hat_q = 1.0 if plan.tempo_bpm > 150 and name == "4/4" else 0.5
    if name == "4/4":  # kick on 1 and 3 (plus a syncopated push), backbeat on 2 and 4
        kicks = [0.0, 2.0] + ([float(rng.choice([1.5, 2.5]))] if rng.random() < 0.6 else [])
        snares = [1.0, 3.0]
    elif name == "3/4":  # waltz: kick on 1, snare on 2 and 3 or only on 3
        kicks, snares = [0.0], [1.0, 2.0] if rng.random() < 0.5 else [2.0]
    else:  # 6/8: kick on the first dotted quarter, snare on the second
        kicks, snares = [0.0] + ([2.5] if rng.random() < 0.5 else []), [1.5]
    groove = (
        [(t, _KICK, 100) for t in kicks]
        + [(t, _SNARE, 95) for t in snares]
        + [(t, hat, 62) for t in _grid(0, m.bar_q, hat_q)]
    )
    fill_from = m.bar_q - (2.0 if name == "4/4" and rng.random() < 0.5 else m.beat_q)
    fill = [
        (t, _FILL_PITCHES[i % len(_FILL_PITCHES)], 80 + 3 * i)
        for i, t in enumerate(_grid(fill_from, m.bar_q, 0.5 if name == "6/8" else 0.25))
    ]
    notes = []
    for b in range(sec.num_bars):
        last = b == sec.num_bars - 1
        if last and sec.slots[-1].final:  # the song ends on one kick and crash
            events = [(0.0, _KICK, 110), (0.0, _CRASH, 110)]
        else:
            events = [e for e in groove if not last or e[0] < fill_from] + (fill if last else [])
            events += [(0.0, _CRASH, 105)] if b == 0 else []
        t0 = b * m.bar_q
        notes += [Note(t0 + t, t0 + t + 0.25, p, min(127, v + _accent(m, t))) for t, p, v in events]
    return notes


def _bass(plan: SongPlan, sec: Section, rng: np.random.Generator) -> list[Note]:
    """The root on every chord change, then beats, fifths, octaves or approach notes."""
    style = str(rng.choice(["pulse", "root-fifth", "octaves", "walking"]))
    notes = []
    for i, slot in enumerate(sec.slots):
        root = _E1 + (slot.root - _E1) % 12
        tones = [root + iv for iv in _INTERVALS[slot.quality]]
        step = 0.5 if style == "octaves" else plan.meter.beat_q
        onsets = [slot.start] if slot.final else _grid(slot.start, slot.end, step)
        nxt = sec.slots[i + 1].root if i + 1 < len(sec.slots) else None
        for j, t in enumerate(onsets):
            if j == 0 or style == "pulse":
                pitch = root
            elif style == "walking":
                pitch = int(rng.choice(tones))
            else:  # the fifth on the middle beats, or an octave leap on a weak eighth
                pitch = tones[2] if style == "root-fifth" else root + 12 * (j % 4 == 2)
            if 0 < j == len(onsets) - 1 and nxt is not None and rng.random() < 0.4:
                target = _E1 + (nxt - _E1) % 12  # chromatic approach into the next root
                pitch = target + (1 if target == _E1 else int(rng.choice([-1, 1])))
            end = onsets[j + 1] if j + 1 < len(onsets) else slot.end
            gate = 1.0 if slot.final else 0.9
            notes.append(
                Note(t, t + gate * (end - t), min(pitch, _G3), 90 + _accent(plan.meter, t))
            )
    return notes


def _close_voicing(pcs: list[int], center: int) -> list[int]:
    """Chord tones within a fifth of ``center``, so consecutive chords move by small steps."""
    return sorted(center - 6 + (pc - center + 6) % 12 for pc in pcs)


def _open_voicing(pcs: list[int], center: int) -> list[int]:
    """Root, fifth and seventh below ``center`` with the third an octave up, as pads spread."""
    root = center - 12 + (pcs[0] - center) % 12
    third = root + 12 + (pcs[1] - pcs[0]) % 12
    return sorted([root, third] + [root + (pc - pcs[0]) % 12 for pc in pcs[2:]])


def _comping(plan: SongPlan, sec: Section, rng: np.random.Generator) -> list[Note]:
    """Close chords in a rhythm pattern; each hit stops before the next hit or chord change."""
    m = plan.meter
    rhythm = _COMP_RHYTHMS[m.name][rng.integers(len(_COMP_RHYTHMS[m.name]))]
    onsets = [b * m.bar_q + t for b in range(sec.num_bars) for t in rhythm]
    notes = []
    for slot in sec.slots:
        hits = [slot.start] if slot.final else [t for t in onsets if slot.start <= t < slot.end]
        for j, t in enumerate(hits):
            nxt = min(hits[j + 1] if j + 1 < len(hits) else slot.end, t + 1.5 * m.beat_q)
            end = slot.end if slot.final else t + 0.9 * (nxt - t)
            vel = 72 + _accent(m, t)
            notes += [Note(t, end, p, vel) for p in _close_voicing(slot.pitch_classes, 64)]
    return notes


def _pad(plan: SongPlan, sec: Section, rng: np.random.Generator) -> list[Note]:
    """Open voicings held legato for each whole chord."""
    return [
        Note(s.start, s.end, p, 62) for s in sec.slots for p in _open_voicing(s.pitch_classes, 62)
    ]


def _arpeggio(plan: SongPlan, sec: Section, rng: np.random.Generator) -> list[Note]:
    """Chord tones one at a time in eighths or sixteenths, in an up, up-down or Alberti order."""
    step = 0.25 if plan.tempo_bpm < 110 and plan.meter.name != "6/8" else 0.5
    order = [[0, 1, 2, 3], [0, 1, 2, 3, 2, 1], [0, 2, 1, 2]][rng.integers(3)]
    notes = []
    for slot in sec.slots:
        tones = _close_voicing(slot.pitch_classes, 67)
        tones.append(tones[0] + 12)
        if slot.final:
            notes.append(Note(slot.start, slot.end, tones[0], 70))
        for j, t in enumerate([] if slot.final else _grid(slot.start, slot.end, step)):
            pitch = tones[order[j % len(order)] % len(tones)]
            notes.append(Note(t, t + step, pitch, 64 + _accent(plan.meter, t)))
    return notes


def _melody_rhythm(
    plan: SongPlan, sec: Section, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """(onset, end) pairs: one rhythm motif per phrase of up to two bars, rest at phrase end."""
    m = plan.meter
    phrase_bars = min(2, sec.num_bars)
    free, endings = _MELODY_FREE[m.name], _MELODY_ENDING[m.name]
    motif = [free[rng.integers(len(free))] for _ in range(phrase_bars - 1)]
    motif.append(endings[rng.integers(len(endings))])
    onsets, ends = [], []
    for b in range(sec.num_bars):
        bar = [b * m.bar_q + t for t in motif[b % phrase_bars]]
        rest = 0.5 if b % phrase_bars == phrase_bars - 1 else 0.0
        onsets += bar
        ends += bar[1:] + [(b + 1) * m.bar_q - rest]
    return list(zip(onsets, ends, strict=True))


def _melody(plan: SongPlan, sec: Section, rng: np.random.Generator) -> list[Note]:
    """Chord tones on strong beats, mostly stepwise passing tones between them."""
    scale = {(plan.tonic + s) % 12 for s in _SCALES[plan.mode]}
    pitch, direction, notes = 64 + int(rng.integers(8)), 1, []
    for t, end in _melody_rhythm(plan, sec, rng):
        slot = next(s for s in sec.slots if s.start <= t < s.end)
        chord = set(slot.pitch_classes)
        if slot.final:  # close on the nearest tonic and hold it
            pitch = min(_MELODY_RANGE, key=lambda p: (p % 12 != slot.root, abs(p - pitch)))
            notes.append(Note(slot.start, slot.end, pitch, 84))
            break
        # Scale tones a semitone from a chord tone are avoid notes; leaving them out keeps
        # passing tones from rubbing against the comping.
        passing = {pc for pc in scale if (pc + 1) % 12 not in chord and (pc - 1) % 12 not in chord}
        strong = any(abs(t % plan.meter.bar_q - s) < 1e-6 for s in plan.meter.strong_q)
        cands = [p for p in _MELODY_RANGE if p % 12 in chord or (not strong and p % 12 in passing)]
        if strong:  # a near chord tone, not always the nearest, so the line moves
            pitch = sorted(cands, key=lambda p: abs(p - pitch))[rng.choice(3, p=[0.45, 0.35, 0.2])]
        else:  # a step or skip, keeping the direction most of the time
            direction = -direction if rng.random() < 0.25 else direction
            idx = min(range(len(cands)), key=lambda i: abs(cands[i] - pitch))
            idx += direction * (1 if rng.random() < 0.75 else 2)
            if not 0 <= idx < len(cands):
                direction, idx = -direction, min(max(idx, 0), len(cands) - 1)
            pitch = cands[idx]
        notes.append(Note(t, t + 0.95 * (end - t), pitch, 80 + _accent(plan.meter, t)))
    return notes


_Writer = Callable[[SongPlan, Section, np.random.Generator], list[Note]]
_WRITERS: dict[str, _Writer] = {
    "drums": _drums,
    "bass": _bass,
    "comping": _comping,
    "pad": _pad,
    "arpeggio": _arpeggio,
    "melody": _melody,
}


def _write_part(writer: _Writer, plan: SongPlan, rng: np.random.Generator) -> list[Note]:
    """Write each section name once and copy it to every repeat, as a band replays a part."""
    templates: dict[str, list[Note]] = {}
    notes = []
    for sec in plan.sections:
        if sec.name not in templates:
            templates[sec.name] = writer(plan, sec, rng)
        off = sec.start_bar * plan.meter.bar_q
        notes += [replace(n, start=n.start + off, end=n.end + off) for n in templates[sec.name]]
    return sorted(notes, key=lambda n: (n.start, n.pitch))


def _humanise(
    notes: list[Note], plan: SongPlan, rng: np.random.Generator, jitter_s: float, monophonic: bool
) -> list[pretty_midi.Note]:
    """Notes in seconds with a few ms of timing jitter and velocity noise, inside the song."""
    jitter = np.clip(rng.normal(0.0, jitter_s, (len(notes), 2)), -2.5 * jitter_s, 2.5 * jitter_s)
    velocity = np.clip(np.round([n.velocity for n in notes] + rng.normal(0, 4, len(notes))), 1, 127)
    spq, total = plan.seconds_per_q, plan.duration_s
    out = [
        pretty_midi.Note(
            int(v), n.pitch, max(0.0, n.start * spq + j0), min(total, n.end * spq + j1)
        )
        for n, (j0, j1), v in zip(notes, jitter, velocity, strict=True)
    ]
    if monophonic:  # jitter must not push a note into the next one
        for a, b in pairwise(out):
            a.end = min(a.end, b.start)
    return [n for n in out if n.end - n.start > 0.01]


def compose_song(seed: int, seconds: float = 40.0) -> Song:
    """Write one procedural band song.

    Args:
        seed: Seeds ``numpy.random.default_rng``; the same seed gives the same song.
        seconds: Wanted length. The song has whole bars, lasts within about a bar of this and
            at least 5 s, and ends on a held tonic chord.

    Returns:
        A :class:`Song` with one instrument per stem (drums, bass and 2-4 of comping, pad,
        arpeggio, melody, in that order) and its tempo, meter, key, chords, sections and roles.
    """
    rng = np.random.default_rng(seed)
    plan = _plan_song(rng, seconds)
    midi = pretty_midi.PrettyMIDI(initial_tempo=plan.tempo_bpm)
    num, den = (int(x) for x in plan.meter.name.split("/"))
    midi.time_signature_changes.append(pretty_midi.TimeSignature(num, den, 0.0))
    # Dorian shares its key signature with the major key a whole tone below.
    key_number = {"major": plan.tonic, "minor": plan.tonic + 12, "dorian": (plan.tonic - 2) % 12}
    midi.key_signature_changes.append(pretty_midi.KeySignature(key_number[plan.mode], 0.0))
    for role in plan.roles:
        drums = role == "drums"
        program = 0 if drums else int(rng.choice(_PROGRAMS[role]))
        gm_name = "Standard Kit" if drums else pretty_midi.program_to_instrument_name(program)
        inst = pretty_midi.Instrument(program, is_drum=drums, name=f"{role} ({gm_name})")
        notes = _write_part(_WRITERS[role], plan, rng)
        inst.notes = _humanise(notes, plan, rng, 0.004 if drums else 0.006, role in _MONOPHONIC)
        midi.instruments.append(inst)
    return Song(midi=midi, info=_song_info(plan, seed))


def _song_info(plan: SongPlan, seed: int) -> SongInfo:
    """Chords and sections in seconds, for metadata and tests."""
    bar_s = plan.meter.bar_q * plan.seconds_per_q
    chords, sections = [], []
    for sec in plan.sections:
        t0 = sec.start_bar * bar_s
        sections.append(
            {"name": sec.name, "start": round(t0, 4), "end": round(t0 + sec.num_bars * bar_s, 4)}
        )
        for s in sec.slots:
            symbol = _PITCH_NAMES[s.root] + ("" if s.quality == "maj" else s.quality)
            start, end = t0 + s.start * plan.seconds_per_q, t0 + s.end * plan.seconds_per_q
            chords.append(Chord(start, end, s.root, s.quality, symbol))
    key = f"{_PITCH_NAMES[plan.tonic]} {plan.mode}"
    return SongInfo(
        "procedural",
        f"procedural-{seed}",
        plan.tempo_bpm,
        plan.meter.name,
        key,
        chords,
        sections,
        list(plan.roles),
    )
