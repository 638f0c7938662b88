"""Corpus rendering speed: tracks/min and x real time of `stemstream data synth`.

Also renders a few of the same songs with pretty_midi's own ``PrettyMIDI.fluidsynth`` (a fresh
synth and SoundFont load per instrument, int16 output) as the baseline measured in this run,
and prints our speed-up over it.

    python benchmarks/synth_speed.py --tracks 200 --jobs 2
"""

from __future__ import annotations

import argparse
import tempfile
import time

from stemstream.data.render import default_soundfont
from stemstream.data.synth import SynthConfig, compose, plan_tracks, synthesize_corpus


def baseline_seconds_per_audio_second(config: SynthConfig, n: int) -> float:
    total_audio = total_wall = 0.0
    for plan in plan_tracks(config)[:n]:
        song = compose(plan, config)
        t0 = time.perf_counter()
        song.midi.fluidsynth(fs=config.sample_rate, synthesizer=str(default_soundfont()))
        total_wall += time.perf_counter() - t0
        total_audio += song.duration
    return total_wall / total_audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-tracks", type=int, default=6)
    args = parser.parse_args()

    config = SynthConfig(num_tracks=args.tracks, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        stats = synthesize_corpus(tmp, config, jobs=args.jobs, progress=True)
    print(stats.format())
    ours = stats.wall_seconds / stats.rendered_seconds
    base = baseline_seconds_per_audio_second(config, args.baseline_tracks)
    print(f"\n{'':<34}{'s per audio s':>14}{'x real time':>13}")
    label = f"stemstream synth ({args.jobs} jobs, full)"
    print(f"{label:<34}{ours:>14.4f}{1 / ours:>13.1f}")
    print(f"{'pretty_midi.fluidsynth (1 proc)':<34}{base:>14.4f}{1 / base:>13.1f}")
    print(
        f"speed-up over baseline: {base / ours:.1f}x (ours includes composing, loudness, "
        f"FLAC/MIDI writing; the baseline only synthesises)"
    )


if __name__ == "__main__":
    main()
