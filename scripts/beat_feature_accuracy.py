"""How right is the causal ``beat`` input feature on a corpus (issue 16)?

For each track, the mix of every stem but one (what a model hears as its input) goes through
:func:`stemstream.features.features`; once five seconds have been heard, each frame's tracked
period is compared with the tempo in the track's metadata, and its phase, as tracked and
advanced by ``--lead`` frames (what a live model hears with ``beat_lead_seconds``, via
:func:`stemstream.model.streaming.advance_beat`), with the metadata's beat grid (a beat every
``60 / tempo`` s from 0) at the frame it describes. Phase errors are measured modulo the
tracked period, so a tracker at half or double tempo that still falls on beats is counted
on-beat; the tempo columns say how often that happens.

    python scripts/beat_feature_accuracy.py corpora/synth10h [--split test] [--tracks 40]
        [--lead 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml

from stemstream.audio import resample
from stemstream.features import BEAT_UNIT_SECONDS, features
from stemstream.model.streaming import advance_beat

RATE, HOP = 16000, 320
FRAME_RATE = RATE / HOP


def _input_mix(track: Path) -> np.ndarray:
    stems = sorted((track / "stems").glob("*.flac"))
    audio = [sf.read(p, dtype="float32", always_2d=True) for p in stems[1:]]
    rate = audio[0][1]
    length = min(a.shape[0] for a, _ in audio)
    mix = sum(a[:length].mean(axis=1) for a, _ in audio)
    return resample(np.asarray(mix), rate, RATE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--tracks", type=int, default=40)
    parser.add_argument("--lead", type=int, default=7, help="frames the phase is advanced")
    args = parser.parse_args()
    tracks = sorted(p for p in (args.corpus / args.split).iterdir() if p.is_dir())
    if not tracks:
        raise SystemExit(f"{args.corpus / args.split}: no tracks")
    rows = []
    for track in tracks[: args.tracks]:
        meta = yaml.safe_load((track / "metadata.yaml").read_text())
        beat_s = 60.0 / float(meta["stemstream"]["tempo_bpm"])
        beat = features(_input_mix(track), RATE, HOP, ["beat"])  # [4, T]
        first = int(5 * FRAME_RATE)
        if beat.shape[1] <= first + args.lead:
            continue
        tensor = torch.from_numpy(beat[:3].T.copy())
        ahead = advance_beat(tensor, args.lead / FRAME_RATE).numpy().T
        period_s = 2 ** beat[2] * BEAT_UNIT_SECONDS
        row = {"ratio": np.median(period_s[first:] / beat_s)}
        for name, phases, shift in (("tracked", beat, 0), ("advanced", ahead, args.lead)):
            frames = np.arange(first, beat.shape[1] - args.lead)
            phase = np.arctan2(phases[0, frames], phases[1, frames]) % (2 * np.pi)
            silent = (phases[0, frames] == 0) & (phases[1, frames] == 0)
            # the frame the phase describes, and the time since its claimed last beat
            when = (frames + shift) * HOP / RATE
            claimed_beat = when - phase / (2 * np.pi) * period_s[frames]
            # nearest true beat (a beat grid from 0), wrapped into +-half a beat
            offset = (claimed_beat + beat_s / 2) % beat_s - beat_s / 2
            row[name] = np.abs(offset[~silent]) * 1e3
        rows.append(row)
    ratios = np.array([r["ratio"] for r in rows])
    print(f"{len(rows)} tracks of {args.corpus / args.split}, frames after the first 5 s")
    near = {f"x{m:g}": np.abs(ratios - m) < 0.04 * m for m in (1, 2, 0.5)}
    other = ~np.logical_or.reduce(list(near.values()))
    print("tempo: tracked period / true beat: "
          + ", ".join(f"{k} {v.mean():.0%}" for k, v in near.items())
          + f", other {other.mean():.0%}")
    for name in ("tracked", "advanced"):
        errors = np.concatenate([r[name] for r in rows])
        print(f"{name:>9} phase: median error {np.median(errors):5.1f} ms, within 40 ms "
              f"{np.mean(errors <= 40):.0%}, within 70 ms {np.mean(errors <= 70):.0%} "
              f"(uniform guessing at 120 BPM: {80 / 500:.0%} / {140 / 500:.0%})")


if __name__ == "__main__":
    main()
