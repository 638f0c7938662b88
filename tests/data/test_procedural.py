"""The procedural songwriter: determinism, form, and the musical dependences between parts."""

from __future__ import annotations

import random
from itertools import pairwise

import numpy as np
import pytest

from stemstream.data.procedural import compose_song
from stemstream.data.song import Song

SEEDS = range(30)
SECONDS = 40.0
TOL_S = 0.03
BAR_QUARTERS = {"4/4": 4.0, "3/4": 3.0, "6/8": 3.0}
STRONG_QUARTERS = {"4/4": (0.0, 2.0), "3/4": (0.0,), "6/8": (0.0, 1.5)}
# Chord tones written out here rather than imported, so the test checks the module's tables.
QUALITY_TONES = {
    "maj": (0, 4, 7),
    "min": (0, 3, 7),
    "dim": (0, 3, 6),
    "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11),
    "min7": (0, 3, 7, 10),
}
PITCH_CLASS = {
    "C": 0,
    "C#": 1,
    "D": 2,
    "Eb": 3,
    "E": 4,
    "F": 5,
    "F#": 6,
    "G": 7,
    "Ab": 8,
    "A": 9,
    "Bb": 10,
    "B": 11,
}


@pytest.fixture(scope="module")
def songs() -> dict[int, Song]:
    return {seed: compose_song(seed, SECONDS) for seed in SEEDS}


def _part(song: Song, role: str):
    return song.midi.instruments[song.info.roles.index(role)] if role in song.info.roles else None


def _bar_s(song: Song) -> float:
    return BAR_QUARTERS[song.info.meter] * 60.0 / song.info.tempo_bpm


def _chord_at(song: Song, t: float):
    return next(c for c in song.info.chords if c.start - 1e-9 <= t < c.end)


def _chord_tones(chord) -> set[int]:
    return {(chord.root + i) % 12 for i in QUALITY_TONES[chord.quality]}


def _note_list(song: Song) -> list[tuple]:
    return [
        (i.program, i.is_drum, n.pitch, n.velocity, n.start, n.end)
        for i in song.midi.instruments
        for n in i.notes
    ]


def test_same_seed_same_song_and_no_global_random_state():
    np.random.seed(0)
    random.seed(0)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    a, b = compose_song(7), compose_song(7)
    assert _note_list(a) == _note_list(b)
    assert a.info.as_dict() == b.info.as_dict()
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state


def test_different_seeds_differ(songs):
    assert _note_list(songs[1]) != _note_list(songs[2])
    kinds = {(s.info.key, s.info.tempo_bpm, s.info.meter) for s in songs.values()}
    assert len(kinds) >= 25


def test_tempo_meter_length_and_midi_meta(songs):
    for song in songs.values():
        assert 70 <= song.info.tempo_bpm <= 170
        assert abs(song.duration - SECONDS) <= _bar_s(song) + 1e-6
        ts = song.midi.time_signature_changes
        assert len(ts) == 1 and f"{ts[0].numerator}/{ts[0].denominator}" == song.info.meter
        assert song.midi.get_tempo_changes()[1][0] == pytest.approx(song.info.tempo_bpm)
    assert {s.info.meter for s in songs.values()} == {"4/4", "3/4", "6/8"}
    for seed in range(5):
        assert compose_song(seed, 2.0).duration >= 4.95  # never shorter than 5 s


def test_band_layout(songs):
    sizes = set()
    for song in songs.values():
        insts, roles = song.midi.instruments, song.info.roles
        sizes.add(len(insts))
        assert 4 <= len(insts) <= 6 and len(roles) == len(insts)
        assert [i.is_drum for i in insts].count(True) == 1 and insts[0].is_drum
        assert roles[:2] == ["drums", "bass"] and len(set(roles)) == len(roles)
        for inst in insts[1:]:
            assert inst.name and not (96 <= inst.program <= 103 or inst.program >= 120)
        assert 32 <= insts[1].program <= 39
    assert sizes == {4, 5, 6}


def test_chords_and_sections_cover_the_song(songs):
    for song in songs.values():
        chord_bounds = [(c.start, c.end) for c in song.info.chords]
        section_bounds = [(s["start"], s["end"]) for s in song.info.sections]
        for bounds in (chord_bounds, section_bounds):
            assert bounds[0][0] == pytest.approx(0.0, abs=1e-3)
            assert all(a[1] == pytest.approx(b[0], abs=1e-3) for a, b in pairwise(bounds))
            assert bounds[-1][1] == pytest.approx(song.duration, abs=0.02)
        assert all(0 <= c.root < 12 and c.symbol for c in song.info.chords)
        final, tonic = song.info.chords[-1], PITCH_CLASS[song.info.key.split()[0]]
        assert final.root == tonic  # the song closes on its tonic


def test_notes_are_valid(songs):
    for song in songs.values():
        for inst in song.midi.instruments:
            assert inst.notes
            for n in inst.notes:
                assert 0 <= n.pitch <= 127 and 1 <= n.velocity <= 127
                assert 0.0 <= n.start < n.end <= song.duration + 1e-9


