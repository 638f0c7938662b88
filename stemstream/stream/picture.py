"""A picture of an accompaniment: input and output log-mel spectrograms with their beat grids.

Beats come from :mod:`stemstream.beats` with the librosa tracker (fast to load; the first
call compiles numba code, a few seconds); the title carries the evaluation suite's ``beat_f``
(+-70 ms) of the stem against the input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stemstream.outputs import atomic_output


def accompaniment_figure(input_audio: np.ndarray, stem: np.ndarray, sample_rate: int,
                         path: str | Path, title: str = "") -> dict[str, float]:
    """Write the PNG; return ``{"beat_f": ..., "input_bpm": ..., "stem_bpm": ...}``."""
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stemstream.beats import beat_f_measure, track_beats

    beats_in = track_beats(input_audio, sample_rate, "librosa")
    beats_out = track_beats(stem, sample_rate, "librosa")
    score = beat_f_measure(stem, input_audio, sample_rate, tracker="librosa",
                           reference_beats=beats_in)

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
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return {"beat_f": score, "input_bpm": bpm(beats_in), "stem_bpm": bpm(beats_out)}


def picture_of_files(input_path: str | Path, stem_path: str | Path, path: str | Path,
                     title: str = "") -> dict[str, float]:
    """:func:`accompaniment_figure` of an input file and the stem written for it (the input
    is downmixed and resampled to the stem's rate)."""
    from stemstream import audio

    stem = audio.load(stem_path, channels=1)
    source = audio.load(input_path, sample_rate=stem.sample_rate, channels=1)
    return accompaniment_figure(source.samples.reshape(-1), stem.samples.reshape(-1),
                                stem.sample_rate, path, title=title)
