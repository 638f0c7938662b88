"""A tiny fake Slakh2100 corpus with the real metadata quirks, for the data tests.

Layout written by :func:`write_fake_slakh` (3 s tracks at 16 kHz unless noted)::

    train/Track00001  Guitar, Drums (program 128), Piano (audio_rendered: false, no flac),
                      "Strings (continued)" (shorter stem), "Chromatic Percussion"; extra keys,
                      some stems without integrated_loudness; has mix.flac
    train/Track00002  no mix.flac; Bass, Vocal, unknown class "Theremin", "Sound Effects"
    train/Track00003  one stem (Piano)
    train/Track00004  two stems, both digital silence
    train/Track00005  only Vocal and an unknown class: no eligible target
    validation/Track00006  Piano + Bass rendered at 32 kHz, with a ``stemstream:`` mapping
    test/Track00007   Organ, Bass, and a stem marked rendered whose flac is missing
    extra/Track00008  a non-standard split name; Guitar + Bass
    train/.Track00009.partial  an interrupted synth directory (must be ignored)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

SR = 16000
SECONDS = 3.0


def sine(freq: float, seconds: float = SECONDS, amp: float = 0.3, sr: int = SR) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def bursts(seconds: float = SECONDS, on: float = 0.15, period: float = 0.25, amp: float = 0.3,
           sr: int = SR, seed: int = 0) -> np.ndarray:
    """White-noise bursts ``on`` seconds long every ``period`` seconds (a drum-like stem)."""
    n = round(seconds * sr)
    noise = np.random.default_rng(seed).uniform(-amp, amp, n).astype(np.float32)
    gate = (np.arange(n) / sr) % period < on
    return noise * gate


def stem_meta(inst_class: str, program: int, is_drum: bool = False, **extra) -> dict:
    """A real-Slakh-like stem entry (plus any ``extra`` keys)."""
    meta = {
        "audio_rendered": True,
        "inst_class": inst_class,
        "integrated_loudness": -18.5,
        "is_drum": is_drum,
        "midi_program_name": f"program {program}",
        "midi_saved": True,
        "plugin_name": "fake.nkm",
        "program_num": program,
    }
    meta.update(extra)
    return meta


def write_track(
    root: Path,
    split: str,
    name: str,
    stems: dict[str, tuple[dict, np.ndarray | None]],
    mix: bool = True,
    info: dict | None = None,
    sr: int = SR,
) -> Path:
    """Write one track; a stem whose wave is ``None`` gets metadata but no flac."""
    track = root / split / name
    (track / "stems").mkdir(parents=True, exist_ok=True)
    (track / "MIDI").mkdir(exist_ok=True)
    waves = []
    for sid, (_meta, wave) in stems.items():
        if wave is not None:
            sf.write(str(track / "stems" / f"{sid}.flac"), wave, sr, subtype="PCM_24")
            (track / "MIDI" / f"{sid}.mid").write_bytes(b"MThd")
            waves.append(wave)
    if mix and waves:
        length = max(len(w) for w in waves)
        total = np.sum([np.pad(w, (0, length - len(w))) for w in waves], axis=0)
        sf.write(str(track / "mix.flac"), total, sr, subtype="PCM_24")
    metadata = {
        "UUID": f"fake-{name}",
        "audio_dir": "stems",
        "midi_dir": "MIDI",
        "normalization_factor": -13.0,
        "normalized": True,
        "overall_gain": 0.1772,
        "stems": {sid: meta for sid, (meta, _) in stems.items()},
        "target_peak": -1.0,
    }
    if info is not None:
        metadata["stemstream"] = info
    (track / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
    return track


def write_fake_slakh(root: Path) -> Path:
    """Write the corpus described in the module docstring under ``root``; returns ``root``."""
    no_loudness = stem_meta("Strings (continued)", 48, extra_key={"nested": [1, 2]})
    del no_loudness["integrated_loudness"]
    write_track(root, "train", "Track00001", {
        "S00": (stem_meta("Guitar", 30), sine(440.0)),
        "S01": (stem_meta("Drums", 128, is_drum=True), bursts()),
        "S02": (stem_meta("Piano", 0, audio_rendered=False), None),
        "S03": (no_loudness, sine(220.0, seconds=2.5)),
        "S04": (stem_meta("Chromatic Percussion", 11), sine(880.0, amp=0.1)),
    })
    write_track(root, "train", "Track00002", {
        "S00": (stem_meta("Bass", 33), sine(110.0)),
        "S01": (stem_meta("Vocal", 52), sine(330.0)),
        "S02": (stem_meta("Theremin", 40), sine(660.0)),
        "S03": (stem_meta("Sound Effects", 122), bursts(on=0.2, seed=1)),
    }, mix=False)
    write_track(root, "train", "Track00003", {"S00": (stem_meta("Piano", 0), sine(262.0))})
    silent = np.zeros(round(SECONDS * SR), dtype=np.float32)
    write_track(root, "train", "Track00004", {
        "S00": (stem_meta("Piano", 0), silent),
        "S01": (stem_meta("Bass", 33), silent),
    })
    write_track(root, "train", "Track00005", {
        "S00": (stem_meta("Vocal", 52), sine(330.0)),
        "S01": (stem_meta("Kazoo orchestra", 0), sine(440.0)),
    })
    write_track(root, "validation", "Track00006", {
        "S00": (stem_meta("Piano", 0), sine(262.0, sr=32000)),
        "S01": (stem_meta("Bass", 33), sine(65.0, amp=0.5, sr=32000)),
    }, info={"tempo_bpm": 120.0, "meter": "4/4", "key": "C major",
             "chords": [[0.0, "C"], [1.5, "G"]]}, sr=32000)
    write_track(root, "test", "Track00007", {
        "S00": (stem_meta("Organ", 16), sine(392.0)),
        "S01": (stem_meta("Guitar", 25), None),  # rendered, but the flac is missing
        "S02": (stem_meta("Bass", 33), sine(98.0)),
    })
    write_track(root, "extra", "Track00008", {
        "S00": (stem_meta("Guitar", 25), sine(392.0)),
        "S01": (stem_meta("Bass", 33), sine(98.0)),
    })
    write_track(root, "train", ".Track00009.partial", {"S00": (stem_meta("Piano", 0), silent)})
    return root
