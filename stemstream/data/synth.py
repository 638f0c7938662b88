"""Synthetic multitrack corpus in the exact Slakh2100 layout (SPEC section 3).

``synthesize_corpus`` plans ``num_tracks`` songs deterministically from one seed (procedural
songs and Bach chorales), renders every stem with FluidSynth in parallel worker processes and
writes::

    OUT/{train,validation,test}/TrackNNNNN/
        metadata.yaml  mix.flac  all_src.mid  stems/SNN.flac  MIDI/SNN.mid

``metadata.yaml`` follows Slakh's schema (``stems: {S00: {inst_class, program_num, is_drum,
audio_rendered, ...}}``) plus a ``stemstream`` mapping with tempo, meter, key, chord timeline,
sections and per-stem roles. ``mix == sum(stems)`` up to FLAC quantisation. Tracks are written
to a temporary directory and renamed when complete, so an interrupted run resumes where it
stopped (finished tracks are skipped).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pretty_midi
import yaml

from stemstream import audio
from stemstream.data.instruments import INSTRUMENT_CLASSES, class_from_program
from stemstream.data.song import Song
from stemstream.errors import ConfigError
from stemstream.outputs import prepare_output_dir

log = logging.getLogger(__name__)

SOURCES = ("procedural", "chorales")
SPLITS = ("train", "validation", "test")
MIX_PEAK = 0.9


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesise. ``chorale_fraction`` is the expected share of chorale tracks when
    both sources are on (at most 371 chorales exist; the rest is procedural)."""

    num_tracks: int = 20
    seed: int = 0
    sources: tuple[str, ...] = SOURCES
    soundfont: Path | None = None
    sample_rate: int = 16000
    song_seconds: float = 40.0
    chorale_fraction: float = 0.25
    holdout_fraction: float = 0.1  # of procedural tracks, for each of validation and test
    stem_lufs: float = -22.0
    stem_lufs_jitter_db: float = 2.0

    def __post_init__(self):
        unknown = set(self.sources) - set(SOURCES)
        if unknown or not self.sources:
            raise ConfigError(
                f"sources must be a non-empty subset of {SOURCES}, got {self.sources}"
            )
        if self.num_tracks < 1:
            raise ConfigError(f"num_tracks must be >= 1, got {self.num_tracks}")
        if not 0.0 <= self.chorale_fraction <= 1.0:
            raise ConfigError(f"chorale_fraction must be in [0, 1], got {self.chorale_fraction}")
        if self.sample_rate < 8000:
            raise ConfigError(f"sample_rate must be >= 8000 Hz, got {self.sample_rate}")


@dataclass(frozen=True)
class TrackPlan:
    """One track to render: ``source_index`` is the chorale index for chorales."""

    name: str
    split: str
    source: str
    seed: int
    source_index: int = -1


def plan_tracks(config: SynthConfig) -> list[TrackPlan]:
    """Deterministic list of tracks (names, splits, sources, seeds) for ``config``."""
    from stemstream.data.chorales import NUM_CHORALES, chorale_split

    rng = np.random.default_rng(config.seed)
    chorale_order = list(rng.permutation(NUM_CHORALES)) if "chorales" in config.sources else []
    use_chorale = rng.random(config.num_tracks) < config.chorale_fraction
    if "procedural" not in config.sources:
        use_chorale[:] = True
    seeds = rng.integers(0, 2**31 - 1, size=config.num_tracks)

    kinds = []
    for i in range(config.num_tracks):
        if use_chorale[i] and chorale_order:
            kinds.append(("chorales", int(chorale_order.pop())))
        elif "procedural" in config.sources:
            kinds.append(("procedural", -1))
        else:
            raise ConfigError(f"only {NUM_CHORALES} chorales exist; ask for fewer tracks")

    procedural = [i for i, (source, _) in enumerate(kinds) if source == "procedural"]
    n_hold = int(round(config.holdout_fraction * len(procedural))) if len(procedural) >= 3 else 0
    n_hold = max(n_hold, 1) if len(procedural) >= 3 else 0
    order = rng.permutation(len(procedural))
    proc_split = {}
    for rank, j in enumerate(order):
        proc_split[procedural[j]] = (
            "validation" if rank < n_hold else "test" if rank < 2 * n_hold else "train"
        )
    plans = []
    for i, (source, index) in enumerate(kinds):
        split = chorale_split(index) if source == "chorales" else proc_split[i]
        plans.append(TrackPlan(f"Track{i + 1:05d}", split, source, int(seeds[i]), index))
    return plans


def compose(plan: TrackPlan, config: SynthConfig) -> Song:
    """The symbolic song of a plan."""
    if plan.source == "chorales":
        from stemstream.data.chorales import load_chorale

        return load_chorale(plan.source_index, plan.seed)
    from stemstream.data.procedural import compose_song

    return compose_song(plan.seed, config.song_seconds)


