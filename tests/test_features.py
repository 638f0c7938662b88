"""Musical input features: streaming == offline bit for bit, causal, and right on signals whose
answer is known (a click track's tempo and beats, a sine's pitch class, a level change)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stemstream.errors import ConfigError
from stemstream.features import (
    FEATURE_NAMES,
    FeatureStream,
    check_features,
    feature_channels,
    feature_dim,
    features,
)
from stemstream.model.streaming import advance_beat

RATE, HOP = 16000, 320
FRAME_RATE = RATE / HOP


def _clicks(bpm: float, seconds: float, offset_s: float = 0.0) -> np.ndarray:
    """Short decaying 1 kHz clicks every beat from ``offset_s``."""
    out = np.zeros(int(seconds * RATE))
    click = np.sin(2 * np.pi * 1000 * np.arange(400) / RATE) * np.exp(-np.arange(400) / 80)
    for t in np.arange(offset_s, seconds, 60.0 / bpm):
        start = int(t * RATE)
        end = min(start + click.size, out.size)
        out[start:end] += click[: end - start]
    return out


def _music(seconds: float = 8.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 1.5 * t)) / 2
    return _clicks(100, seconds) + tone + 0.01 * rng.standard_normal(t.size)


def test_streaming_equals_offline_bit_for_bit_for_any_push_sizes():
    signal = _music(7.3)
    offline = features(signal, RATE, HOP)
    assert offline.shape == (feature_dim(FEATURE_NAMES), -(-signal.size // HOP))
    stream = FeatureStream(RATE, HOP)
    rng = np.random.default_rng(1)
    pieces, at = [], 0
    while at < signal.size:
        size = int(rng.choice([1, 7, 160, 319, 320, 321, 1000, 4410]))
        pieces.append(stream.push(signal[at : at + size]))
        at += size
    pieces.append(stream.flush())
    np.testing.assert_array_equal(np.concatenate(pieces, axis=1), offline)


def test_streams_pushed_together_equal_each_pushed_alone_bit_for_bit():
    """An engine's sessions push their features together (one vectorised frame for all):
    the same float32 frames as each stream alone, for streams at different tempos, a silent
    one, one that joins late, pieces that complete different numbers of frames, and a stream
    of another kind (mono features only) among them."""
    signals = [_clicks(72, 9.0), _music(9.0, seed=1), np.zeros(int(9.0 * RATE)),
               _clicks(150, 9.0, offset_s=0.13) + _music(9.0, seed=2),
               np.random.default_rng(5).standard_normal(int(9.0 * RATE)) * 0.2]
    names = [FEATURE_NAMES] * 4 + [("onset", "chroma")]
    alone = [features(x, RATE, HOP, n) for x, n in zip(signals, names, strict=True)]
    streams = [FeatureStream(RATE, HOP, n) for n in names]
    got: list[list[np.ndarray]] = [[] for _ in signals]
    sizes = [320, 517, 320, 1111, 320]
    joins = [0, 0, 0, 40, 0]  # the fourth stream starts at piece 40
    at = [0] * len(signals)
    for piece in range(1000):
        active = [i for i in range(len(signals))
                  if piece >= joins[i] and at[i] < signals[i].shape[0]]
        if not active:
            break
        blocks = [signals[i][at[i] : at[i] + sizes[i]] for i in active]
        for i, frames in zip(active, FeatureStream.push_many([streams[i] for i in active],
                                                             blocks), strict=True):
            got[i].append(frames)
            at[i] += sizes[i]
    for i, stream in enumerate(streams):
        out = np.concatenate([*got[i], stream.flush()], axis=1)
        assert out.shape == alone[i].shape, i
        assert np.array_equal(out, alone[i]), f"stream {i} differs from alone"
    assert np.abs(alone[0][-4:]).sum() > 0 and np.abs(alone[2]).sum() == 0  # beat; silence


def test_state_dict_continues_bit_identically():
    signal = _music(5.0)
    whole = features(signal, RATE, HOP)
    first = FeatureStream(RATE, HOP)
    head = first.push(signal[:40000])
    second = FeatureStream(RATE, HOP)
    second.load_state_dict(first.state_dict())
    tail = np.concatenate([second.push(signal[40000:]), second.flush()], axis=1)
    np.testing.assert_array_equal(np.concatenate([head, tail], axis=1), whole)


def test_a_frame_depends_on_no_later_sample():
    signal = _music(4.0)
    changed = signal.copy()
    cut = 100 * HOP + 17  # inside frame 100
    changed[cut:] = np.random.default_rng(2).standard_normal(changed.size - cut)
    a, b = features(signal, RATE, HOP), features(changed, RATE, HOP)
    np.testing.assert_array_equal(a[:, :100], b[:, :100])
    assert not np.array_equal(a[:, 100], b[:, 100])


@pytest.mark.parametrize("bpm", [75.0, 100.0, 140.0])
def test_beat_tracker_finds_a_click_tracks_tempo_and_beats(bpm):
    seconds = 10.0
    out = features(_clicks(bpm, seconds, offset_s=0.13), RATE, HOP, ["beat"])
    sin, cos, log_period, confidence = out
    settled = slice(int(5 * FRAME_RATE), None)  # after five seconds of history
    period = 2 ** log_period[settled] * 0.5 * FRAME_RATE
    assert np.median(np.abs(period - 60 * FRAME_RATE / bpm)) < 0.5  # frames
    assert np.median(confidence[settled]) > 0.5
    # on each beat frame the phase is ~0 (cos ~ 1); half a beat later ~pi (cos ~ -1)
    beats = np.floor((0.13 + np.arange(0, seconds, 60 / bpm)) * FRAME_RATE).astype(int)
    beats = beats[(beats >= 5 * FRAME_RATE) & (beats < out.shape[1] - 40)]
    assert np.mean(cos[beats] > 0.9) > 0.8
    half = beats + int(round(30 * FRAME_RATE / bpm))
    assert np.mean(cos[half] < -0.5) > 0.8


@pytest.mark.parametrize("bpm", [75.0, 140.0])
def test_beat_advanced_by_a_lead_is_the_phase_the_tracker_reports_that_much_later(bpm):
    """What a live model hears (StreamingDecoderConfig.beat_lead_seconds): the phase at
    frame f rotated by 7 frames at the tracked period is the phase tracked at frame f + 7."""
    lead = 7
    out = features(_clicks(bpm, 10.0, offset_s=0.13), RATE, HOP, ["beat"])
    beat = torch.from_numpy(out[:3].T.copy())  # [T, 3]
    ahead = advance_beat(beat, lead / FRAME_RATE)
    settled = slice(int(5 * FRAME_RATE), out.shape[1] - lead)
    later = slice(int(5 * FRAME_RATE) + lead, None)
    error = torch.atan2(ahead[settled, 0], ahead[settled, 1]) - torch.atan2(
        beat[later, 0], beat[later, 1])
    error = torch.remainder(error + torch.pi, 2 * torch.pi) - torch.pi
    period = 60 * FRAME_RATE / bpm
    assert error.abs().median() < 2 * np.pi * 1.0 / period  # within a frame of phase
    unmoved = torch.atan2(beat[settled, 0], beat[settled, 1]) - torch.atan2(
        beat[later, 0], beat[later, 1])
    unmoved = torch.remainder(unmoved + torch.pi, 2 * torch.pi) - torch.pi
    assert unmoved.abs().median() > 2 * np.pi * (lead - 1) / period  # the lead mattered
    torch.testing.assert_close(ahead[:, 2], beat[:, 2])  # the period channel is unchanged
    assert advance_beat(torch.zeros(5, 3), 0.1).abs().max() == 0  # silence stays silent


def test_chroma_names_a_sines_pitch_class_and_loudness_follows_the_level():
    t = np.arange(3 * RATE) / RATE
    a4 = np.sin(2 * np.pi * 440 * t)  # A = pitch class 9
    level = np.where(t < 1.5, 0.01, 0.5)
    out = features(a4 * level, RATE, HOP, ["loudness", "chroma"])
    loud, chroma = out[0], out[1:]
    assert np.all(np.argmax(chroma[:, 10:], axis=0) == 9)
    np.testing.assert_allclose(chroma[:, 10:].sum(axis=0), 1.0, atol=1e-5)
    assert loud[int(2.5 * FRAME_RATE)] > loud[int(1.0 * FRAME_RATE)] + 0.3
    silent = features(np.zeros(RATE), RATE, HOP)
    assert np.all(silent == 0)  # silence: no onset, no level, no chroma, no beat


def test_onset_strength_peaks_at_clicks():
    out = features(_clicks(120, 4.0, offset_s=0.25), RATE, HOP, ["onset"])[0]
    beats = np.floor((0.25 + np.arange(0, 3.9, 0.5)) * FRAME_RATE).astype(int)  # click frames
    between = np.setdiff1d(np.arange(out.size), np.concatenate([beats, beats + 1, beats + 2]))
    assert np.min(np.maximum(out[beats], out[beats + 1])) > 10 * np.max(out[between])


def test_names_are_checked_and_channels_picked():
    assert check_features(["beat", "onset"]) == ("beat", "onset")
    with pytest.raises(ConfigError, match="unknown input feature 'tempo'"):
        check_features(["tempo"])
    with pytest.raises(ConfigError, match="repeat"):
        check_features(["onset", "onset"])
    assert feature_dim(["onset", "beat"]) == 5
    np.testing.assert_array_equal(feature_channels(["beat", "onset"]), [14, 15, 16, 17, 0])
    picked = features(_music(2.0), RATE, HOP)[feature_channels(["chroma"])]
    np.testing.assert_array_equal(picked, features(_music(2.0), RATE, HOP, ["chroma"]))
