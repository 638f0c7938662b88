"""The paper's fixed loudness pipeline for mixes (appendix A.7, SPEC section 8).

1. the predicted (or target) stem is loudness-normalised to ``target_lufs`` (-18 LUFS);
2. the input tracks are summed at equal loudness, each ``stem_gain_db`` (5 dB) below the stem,
   i.e. the stem sits +5 dB relative to each input track;
3. the mixture is normalised to ``target_lufs``, peak-safe (scaled down further if a sample
   would exceed ``peak_limit``).

Loudness is integrated ITU-R BS.1770 loudness (:func:`stemstream.audio.loudness`). Silent
tracks (a stem of zeros, a muted input) have no loudness to normalise: they are left silent
and mixing goes on with the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stemstream import audio
from stemstream.audio import SILENCE_LUFS, check_audio, loudness, normalize_loudness
from stemstream.errors import AudioError, ConfigError

TARGET_LUFS = -18.0
STEM_GAIN_DB = 5.0
PEAK_LIMIT = 0.99


def _tracks(inputs: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """Input tracks as a list of ``float64 [N]`` arrays."""
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 1:
            return [inputs.astype(np.float64)]
        if inputs.ndim == 2:
            return [row.astype(np.float64) for row in inputs]
        raise AudioError(f"input tracks must be [N] or [M, N], got shape {inputs.shape}")
    tracks = [np.asarray(track, dtype=np.float64) for track in inputs]
    if not tracks:
        raise AudioError("mixing needs at least one input track")
    for i, track in enumerate(tracks):
        if track.ndim != 1:
            raise AudioError(f"input track {i} must be mono [N], got shape {track.shape}")
    return tracks


def _at_loudness(samples: np.ndarray, sample_rate: int, lufs: float) -> np.ndarray:
    """``samples`` scaled to ``lufs`` (no peak limit: only the final mix is limited)."""
    return normalize_loudness(samples, sample_rate, lufs, peak_limit=None).astype(np.float64)


def mix_stem(
    inputs: Sequence[np.ndarray] | np.ndarray,
    stem: np.ndarray,
    sample_rate: int,
    stem_gain_db: float = STEM_GAIN_DB,
    target_lufs: float = TARGET_LUFS,
    peak_limit: float = PEAK_LIMIT,
) -> np.ndarray:
    """Mix a stem with its input tracks as in appendix A.7.

    Args:
        inputs: the input tracks, mono and as long as ``stem``: a list of ``[N]`` arrays,
            an ``[M, N]`` array of ``M`` tracks, or one ``[N]`` array (a premixed input,
            as in accompaniment of a mixture).
        stem: ``[N]`` the predicted (or target) stem.
        sample_rate: Hz, shared by all tracks.
        stem_gain_db: loudness of the stem relative to each input track.
        target_lufs: loudness of the stem and of the final mixture.
        peak_limit: the mixture's largest absolute sample is at most this.

    Returns:
        ``float32 [N]`` mixture at ``target_lufs`` (lower only where the peak limit demanded
        it; all zeros when every track is silent).

    Raises:
        AudioError: empty or non-finite audio, non-mono tracks, or tracks of different lengths.
    """
    stem = np.asarray(stem, dtype=np.float64)
    if stem.ndim != 1:
        raise AudioError(f"the stem must be mono [N], got shape {stem.shape}")
    check_audio(stem, "stem to mix")
    tracks = _tracks(inputs)
    for i, track in enumerate(tracks):
        check_audio(track, f"input track {i} to mix")
        if track.shape[0] != stem.shape[0]:
            raise AudioError(
                f"input track {i} has {track.shape[0]} samples but the stem has "
                f"{stem.shape[0]}; mix tracks of equal length (same rate, trimmed)"
            )
    if not 0 < peak_limit:
        raise AudioError(f"peak_limit must be > 0, got {peak_limit}")
    mix = _at_loudness(stem, sample_rate, target_lufs)
    track_lufs = target_lufs - stem_gain_db
    for track in tracks:
        mix += _at_loudness(track, sample_rate, track_lufs)
    if loudness(mix, sample_rate) <= SILENCE_LUFS:
        # silence, or tracks that cancel out: nothing to normalise, but keep it peak-safe
        peak = float(np.max(np.abs(mix)))
        return (mix * min(1.0, peak_limit / peak) if peak > 0 else mix).astype(np.float32)
    return normalize_loudness(mix, sample_rate, target_lufs, peak_limit=peak_limit).astype(
        np.float32
    )


def mix_stem_channels(
    inputs: np.ndarray,
    stem: np.ndarray,
    sample_rate: int,
    stem_gain_db: float = STEM_GAIN_DB,
    target_lufs: float = TARGET_LUFS,
    peak_limit: float = PEAK_LIMIT,
) -> np.ndarray:
    """:func:`mix_stem` of a premixed input that keeps the input's channel layout: the input
    ``[C, N]`` (its multichannel BS.1770 loudness ``stem_gain_db`` below the stem's), the stem
    placed in the centre (added to every channel), the result normalised to ``target_lufs``
    and peak-safe. For ``C = 1`` this is :func:`mix_stem` of the one track.

    Returns:
        ``float32 [C, N]``.
    """
    inputs = np.asarray(inputs, dtype=np.float64)
    if inputs.ndim != 2 or inputs.shape[0] < 1:
        raise AudioError(f"the input must be [C, N] audio, got shape {inputs.shape}")
    stem = np.asarray(stem, dtype=np.float64)
    if stem.ndim != 1 or stem.shape[0] != inputs.shape[1]:
        raise AudioError(f"the stem must be mono [N] as long as the input ({inputs.shape[1]} "
                         f"samples), got shape {stem.shape}")
    check_audio(stem, "stem to mix")
    check_audio(inputs, "input to mix")
    if not 0 < peak_limit:
        raise AudioError(f"peak_limit must be > 0, got {peak_limit}")
    mix = (_at_loudness(inputs, sample_rate, target_lufs - stem_gain_db)
           + _at_loudness(stem, sample_rate, target_lufs)[None])
    if loudness(mix, sample_rate) <= SILENCE_LUFS:
        peak = float(np.max(np.abs(mix)))
        return (mix * min(1.0, peak_limit / peak) if peak > 0 else mix).astype(np.float32)
    return normalize_loudness(mix, sample_rate, target_lufs, peak_limit=peak_limit).astype(
        np.float32
    )


MIX_CHANNELS = ("input", "mono")


def check_mix_channels(mix_channels: str) -> None:
    if mix_channels not in MIX_CHANNELS:
        raise ConfigError(f"mix channels must be one of {', '.join(MIX_CHANNELS)}, got "
                          f"{mix_channels!r}")


def mix_with_input(source: audio.Audio, stem: np.ndarray, rate: int,
                   mix_channels: str = "input") -> np.ndarray:
    """The appendix-A.7 mix of an input file's audio and a stem ``[N]`` at ``rate``:
    ``[C, N]`` in the input's channel layout (the stem in the centre), or ``[N]`` mono."""
    check_mix_channels(mix_channels)
    samples = source.samples if mix_channels == "input" else audio.to_mono(source.samples)
    resampled = audio.resample(samples, source.sample_rate, rate)[:, : stem.shape[0]]
    resampled = np.pad(resampled, ((0, 0), (0, stem.shape[0] - resampled.shape[1])))
    if mix_channels == "mono":
        return mix_stem(resampled[0], stem, rate)
    return mix_stem_channels(resampled, stem, rate)