@dataclass
class TrackResult:
    name: str
    split: str
    source: str
    seconds: float
    classes: list[int]
    render_seconds: float
    skipped: bool = False


_RENDERER = None


def _worker_init(soundfont: Path | None, sample_rate: int) -> None:
    global _RENDERER
    from stemstream.data.render import StemRenderer

    _RENDERER = StemRenderer(soundfont, sample_rate)


def _stem_metadata(inst: pretty_midi.Instrument, loudness_lufs: float, plugin: str) -> dict:
    cls = class_from_program(inst.program, inst.is_drum)
    name = "Drums" if inst.is_drum else pretty_midi.program_to_instrument_name(inst.program)
    return {
        "audio_rendered": True,
        "inst_class": "Drums" if inst.is_drum else INSTRUMENT_CLASSES[cls],
        "integrated_loudness": round(loudness_lufs, 3),
        "is_drum": bool(inst.is_drum),
        "midi_program_name": name,
        "midi_saved": True,
        "plugin_name": plugin,
        "program_num": 128 if inst.is_drum else int(inst.program),
    }


def render_track(plan: TrackPlan, out_dir: Path, config: SynthConfig) -> TrackResult:
    """Render one planned track into ``out_dir/split/name`` (atomically). Needs a renderer:
    call inside a worker started with :func:`_worker_init`, or after calling it yourself."""
    final = out_dir / plan.split / plan.name
    if (final / "metadata.yaml").is_file():
        meta = yaml.safe_load((final / "metadata.yaml").read_text())
        info = meta.get("stemstream", {})
        classes = [
            class_from_program(s["program_num"] % 128, s["is_drum"]) for s in meta["stems"].values()
        ]
        return TrackResult(
            plan.name, plan.split, plan.source, info.get("seconds", 0.0), classes, 0.0, skipped=True
        )
    t0 = time.perf_counter()
    song = compose(plan, config)
    sr = config.sample_rate
    num_samples = int(np.ceil((song.duration + _RENDERER.tail_seconds) * sr))
    rng = np.random.default_rng(plan.seed + 1)

    stems = []
    for inst in song.midi.instruments:
        wave = _RENDERER.render(inst, num_samples)
        target = config.stem_lufs + rng.uniform(-1, 1) * config.stem_lufs_jitter_db
        stems.append(audio.normalize_loudness(wave, sr, target, peak_limit=None))
    mix = np.sum(stems, axis=0)
    overall_gain = min(1.0, MIX_PEAK / max(float(np.abs(mix).max()), 1e-9))
    stems = [s * overall_gain for s in stems]
    mix = np.sum(stems, axis=0).astype(np.float32)

    tmp = out_dir / plan.split / f".{plan.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "stems").mkdir(parents=True)
    (tmp / "MIDI").mkdir()
    stem_meta = {}
    plugin = _RENDERER.soundfont.name
    for i, (inst, wave) in enumerate(zip(song.midi.instruments, stems, strict=True)):
        sid = f"S{i:02d}"
        audio.save(tmp / "stems" / f"{sid}.flac", wave, sr)
        single = pretty_midi.PrettyMIDI(initial_tempo=song.info.tempo_bpm)
        single.time_signature_changes = list(song.midi.time_signature_changes)
        single.instruments.append(inst)
        single.write(str(tmp / "MIDI" / f"{sid}.mid"))
        stem_meta[sid] = _stem_metadata(inst, audio.loudness(wave, sr), plugin)
    audio.save(tmp / "mix.flac", mix, sr)
    song.midi.write(str(tmp / "all_src.mid"))
    seconds = num_samples / sr
    info = song.info.as_dict() | {
        "seconds": round(seconds, 4),
        "seed": plan.seed,
        "sample_rate": sr,
    }
    metadata = {
        "UUID": f"stemstream-{plan.seed:010d}",
        "audio_dir": "stems",
        "midi_dir": "MIDI",
        "normalized": True,
        "overall_gain": round(float(overall_gain), 6),
        "stems": stem_meta,
        "target_peak": round(20 * float(np.log10(MIX_PEAK)), 3),
        "stemstream": info,
    }
    (tmp / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    classes = [class_from_program(i.program, i.is_drum) for i in song.midi.instruments]
    return TrackResult(
        plan.name, plan.split, plan.source, seconds, classes, time.perf_counter() - t0
    )


@dataclass
class CorpusStats:
    """Per-split counts, hours and class histogram, plus render throughput when measured."""

    tracks: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)
    stems: Counter = field(default_factory=Counter)
    classes: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    wall_seconds: float = 0.0
    rendered_tracks: int = 0
    rendered_seconds: float = 0.0

    def add(self, split: str, source: str, seconds: float, classes: list[int]) -> None:
        self.tracks[split] += 1
        self.seconds[split] += seconds
        self.stems[split] += len(classes)
        self.sources[source] += 1
        self.classes.update(INSTRUMENT_CLASSES[c] for c in classes)

    @property
    def total_hours(self) -> float:
        return sum(self.seconds.values()) / 3600.0

    def format(self) -> str:
        lines = [f"{'split':<12}{'tracks':>8}{'stems':>8}{'hours':>9}"]
        for split in sorted(
            self.tracks, key=lambda s: (s not in SPLITS, SPLITS.index(s) if s in SPLITS else 0, s)
        ):
            lines.append(
                f"{split:<12}{self.tracks[split]:>8}{self.stems[split]:>8}"
                f"{self.seconds[split] / 3600:>9.3f}"
            )
        lines.append(
            f"{'total':<12}{sum(self.tracks.values()):>8}{sum(self.stems.values()):>8}"
            f"{self.total_hours:>9.3f}"
        )
        if self.sources:
            lines.append(
                "sources: " + ", ".join(f"{k} {v}" for k, v in sorted(self.sources.items()))
            )
        lines.append(
            "stem classes: " + ", ".join(f"{k} {v}" for k, v in self.classes.most_common())
        )
        if self.rendered_tracks and self.wall_seconds > 0:
            lines.append(
                f"rendered {self.rendered_tracks} tracks in {self.wall_seconds:.1f} s: "
                f"{60 * self.rendered_tracks / self.wall_seconds:.1f} tracks/min, "
                f"{self.rendered_seconds / self.wall_seconds:.1f}x real time"
            )
        return "\n".join(lines)


