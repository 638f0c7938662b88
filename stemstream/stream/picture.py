"""A picture of an accompaniment: input and output log-mel spectrograms with their beat grids.

Beats come from librosa's tracker (the first call compiles numba code, a few seconds); the
title carries the beat F-measure (+-70 ms) of the stem's beats against the input's, the same
number as the evaluation suite's ``beat_f`` with the librosa tracker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def track_beats_librosa(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Beat times (seconds); empty for silence."""
    import librosa

    if not np.any(np.abs(samples) > 1e-4):
        return np.zeros(0)
    _, beats = librosa.beat.beat_track(y=samples.astype(np.float32), sr=sample_rate,
                                       units="time")
    return np.asarray(beats, dtype=np.float64)


def beat_f(reference: np.ndarray, estimate: np.ndarray, tolerance: float = 0.07) -> float:
    """F-measure of ``estimate`` beats against ``reference`` beats (no trimming)."""
    import mir_eval

    if len(reference) == 0 or len(estimate) == 0:
        return 0.0
    return float(mir_eval.beat.f_measure(reference, estimate, f_measure_threshold=tolerance))


def accompaniment_figure(input_audio: np.ndarray, stem: np.ndarray, sample_rate: int,
                         path: str | Path, title: str = "") -> dict[str, float]:
    """Write the PNG; return ``{"beat_f": ..., "input_bpm": ..., "stem_bpm": ...}``."""
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    beats_in = track_beats_librosa(input_audio, sample_rate)
    beats_out = track_beats_librosa(stem, sample_rate)
    score = beat_f(beats_in, beats_out)

    def bpm(beats: np.ndarray) -> float:
        return float(60.0 / np.median(np.diff(beats))) if len(beats) > 2 else float("nan")

    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True,
                             gridspec_kw={"height_ratios": [3, 3, 1]})
    duration = len(input_audio) / sample_rate
    for ax, samples, beats, label in ((axes[0], input_audio, beats_in, "input"),
                                      (axes[1], stem, beats_out, "accompaniment")):
        mel = librosa.feature.melspectrogram(y=samples.astype(np.float32), sr=sample_rate,
                                             n_fft=1024, hop_length=256, n_mels=80)
        db = librosa.power_to_db(mel + 1e-10, ref=max(float(mel.max()), 1e-10), top_db=80)
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma",
                  extent=(0, len(samples) / sample_rate, 0, 80))
        for beat in beats:
            ax.axvline(beat, color="cyan", lw=0.6, alpha=0.8)
        ax.set_ylabel(f"{label}\nmel bin")
    axes[2].vlines(beats_in, 0.5, 1.0, color="tab:blue", label="input beats")
    axes[2].vlines(beats_out, 0.0, 0.5, color="tab:orange", label="accompaniment beats")
    axes[2].set_yticks([])
    axes[2].set_xlim(0, duration)
    axes[2].set_xlabel("time (s)")
    axes[2].legend(loc="upper right", fontsize=7, ncols=2)
    fig.suptitle(f"{title}  beat F (70 ms) = {score:.2f}".strip())
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"beat_f": score, "input_bpm": bpm(beats_in), "stem_bpm": bpm(beats_out)}
