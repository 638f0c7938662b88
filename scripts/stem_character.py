"""What each system of an evaluation run plays, described over all its windows (issue 16):
the numbers one would otherwise get by listening to a few windows, for every window.

Per stem, with librosa at the run's sample rate:
* ``harmonic`` — the harmonic part's share of the energy (HPSS): a pitched stem is near 1,
  noise and drums lower;
* ``flatness`` — median spectral flatness: 0 for pure tones, towards 1 for white noise;
* ``centroid`` — median spectral centroid, Hz;
* ``onsets/s`` — detected onsets per second;
* ``chroma~input`` — cosine between the stem's and the input's mean chroma: does it play in
  the input's key (the true stem sets the ceiling, random pairing the floor);
* ``chroma~truth`` — the same against the true stem.

Each system's median over the windows, and how many windows it is closer to the true stem
than the ``--reference`` system on harmonic share and flatness.

    python scripts/stem_character.py runs/eval-60h-128-sd4 [--systems ground_truth ...] \
        [--reference student_gpu]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from stemstream.errors import ConfigError
from stemstream.eval.run import run_stems

COLUMNS = ("harmonic", "flatness", "centroid", "onsets/s", "chroma~input", "chroma~truth")


def _mono(path: Path) -> tuple[np.ndarray, int]:
    wave, rate = sf.read(path, dtype="float32", always_2d=True)
    return wave.mean(axis=1), rate


def _mean_chroma(wave: np.ndarray, rate: int) -> np.ndarray:
    return librosa.feature.chroma_stft(y=wave, sr=rate).mean(axis=1)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else float("nan")


def describe(stem: np.ndarray, rate: int, input_chroma: np.ndarray,
             truth_chroma: np.ndarray) -> dict[str, float]:
    """The descriptors of one stem (see the module docstring)."""
    spectrum = np.abs(librosa.stft(stem))
    harmonic, percussive = librosa.decompose.hpss(spectrum)
    energy = float((harmonic ** 2).sum() + (percussive ** 2).sum())
    onsets = librosa.onset.onset_detect(y=stem, sr=rate, units="time")
    chroma = _mean_chroma(stem, rate)
    return {
        "harmonic": float((harmonic ** 2).sum()) / energy if energy > 0 else float("nan"),
        "flatness": float(np.median(librosa.feature.spectral_flatness(S=spectrum))),
        "centroid": float(np.median(librosa.feature.spectral_centroid(S=spectrum, sr=rate))),
        "onsets/s": len(onsets) * rate / len(stem),
        "chroma~input": _cosine(chroma, input_chroma),
        "chroma~truth": _cosine(chroma, truth_chroma),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="an `stemstream eval run` output folder")
    parser.add_argument("--systems", nargs="*", help="default: every system of the run")
    parser.add_argument("--reference", help="a system to count windows against")
    args = parser.parse_args()
    try:
        examples, systems = run_stems(args.run, args.systems)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    if args.reference and args.reference not in systems:
        systems.append(args.reference)
    table: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    for example in examples:
        mix, rate = _mono(example / "input.wav")
        truth, truth_rate = _mono(example / "ground_truth.wav")
        if truth_rate != rate:
            raise SystemExit(f"{example}: ground truth at {truth_rate} Hz, input at {rate} Hz")
        input_chroma, truth_chroma = _mean_chroma(mix, rate), _mean_chroma(truth, rate)
        for system in systems:
            path = example / f"{system}.wav"
            if system == "ground_truth":
                stem, stem_rate = truth, rate  # read above
            elif path.exists():
                stem, stem_rate = _mono(path)
            else:
                continue
            if stem_rate != rate:
                raise SystemExit(f"{path}: {stem_rate} Hz, the input is {rate} Hz")
            table[system].append(describe(stem, rate, input_chroma, truth_chroma))
    print(f"{len(examples)} windows of {args.run}; medians over the windows")
    print(f"{'system':<24}" + "".join(f"{c:>14}" for c in COLUMNS))
    for system, rows in table.items():
        if not rows:
            print(f"{system:<24}{'(no stems)':>14}")
            continue
        print(f"{system:<24}" + "".join(
            f"{np.nanmedian([r[c] for r in rows]):>14.3f}" for c in COLUMNS))
    if not args.reference or "ground_truth" not in table:
        return
    truth, reference = table["ground_truth"], table[args.reference]
    print(f"\nwindows where the system is closer to the true stem than {args.reference}:")
    for system, rows in table.items():
        if system in ("ground_truth", args.reference) or len(rows) != len(truth):
            continue
        counts = [sum(abs(r[c] - t[c]) < abs(q[c] - t[c])
                      for r, q, t in zip(rows, reference, truth, strict=True))
                  for c in ("harmonic", "flatness")]
        print(f"{system:<24}harmonic {counts[0]}/{len(rows)}, flatness {counts[1]}/{len(rows)}")


if __name__ == "__main__":
    main()