def synthesize_corpus(
    out_dir: str | Path, config: SynthConfig, jobs: int | None = None, progress: bool = True,
    splits: Sequence[str] | None = None,
) -> CorpusStats:
    """Render the corpus planned by ``config`` into ``out_dir`` (resuming a partial one).

    Args:
        out_dir: corpus root (created).
        config: what to render.
        jobs: worker processes; default ``os.cpu_count()``; 1 renders in this process.
        progress: show a tqdm progress bar.
        splits: render only the planned tracks of these splits (``None``: all). The plan is
            the whole corpus's either way, so a split rendered first is the same split a full
            render makes (e.g. a large corpus's held-out splits before its training split).

    Returns:
        :class:`CorpusStats` of the tracks rendered (or found) with the measured throughput.
    """
    from tqdm import tqdm

    out_dir = prepare_output_dir(out_dir, "--out")
    plans = plan_tracks(config)
    if splits is not None:
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown:
            raise ConfigError(f"unknown split(s) {', '.join(unknown)}; known: "
                              f"{', '.join(SPLITS)}")
        plans = [plan for plan in plans if plan.split in splits]
    for split in SPLITS:
        prepare_output_dir(out_dir / split, "--out")
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(plans)))
    stats = CorpusStats()
    bar = tqdm(total=len(plans), desc="render", unit="track", disable=not progress)
    t0 = time.perf_counter()

    def collect(result: TrackResult) -> None:
        stats.add(result.split, result.source, result.seconds, result.classes)
        if not result.skipped:
            stats.rendered_tracks += 1
            stats.rendered_seconds += result.seconds
        bar.update()

    if jobs == 1:
        _worker_init(config.soundfont, config.sample_rate)
        for plan in plans:
            collect(render_track(plan, out_dir, config))
    else:
        with ProcessPoolExecutor(
            jobs, initializer=_worker_init, initargs=(config.soundfont, config.sample_rate)
        ) as pool:
            futures = [pool.submit(render_track, plan, out_dir, config) for plan in plans]
            for future in as_completed(futures):
                collect(future.result())
    bar.close()
    stats.wall_seconds = time.perf_counter() - t0
    return stats


def corpus_stats(corpus: str | Path) -> CorpusStats:
    """Statistics of an existing Slakh-layout corpus (real Slakh2100 or synthetic)."""
    from stemstream.data.slakh import SlakhCorpus

    reader = SlakhCorpus(corpus)
    stats = CorpusStats()
    for split in reader.splits:
        for track in reader.tracks(split):
            seconds = float(track.info.get("seconds", 0.0)) or _seconds_of(track)
            stats.add(
                split,
                track.info.get("source", "slakh"),
                seconds,
                [s.inst_class for s in track.stems],
            )
    return stats


def _seconds_of(track) -> float:
    import soundfile as sf

    if not track.stems:
        return 0.0
    return float(sf.info(str(track.stems[0].audio_path)).duration)
