"""Render one MIDI instrument to audio with FluidSynth and a General-MIDI SoundFont.

A :class:`StemRenderer` keeps one "keeper" synth holding the SoundFont so that the fresh synth
made for every stem loads it from FluidSynth's sample cache (~25 ms instead of ~400 ms). A
fresh synth per stem makes every render independent of what was rendered before (no reverb
tails or controller state leaking between stems), hence deterministic whatever the worker.
Output is read as float32 (``fluid_synth_write_float``), so no dither noise is added.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi

from stemstream.errors import DependencyError

log = logging.getLogger(__name__)

SOUNDFONT_CANDIDATES = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
)
DRUM_CHANNEL = 9
_BLOCK = 4096  # samples rendered per FluidSynth call between events


def default_soundfont() -> Path:
    """FluidR3_GM (Debian ``fluid-soundfont-gm``) if installed, else pretty_midi's TimGM6mb."""
    for path in SOUNDFONT_CANDIDATES:
        if path.is_file():
            return path
    fallback = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if fallback.is_file():
        return fallback
    raise DependencyError(
        "no General-MIDI SoundFont found: install Debian's fluid-soundfont-gm or pass --soundfont"
    )


def _import_fluidsynth():
    try:
        import fluidsynth
    except (ImportError, OSError) as err:
        raise DependencyError(
            "FluidSynth is not available: install Debian's libfluidsynth3 (scripts/setup.sh does)"
        ) from err
    return fluidsynth


@dataclass(frozen=True)
class _Event:
    sample: int
    order: int  # note-offs before note-ons at the same sample, so repeated notes retrigger
    kind: str
    a: int
    b: int = 0


def _events(instrument: pretty_midi.Instrument, sample_rate: int) -> list[_Event]:
    def at(t: float) -> int:
        return max(0, int(round(t * sample_rate)))

    events = []
    for note in instrument.notes:
        events.append(_Event(at(note.start), 1, "on", note.pitch, note.velocity))
        events.append(_Event(at(note.end), 0, "off", note.pitch))
    for cc in instrument.control_changes:
        events.append(_Event(at(cc.time), 0, "cc", cc.number, cc.value))
    for bend in instrument.pitch_bends:
        events.append(_Event(at(bend.time), 0, "bend", bend.pitch))
    return sorted(events, key=lambda e: (e.sample, e.order))


class StemRenderer:
    """Renders single instruments to mono float32 audio.

    Args:
        soundfont: a General-MIDI ``.sf2``; ``None`` picks :func:`default_soundfont`.
        sample_rate: output rate in Hz (FluidSynth renders natively at this rate).
        tail_seconds: rendered after the last note-off so releases and reverb decay.
    """

    def __init__(
        self, soundfont: Path | None = None, sample_rate: int = 16000, tail_seconds: float = 1.0
    ):
        self._fs = _import_fluidsynth()
        self.soundfont = Path(soundfont) if soundfont else default_soundfont()
        if not self.soundfont.is_file():
            raise DependencyError(f"SoundFont not found: {self.soundfont}")
        self.sample_rate = sample_rate
        self.tail_seconds = tail_seconds
        self._keeper = self._new_synth()[0]
        self._write_float = self._fs._fl.fluid_synth_write_float
        self._write_float.argtypes = [ctypes.c_void_p, ctypes.c_int] + [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ] * 2
        self._write_float.restype = ctypes.c_int

    def _new_synth(self):
        synth = self._fs.Synth(gain=0.5, samplerate=float(self.sample_rate))
        sfid = synth.sfload(str(self.soundfont))
        if sfid < 0:
            raise DependencyError(f"FluidSynth could not load SoundFont {self.soundfont}")
        return synth, sfid

    def _write(self, synth, n: int) -> np.ndarray:
        left = np.zeros(n, dtype=np.float32)
        right = np.zeros(n, dtype=np.float32)
        self._write_float(synth.synth, n, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
        return 0.5 * (left + right)

    def render(
        self, instrument: pretty_midi.Instrument, num_samples: int | None = None
    ) -> np.ndarray:
        """Render ``instrument`` alone.

        Args:
            instrument: its ``program`` and ``is_drum`` select the GM preset.
            num_samples: exact output length; default: last event plus the tail.

        Returns:
            ``float32 [N]`` mono audio.
        """
        events = _events(instrument, self.sample_rate)
        if num_samples is None:
            last = events[-1].sample if events else 0
            num_samples = last + int(self.tail_seconds * self.sample_rate)
        synth, sfid = self._new_synth()
        try:
            channel = DRUM_CHANNEL if instrument.is_drum else 0
            synth.program_select(
                channel,
                sfid,
                128 if instrument.is_drum else 0,
                0 if instrument.is_drum else instrument.program,
            )
            out = np.zeros(num_samples, dtype=np.float32)
            pos = 0
            for event in events:
                if event.sample >= num_samples:
                    break
                pos = self._fill(synth, out, pos, event.sample)
                if event.kind == "on":
                    synth.noteon(channel, event.a, event.b)
                elif event.kind == "off":
                    synth.noteoff(channel, event.a)
                elif event.kind == "cc":
                    synth.cc(channel, event.a, event.b)
                else:
                    synth.pitch_bend(channel, event.a)
            self._fill(synth, out, pos, num_samples)
        finally:
            synth.delete()
        return out

    def _fill(self, synth, out: np.ndarray, start: int, stop: int) -> int:
        while start < stop:
            n = min(_BLOCK, stop - start)
            out[start : start + n] = self._write(synth, n)
            start += n
        return stop

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.delete()
            self._keeper = None