def test_monophonic_parts_and_bass_register(songs):
    for song in songs.values():
        for role in ("bass", "melody", "arpeggio"):
            inst = _part(song, role)
            notes = sorted(inst.notes, key=lambda n: n.start) if inst else []
            assert all(a.end <= b.start + 1e-9 for a, b in pairwise(notes))
        assert all(28 <= n.pitch <= 55 for n in _part(song, "bass").notes)  # E1..G3


def test_bass_plays_the_root_on_chord_changes(songs):
    hits = total = 0
    for song in songs.values():
        for chord in song.info.chords:
            for n in _part(song, "bass").notes:
                if abs(n.start - chord.start) <= TOL_S:
                    total += 1
                    hits += n.pitch % 12 == chord.root
    assert total >= len(songs) * 10 and hits / total >= 0.8


def test_melody_strong_beats_are_chord_tones(songs):
    on_chord = on_strong = 0
    for song in songs.values():
        melody = _part(song, "melody")
        bar_s, beat_s = _bar_s(song), 60.0 / song.info.tempo_bpm
        strong = [
            b * bar_s + q * beat_s
            for b in range(round(song.duration / bar_s) + 1)
            for q in STRONG_QUARTERS[song.info.meter]
        ]
        for n in melody.notes if melody else []:
            if min(abs(n.start - t) for t in strong) <= TOL_S and n.start < song.duration:
                on_strong += 1
                on_chord += n.pitch % 12 in _chord_tones(_chord_at(song, n.start + TOL_S))
    assert on_strong >= 200 and on_chord / on_strong >= 0.6


def test_chordal_parts_play_the_chord(songs):
    for song in songs.values():
        for role in ("comping", "pad", "arpeggio"):
            inst = _part(song, role)
            if inst is None:
                continue
            inside = [
                n.pitch % 12 in _chord_tones(_chord_at(song, (n.start + n.end) / 2))
                for n in inst.notes
            ]
            assert np.mean(inside) >= 0.95, (role, song.info.name)


def test_drums_carry_the_meter(songs):
    backbeat = {"4/4": (1.0, 3.0), "6/8": (1.5,)}
    for song in songs.values():
        drums, bar_s = _part(song, "drums"), _bar_s(song)
        bars = np.arange(round(song.duration / bar_s)) * bar_s
        kicks = np.array([n.start for n in drums.notes if n.pitch in (35, 36)])
        on_kick = [np.min(np.abs(kicks - t)) <= TOL_S for t in bars]
        assert np.mean(on_kick) >= 0.9
        if song.info.meter in backbeat:  # snare on 2 and 4 (4/4) or the second pulse (6/8)
            snares = np.array([n.start for n in drums.notes if n.pitch == 38])
            beat_s = 60.0 / song.info.tempo_bpm
            spots = [t + q * beat_s for t in bars[:-1] for q in backbeat[song.info.meter]]
            assert np.mean([np.min(np.abs(snares - t)) <= TOL_S for t in spots]) >= 0.8


def test_section_starts_crash_and_fills_precede_them(songs):
    for song in songs.values():
        drums = _part(song, "drums").notes
        for sec in song.info.sections[1:]:
            assert any(n.pitch == 49 and abs(n.start - sec["start"]) <= TOL_S for n in drums)
            fill = [n for n in drums if sec["start"] - _bar_s(song) / 2 <= n.start < sec["start"]]
            assert any(n.pitch in (41, 43, 45, 47, 48, 50) for n in fill), song.info.name


def test_repeated_sections_repeat(songs):
    for song in songs.values():
        by_name: dict[str, list[dict]] = {}
        for sec in song.info.sections:
            by_name.setdefault(sec["name"], []).append(sec)
        repeats = [secs for secs in by_name.values() if len(secs) > 1]
        assert repeats, song.info.name
        for secs in repeats:

            def content(sec, song=song):
                chords = [
                    (c.root, c.quality)
                    for c in song.info.chords
                    if sec["start"] - 1e-3 <= c.start < sec["end"] - 1e-3
                ]
                parts = [
                    [
                        n.pitch
                        for n in inst.notes
                        if sec["start"] - TOL_S <= n.start < sec["end"] - TOL_S
                    ]
                    for inst in song.midi.instruments
                ]
                return chords, parts

            assert all(content(s) == content(secs[0]) for s in secs[1:])


def test_humanised_timing_and_accents(songs):
    for song in songs.values():
        drums, bar_s = _part(song, "drums"), _bar_s(song)
        grid_s = 60.0 / song.info.tempo_bpm / 4  # sixteenths
        offsets = np.array([(n.start / grid_s) - round(n.start / grid_s) for n in drums.notes])
        offsets *= grid_s
        assert np.all(np.abs(offsets) <= 0.016) and np.mean(np.abs(offsets) > 1e-4) > 0.5
        phase = np.array([n.start % bar_s for n in drums.notes])
        downbeat = np.minimum(phase, bar_s - phase) <= TOL_S
        velocity = np.array([n.velocity for n in drums.notes])
        assert velocity[downbeat].mean() > velocity[~downbeat].mean()
