"""Onset alignment of an evaluation run's stems with their inputs, lag by lag (issue 16):
for each system, the correlation of stem and input onset envelopes averaged over the run's
windows (:func:`stemstream.beats.onset_lag`), the best lag and the correlation at 0.

A system in time peaks at 0 ms; one in time but late peaks at a positive lag; one that keeps
its own time (or plays random material) stays near 0 at every lag.

    python scripts/onset_lag.py runs/eval-guidance [--systems ground_truth live_shift ...]
                                [--compare default candidate]

``--compare A B`` adds a paired test of B against A on the correlation at lag 0, window by
window (mean difference, paired bootstrap 95% interval, Wilcoxon p, windows where B is higher).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from stemstream.beats import onset_lag
from stemstream.errors import ConfigError
from stemstream.eval.claims import paired
from stemstream.eval.run import run_stems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="an `stemstream eval run` output folder")
    parser.add_argument("--systems", nargs="*", help="default: every system of the run")
    parser.add_argument("--max-lag", type=float, default=0.2, help="seconds")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="paired test of B against A on the correlation at lag 0")
    args = parser.parse_args()
    try:
        examples, systems = run_stems(args.run, args.systems)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    print(f"{len(examples)} windows of {args.run}; lag > 0: the stem's onsets come later")
    if args.compare:
        systems += [s for s in args.compare if s not in systems]
    print(f"{'system':<24}{'best lag ms':>12}{'corr at best':>14}{'corr at 0':>11}")
    at_zero: dict[str, dict[int, float]] = {}
    for system in systems:
        curves, at_zero[system] = [], {}
        for index, example in enumerate(examples):
            stem_path = example / f"{system}.wav"
            if not stem_path.exists():
                continue
            mix, rate = sf.read(example / "input.wav", dtype="float32", always_2d=True)
            stem, stem_rate = sf.read(stem_path, dtype="float32", always_2d=True)
            if stem_rate != rate:
                raise SystemExit(f"{stem_path}: {stem_rate} Hz, the input is {rate} Hz")
            curves.append(onset_lag(stem.T, mix.T, rate, args.max_lag))
            at_zero[system][index] = float(curves[-1][np.abs(curves[-1][:, 0]).argmin(), 1])
        if not curves:
            print(f"{system:<24}{'(no stems)':>12}")
            continue
        mean = np.mean(curves, axis=0)
        best = int(mean[:, 1].argmax())
        zero = int(np.abs(mean[:, 0]).argmin())
        print(f"{system:<24}{mean[best, 0] * 1e3:>+12.0f}{mean[best, 1]:>14.3f}"
              f"{mean[zero, 1]:>11.3f}")
    if args.compare:
        a, b = args.compare
        result = paired(at_zero[b], at_zero[a], np.random.default_rng(0))
        higher = sum(at_zero[b][i] > at_zero[a][i] for i in set(at_zero[a]) & set(at_zero[b]))
        print(f"\n{b} against {a}, correlation at 0, paired over {result.n} windows: "
              f"{result.mean_better:.3f} vs {result.mean_worse:.3f}, {result.diff:+.3f} "
              f"[{result.ci_low:+.3f}, {result.ci_high:+.3f}], Wilcoxon p {result.p_value:.2g}, "
              f"higher on {higher}/{result.n}")


if __name__ == "__main__":
    main()
