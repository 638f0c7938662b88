"""Pair and window selection of the paper's appendix A.1 (SPEC section 3).

Per track, a target stem is drawn uniformly among the stems that are not Vocal/Unknown; the
input stream is the sum of all other stems. Frames are silent when their A-weighted short-time
RMS (50 Hz, 40 ms window) is below -60 dB full scale. A window start is drawn among the frames
where input and target are both active and accepted when at least 50% of the window's frames are
jointly active; after 16 failed draws the track is rejected.

**Levels.** :func:`mix_pair` sums the other stems and, only if the input or the target would
exceed :data:`PEAK_LIMIT`, attenuates *both* by one constant gain for the whole track (so the
input never clips and input/target keep their relative level). Nothing is loudness-normalised
per window or per clip: a live stream has no "whole clip" to normalise against.

**Frame alignment.** Frame ``t`` of :func:`a_weighted_rms_db` measures the 40 ms of audio
*starting* at ``t * hop`` (``[t*20ms, t*20ms + 40ms)``, zero-padded past the end), so it
covers output frame ``t``'s own span ``[t*20ms, (t+1)*20ms)`` plus the next 20 ms; a track of
``N`` samples has ``ceil(N / hop)`` frames. Windows are placed on whole frames of real audio
only (``start + input_frames <= N // hop``), so the input beyond the output window for
``t_f > 0`` is never zero padding.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from stemstream.data.instruments import NEVER_TARGET, class_name
from stemstream.data.slakh import SlakhCorpus, TrackInfo
from stemstream.errors import AudioError, ConfigError

log = logging.getLogger(__name__)

PEAK_LIMIT = 0.99
_POWER_FLOOR = 1e-12  # -120 dB: keeps log10 finite on digital silence
_CHUNK_FRAMES = 4096  # STFT frames per block: bounds memory on hour-long tracks

REASON_NO_STEMS = "no rendered stems"
REASON_SINGLE_STEM = "single stem (nothing to accompany)"
REASON_NO_TARGET = "no eligible target (only Vocal/Unknown stems)"
REASON_TOO_SHORT = "track shorter than the input window"
REASON_NO_WINDOW = "no jointly active window"


def a_weighting_db(freqs_hz: np.ndarray) -> np.ndarray:
    """IEC 61672-1 A-weighting in dB (0 dB at 1 kHz, about -19.1 dB at 100 Hz; -inf at 0 Hz)."""
    f2 = np.square(np.asarray(freqs_hz, dtype=np.float64))
    num = (12194.0**2) * f2**2
    den = ((f2 + 20.6**2) * np.sqrt((f2 + 107.7**2) * (f2 + 737.9**2)) * (f2 + 12194.0**2))
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(num / den) + 2.0


def a_weighted_rms_db(
    wave: np.ndarray, sample_rate: int, hop_seconds: float = 0.02, win_seconds: float = 0.04
) -> np.ndarray:
    """Short-time A-weighted RMS level in dB full scale.

    Each frame's periodic-Hann-windowed power spectrum is weighted by the squared A-weighting
    gains and turned into a mean square via Parseval (normalised by the window's energy), so a
    1 kHz sine of amplitude 1 reads -3.01 dB. See the module docstring for the alignment.

    Args:
        wave: mono audio, ``[N]`` (or ``[1, N]``).
        sample_rate: Hz.
        hop_seconds: frame hop (20 ms = 50 Hz).
        win_seconds: analysis window (40 ms).

    Returns:
        ``float32 [T]`` with ``T = ceil(N / hop)``; digital silence reads -120 dB.
    """
    wave = _mono(wave)
    hop = max(1, round(hop_seconds * sample_rate))
    win = max(hop, round(win_seconds * sample_rate))
    num_frames = -(-wave.shape[0] // hop)
    if num_frames == 0:
        return np.zeros(0, dtype=np.float32)
    padded = np.zeros((num_frames - 1) * hop + win, dtype=np.float32)
    padded[: wave.shape[0]] = wave
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)).astype(np.float32)
    gains = 10.0 ** (a_weighting_db(np.fft.rfftfreq(win, 1.0 / sample_rate)) / 10.0)
    bins = np.full(gains.shape, 2.0)  # one-sided spectrum: count each +/- frequency pair once
    bins[0] = 1.0
    if win % 2 == 0:
        bins[-1] = 1.0
    weights = gains * bins / (win * float(np.sum(window.astype(np.float64) ** 2)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop]
    out = np.empty(num_frames, dtype=np.float64)
    for lo in range(0, num_frames, _CHUNK_FRAMES):
        spec = np.fft.rfft(frames[lo : lo + _CHUNK_FRAMES] * window, axis=-1)
        power = spec.real**2 + spec.imag**2
        out[lo : lo + _CHUNK_FRAMES] = power @ weights
    return (10.0 * np.log10(np.maximum(out, _POWER_FLOOR))).astype(np.float32)


def active_frames(wave: np.ndarray, sample_rate: int, threshold_db: float = -60.0) -> np.ndarray:
    """``bool [T]``: frames whose A-weighted RMS is at least ``threshold_db`` (not silent)."""
    return a_weighted_rms_db(wave, sample_rate) >= threshold_db


@dataclass(frozen=True)
class WindowConfig:
    """What a training window is. Seconds are stored once; frames are derived.

    Attributes:
        window_seconds: output (target) window length.
        future_seconds: future visibility ``t_f``; > 0 needs that much extra real input audio
            after the output window, <= 0 needs none.
        frame_rate_hz: frame rate of activity analysis and of the codec (50 Hz).
        silence_db: A-weighted RMS below this is silent.
        min_joint_activity: accepted share of jointly active frames in the window.
        max_retries: window draws per track before it is rejected.
    """

    window_seconds: float = 10.0
    future_seconds: float = 0.0
    frame_rate_hz: float = 50.0
    silence_db: float = -60.0
    min_joint_activity: float = 0.5
    max_retries: int = 16

    def __post_init__(self):
        if not (np.isfinite(self.frame_rate_hz) and self.frame_rate_hz > 0):
            raise ConfigError(f"frame_rate_hz must be > 0, got {self.frame_rate_hz}")
        if not (np.isfinite(self.window_seconds) and self.window_frames >= 1):
            raise ConfigError(f"window_seconds must give at least one frame at "
                              f"{self.frame_rate_hz} Hz, got {self.window_seconds}")
        if not np.isfinite(self.future_seconds):
            raise ConfigError(f"future_seconds must be finite, got {self.future_seconds}")
        if not np.isfinite(self.silence_db):
            raise ConfigError(f"silence_db must be finite, got {self.silence_db}")
        if not 0.0 <= self.min_joint_activity <= 1.0:
            raise ConfigError(f"min_joint_activity must be in [0, 1], "
                              f"got {self.min_joint_activity}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or self.max_retries < 1:
            raise ConfigError(f"max_retries must be an integer >= 1, got {self.max_retries}")

    @property
    def window_frames(self) -> int:
        return round(self.window_seconds * self.frame_rate_hz)

    @property
    def future_frames(self) -> int:
        return round(self.future_seconds * self.frame_rate_hz)

    @property
    def input_frames(self) -> int:
        """Input frames a window needs: the output window plus any look-ahead (``t_f > 0``)."""
        return self.window_frames + max(0, self.future_frames)


@dataclass(frozen=True)
class Window:
    """An accepted window: frames ``[start_frame, start_frame + num_frames)`` of
    ``target_stem`` and ``[start_frame, start_frame + input_frames)`` of the input mixture."""

    track: str
    split: str
    target_stem: str
    inst_class: int
    input_stems: tuple[str, ...]
    start_frame: int
    num_frames: int
    input_frames: int
    joint_activity: float


@dataclass(frozen=True)
class Rejection:
    """A track for which no window was accepted, and why (one of the ``REASON_*`` strings)."""

    track: str
    reason: str


class StartChoice(NamedTuple):
    """An accepted start frame and the share of jointly active frames in its window."""

    start_frame: int
    joint_activity: float


def choose_start(
    input_active: np.ndarray, target_active: np.ndarray, config: WindowConfig,
    rng: np.random.Generator,
) -> StartChoice | str:
    """The pure A.1 window rule on activity arrays.

    Args:
        input_active: ``bool [T]``, activity of the input mixture over the whole track (whole
            frames of real audio only).
        target_active: ``bool [T]``, activity of the target stem.
        config: window lengths and thresholds.
        rng: the only source of randomness.

    Returns:
        A :class:`StartChoice`, or the rejection reason (``REASON_TOO_SHORT`` /
        ``REASON_NO_WINDOW``). Starts are drawn uniformly (with replacement) among jointly
        active frames ``s`` with ``s + input_frames <= T``.
    """
    joint = np.asarray(input_active, dtype=bool) & np.asarray(target_active, dtype=bool)
    last_start = joint.shape[0] - config.input_frames
    if last_start < 0:
        return REASON_TOO_SHORT
    candidates = np.flatnonzero(joint[: last_start + 1])
    if candidates.size == 0:
        return REASON_NO_WINDOW
    needed = config.min_joint_activity * config.window_frames - 1e-9  # exact at 50%
    for _ in range(config.max_retries):
        start = int(candidates[rng.integers(candidates.size)])
        count = int(np.count_nonzero(joint[start : start + config.window_frames]))
        if count >= needed:
            return StartChoice(start, count / config.window_frames)
    return REASON_NO_WINDOW


def mix_pair(stems: Mapping[str, np.ndarray], target_stem: str) -> tuple[np.ndarray, np.ndarray]:
    """Input mixture and target with one constant, peak-safe gain (see module docstring).

    Args:
        stems: ``stem_id -> float32 [N]`` (same length).
        target_stem: the target's id; every other stem is input.

    Returns:
        ``(input [N], target [N])`` float32, both scaled by ``min(1, PEAK_LIMIT / peak)``.
    """
    target = np.asarray(stems[target_stem], dtype=np.float32)
    others = [np.asarray(w, dtype=np.float32) for sid, w in stems.items() if sid != target_stem]
    mixture = np.sum(others, axis=0, dtype=np.float32) if others else np.zeros_like(target)
    peak = max(float(np.max(np.abs(mixture), initial=0.0)),
               float(np.max(np.abs(target), initial=0.0)))
    gain = np.float32(min(1.0, PEAK_LIMIT / peak)) if peak > 0 else np.float32(1.0)
    return mixture * gain, target * gain


def track_rng(seed: int, track: TrackInfo, *stream: int) -> np.random.Generator:
    """A generator for one track that depends only on ``seed``, the track's split/name and
    ``stream`` (e.g. epoch, window index): independent of iteration order or subsets."""
    key = zlib.crc32(f"{track.split}/{track.name}".encode())
    return np.random.default_rng([seed, key, *stream])


def select_window(
    track: TrackInfo, config: WindowConfig, rng: np.random.Generator,
    stems: Mapping[str, np.ndarray] | None = None, sample_rate: int = 16000,
) -> Window | Rejection:
    """Choose the target stem and a window of ``track`` (appendix A.1).

    Args:
        track: the track.
        config: window rule.
        rng: randomness (target choice, then window starts); deterministic given its state.
        stems: decoded stems (``stem_id -> float32 [N]`` at ``sample_rate``); loaded if ``None``.
        sample_rate: rate of ``stems`` (or to load them at), Hz; must be a multiple of the
            frame rate.

    Returns:
        The accepted :class:`Window` or a :class:`Rejection` with its reason.
    """
    if not track.stems:
        return Rejection(track.name, REASON_NO_STEMS)
    if len(track.stems) < 2:
        return Rejection(track.name, REASON_SINGLE_STEM)
    eligible = [s for s in track.stems if s.inst_class not in NEVER_TARGET]
    if not eligible:
        return Rejection(track.name, REASON_NO_TARGET)
    target = eligible[int(rng.integers(len(eligible)))]
    hop = hop_samples(sample_rate, config)
    if stems is None:
        stems = track.load_stems(sample_rate)
    mixture, target_wave = mix_pair(stems, target.stem_id)
    whole = target_wave.shape[0] // hop  # whole frames of real audio
    input_active = active_frames(mixture, sample_rate, config.silence_db)[:whole]
    target_active = active_frames(target_wave, sample_rate, config.silence_db)[:whole]
    choice = choose_start(input_active, target_active, config, rng)
    if isinstance(choice, str):
        return Rejection(track.name, choice)
    return Window(
        track=track.name,
        split=track.split,
        target_stem=target.stem_id,
        inst_class=target.inst_class,
        input_stems=tuple(s.stem_id for s in track.stems if s.stem_id != target.stem_id),
        start_frame=choice.start_frame,
        num_frames=config.window_frames,
        input_frames=config.input_frames,
        joint_activity=choice.joint_activity,
    )


@dataclass
class SplitReport:
    """Outcome of window selection on one split."""

    tracks: int = 0
    windows: list[Window] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    def class_histogram(self) -> Counter:
        return Counter(class_name(w.inst_class) for w in self.windows)


@dataclass
class WindowReport:
    """Per-split window selection results (``stemstream data windows``)."""

    config: WindowConfig
    splits: dict[str, SplitReport] = field(default_factory=dict)

    def format(self) -> str:
        c = self.config
        lines = [f"windows: {c.window_seconds:g} s output, t_f {c.future_seconds:+g} s, "
                 f"{c.input_frames} input frames, silence < {c.silence_db:g} dB(A), "
                 f">= {100 * c.min_joint_activity:g}% jointly active, "
                 f"{c.max_retries} retries"]
        for split, rep in self.splits.items():
            lines.append(f"{split}: {rep.tracks} tracks, {len(rep.windows)} windows accepted, "
                         f"{len(rep.rejections)} rejected")
            for reason, n in Counter(r.reason for r in rep.rejections).most_common():
                lines.append(f"  rejected ({reason}): {n}")
            hist = rep.class_histogram()
            if hist:
                lines.append("  targets: " + ", ".join(f"{k} {v}" for k, v in hist.most_common()))
        return "\n".join(lines)


def window_report(
    corpus: str | Path, config: WindowConfig, seed: int = 0,
    splits: Sequence[str] | None = None, progress: bool = True, sample_rate: int = 16000,
) -> WindowReport:
    """Run :func:`select_window` once on every track of a corpus.

    Args:
        corpus: Slakh-layout corpus root.
        config: window rule.
        seed: per-track generators come from :func:`track_rng` (order independent).
        splits: only these splits (default: all).
        progress: show a tqdm progress bar.
        sample_rate: rate the stems are decoded at for the activity analysis.
    """
    from tqdm import tqdm

    reader = SlakhCorpus(corpus)
    chosen = list(splits) if splits else reader.splits
    tracks = [t for split in chosen for t in reader.tracks(split)]
    report = WindowReport(config, {split: SplitReport() for split in chosen})
    for track in tqdm(tracks, desc="windows", unit="track", disable=not progress):
        rep = report.splits[track.split]
        rep.tracks += 1
        result = select_window(track, config, track_rng(seed, track), sample_rate=sample_rate)
        if isinstance(result, Rejection):
            log.debug("%s/%s rejected: %s", track.split, track.name, result.reason)
            rep.rejections.append(result)
        else:
            rep.windows.append(result)
    return report


def hop_samples(sample_rate: int, config: WindowConfig) -> int:
    """Samples per frame; :class:`ConfigError` unless ``sample_rate`` is a multiple of it."""
    hop = sample_rate / config.frame_rate_hz
    if sample_rate <= 0 or abs(hop - round(hop)) > 1e-9:
        raise ConfigError(f"sample_rate {sample_rate} Hz is not a whole number of samples per "
                          f"frame at {config.frame_rate_hz} Hz")
    return round(hop)


def _mono(wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2 and wave.shape[0] == 1:
        wave = wave[0]
    if wave.ndim != 1:
        raise AudioError(f"expected mono audio [N] or [1, N], got shape {tuple(wave.shape)}")
    return wave
