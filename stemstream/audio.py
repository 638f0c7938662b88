"""Waveform I/O, resampling, downmixing, loudness and validation.

Arrays are ``float32`` shaped ``[C, N]`` (channels, samples) unless a function says otherwise.
Every failure a user can cause (missing file, corrupt or empty audio, NaN/Inf samples) raises
:class:`~stemstream.errors.AudioError` with a one-line message naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from stemstream.errors import AudioError

# Below this many samples pyloudnorm cannot gate (it needs one 400 ms block).
_MIN_LOUDNESS_SECONDS = 0.4
SILENCE_LUFS = -70.0


class Audio(NamedTuple):
    """Decoded audio: ``samples`` is ``float32 [C, N]``; ``sample_rate`` in Hz."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


def check_audio(samples: np.ndarray, what: str = "audio") -> np.ndarray:
    """Raise :class:`AudioError` unless ``samples`` is a non-empty array of finite numbers."""
    if samples.size == 0 or samples.shape[-1] == 0:
        raise AudioError(f"{what} is empty (zero samples)")
    if not np.all(np.isfinite(samples)):
        bad = int(np.size(samples) - np.count_nonzero(np.isfinite(samples)))
        raise AudioError(f"{what} contains {bad} NaN/Inf samples")
    return samples


def load(
    path: str | Path,
    sample_rate: int | None = None,
    channels: int | None = 1,
) -> Audio:
    """Read an audio file (anything libsndfile reads: wav, flac, ogg, mp3, aiff...).

    Args:
        path: the file.
        sample_rate: resample to this rate (Hz); ``None`` keeps the file's rate.
        channels: ``1`` downmixes to mono, ``None`` keeps the file's channels.

    Returns:
        :class:`Audio` with ``float32 [C, N]`` samples.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for corrupt input
        raise AudioError(f"{path}: cannot decode audio ({err.__class__.__name__}: {err})") from err
    samples = np.ascontiguousarray(data.T)
    check_audio(samples, str(path))
    if channels == 1:
        samples = to_mono(samples)
    elif channels is not None and channels != samples.shape[0]:
        raise AudioError(f"{path}: has {samples.shape[0]} channels, cannot make {channels}")
    if sample_rate is not None and sample_rate != sr:
        samples = resample(samples, sr, sample_rate)
        sr = sample_rate
    return Audio(samples, int(sr))


def save(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write ``[C, N]`` or ``[N]`` float audio; the format follows the suffix (.wav, .flac...).
    The file appears only when complete (written beside it, then renamed); a path that cannot
    take it raises :class:`~stemstream.outputs.OutputError`.

    Values are clipped to [-1, 1] only by the file format's integer conversion for FLAC/PCM.
    """
    import soundfile as sf

    from stemstream.outputs import atomic_output, audio_suffixes, check_output_path

    path = check_output_path(path, "audio file", suffixes=audio_suffixes())
    samples = np.asarray(samples, dtype=np.float32)
    check_audio(samples, f"audio for {path}")
    data = samples.T if samples.ndim == 2 else samples
    subtype = "PCM_24" if path.suffix.lower() == ".flac" else None
    with atomic_output(path) as tmp:
        sf.write(str(tmp), data, sample_rate, subtype=subtype)
    return path


def check_duration(audio: Audio, min_seconds: float, what: str) -> Audio:
    """Raise :class:`AudioError` when ``audio`` is shorter than ``min_seconds`` (e.g. less
    than one codec frame, which no model can accompany)."""
    if audio.seconds < min_seconds:
        raise AudioError(f"{what}: {audio.samples.shape[-1]} samples ({audio.seconds:.4f} s) is "
                         f"shorter than one {min_seconds * 1e3:g} ms frame; nothing to accompany")
    return audio


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: ``[C, N] -> [1, N]`` (a 1-D array becomes ``[1, N]``)."""
    samples = np.atleast_2d(samples)
    if samples.shape[0] == 1:
        return samples
    return samples.mean(axis=0, keepdims=True, dtype=np.float32)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample along the last axis with soxr (high quality); any leading shape is kept."""
    if rate_in <= 0 or rate_out <= 0:
        raise AudioError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
    if rate_in == rate_out:
        return samples
    import soxr

    flat = np.atleast_2d(samples).reshape(-1, samples.shape[-1])
    out = soxr.resample(flat.T, rate_in, rate_out, quality="HQ").T
    return np.ascontiguousarray(out.reshape(*samples.shape[:-1], out.shape[-1]), dtype=np.float32)


def loudness(samples: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness (ITU-R BS.1770, LUFS) of ``[C, N]`` or ``[N]`` audio.

    Silent audio returns :data:`SILENCE_LUFS`; audio shorter than 400 ms is measured after
    repeating it to one gating block (loudness of a periodic extension).
    """
    import pyloudnorm

    x = np.atleast_2d(np.asarray(samples, dtype=np.float64))
    check_audio(x, "audio to measure")
    min_len = int(np.ceil(_MIN_LOUDNESS_SECONDS * sample_rate)) + 1
    if x.shape[-1] < min_len:
        x = np.tile(x, (1, int(np.ceil(min_len / x.shape[-1]))))
    meter = pyloudnorm.Meter(sample_rate)
    value = meter.integrated_loudness(x.T if x.shape[0] > 1 else x[0])
    return float(value) if np.isfinite(value) else SILENCE_LUFS


def normalize_loudness(
    samples: np.ndarray, sample_rate: int, target_lufs: float, peak_limit: float | None = 1.0
) -> np.ndarray:
    """Scale audio to ``target_lufs``; with ``peak_limit`` the gain is lowered so no sample
    exceeds it (peak-safe). Silence is returned unchanged."""
    current = loudness(samples, sample_rate)
    if current <= SILENCE_LUFS:
        return samples.astype(np.float32, copy=True)
    gain = 10.0 ** ((target_lufs - current) / 20.0)
    if peak_limit is not None:
        peak = float(np.max(np.abs(samples)))
        if peak * gain > peak_limit:
            gain = peak_limit / peak
    return (samples * gain).astype(np.float32)


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))
