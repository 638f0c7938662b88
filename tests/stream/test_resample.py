"""StreamResampler: block-split invariance, exact output length, fidelity against soxr, and
state save/restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stemstream import audio
from stemstream.errors import StemstreamError
from stemstream.stream.resample import StreamResampler

RATE_PAIRS = [(44100, 16000), (48000, 16000), (16000, 44100), (16000, 16000), (22050, 48000)]


def random_splits(total: int, seed: int, largest: int = 700) -> list[int]:
    """Block lengths (0 included) summing to ``total``."""
    rng = np.random.default_rng(seed)
    sizes, left = [], total
    while left > 0:
        size = min(left, int(rng.choice([0, 1, 2, 3, rng.integers(4, largest)])))
        sizes.append(size)
        left -= size
    return sizes


def stream(resampler: StreamResampler, signal: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, pos = [], 0
    for size in sizes:
        out.append(resampler.process(signal[pos : pos + size]))
        pos += size
    assert pos == signal.shape[0]
    out.append(resampler.flush())
    for piece in out:
        assert piece.dtype == np.float32
    return np.concatenate(out)


def make_signal(samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(samples)).astype(np.float32)


@pytest.mark.parametrize(("rate_in", "rate_out"), RATE_PAIRS)
def test_output_is_identical_for_any_block_split(rate_in, rate_out):
    signal = make_signal(rate_in // 5 + 17)
    whole = stream(StreamResampler(rate_in, rate_out), signal, [signal.shape[0]])
    for seed in range(4):
        split = stream(
            StreamResampler(rate_in, rate_out), signal, random_splits(signal.shape[0], seed)
        )
        assert np.array_equal(split, whole), f"split seed {seed}"
    ones = stream(StreamResampler(rate_in, rate_out), signal[:500], [1] * 500)
    assert np.array_equal(ones, stream(StreamResampler(rate_in, rate_out), signal[:500], [500]))


@pytest.mark.parametrize(("rate_in", "rate_out"), RATE_PAIRS)
@pytest.mark.parametrize("samples", [0, 1, 2, 7, 441, 1000, 4410])
def test_total_length_is_ceil_of_the_rate_ratio(rate_in, rate_out, samples):
    resampler = StreamResampler(rate_in, rate_out)
    out = stream(resampler, make_signal(samples), random_splits(samples, 1, largest=300))
    assert out.shape == (-(-samples * rate_out // rate_in),)
    # flush resets: the same object streams again from scratch
    again = stream(resampler, make_signal(samples), [samples])
    assert np.array_equal(again, out)


@pytest.mark.parametrize(("rate_in", "rate_out"), RATE_PAIRS)
def test_output_appears_within_the_filter_look_ahead(rate_in, rate_out):
    resampler = StreamResampler(rate_in, rate_out)
    emitted, received = 0, 0
    for size in random_splits(rate_in // 10, 2):
        emitted += resampler.process(make_signal(size)).shape[0]
        received += size
        # every output whose input position is at least `latency_samples` old is out
        ready = received - resampler.latency_samples
        assert emitted >= (-(-ready * rate_out // rate_in) if ready > 0 else 0)
        assert emitted <= -(-received * rate_out // rate_in)


@pytest.mark.parametrize(
    ("rate_in", "rate_out", "freq"),
    [
        (44100, 16000, 440.0),
        (48000, 16000, 1234.5),
        (16000, 44100, 3000.0),
        (16000, 48000, 250.0),
        (22050, 48000, 5000.0),
    ],
)
def test_a_sine_survives_like_the_offline_resampler(rate_in, rate_out, freq):
    seconds = 0.5
    t = np.arange(int(seconds * rate_in)) / rate_in
    sine = (0.6 * np.sin(2 * np.pi * freq * t + 0.3)).astype(np.float32)
    mine = stream(StreamResampler(rate_in, rate_out), sine, random_splits(sine.shape[0], 3))
    ref = audio.resample(sine, rate_in, rate_out)
    assert abs(mine.shape[0] - ref.shape[0]) <= 1
    n = min(mine.shape[0], ref.shape[0])
    edge = rate_out // 50  # 20 ms away from both ends (filter ramps, zero padding)
    assert np.abs(mine[edge : n - edge] - ref[edge : n - edge]).max() < 1e-2
    # against the analytic sine too: same frequency, amplitude and phase (aligned start)
    t_out = np.arange(n) / rate_out
    exact = 0.6 * np.sin(2 * np.pi * freq * t_out + 0.3)
    assert np.abs(mine[edge : n - edge] - exact[edge : n - edge]).max() < 1e-2


def test_downsampling_removes_content_above_the_new_nyquist():
    rate_in, rate_out = 48000, 16000
    t = np.arange(rate_in // 2) / rate_in
    alias = (0.5 * np.sin(2 * np.pi * 12000 * t)).astype(np.float32)  # aliases to 4 kHz
    out = stream(StreamResampler(rate_in, rate_out), alias, [480] * 50)
    assert np.abs(out[200:-200]).max() < 5e-3


@pytest.mark.parametrize(("rate_in", "rate_out"), RATE_PAIRS)
def test_state_dict_mid_stream_continues_identically(rate_in, rate_out):
    signal = make_signal(rate_in // 8, seed=5)
    sizes = random_splits(signal.shape[0], 7)
    whole = stream(StreamResampler(rate_in, rate_out), signal, sizes)
    for cut in (0, 1, len(sizes) // 2, len(sizes)):
        first = StreamResampler(rate_in, rate_out)
        head, pos = [], 0
        for size in sizes[:cut]:
            head.append(first.process(signal[pos : pos + size]))
            pos += size
        state = first.state_dict()
        for value in state.values():
            assert isinstance(value, torch.Tensor)
        resumed = StreamResampler(rate_in, rate_out)
        resumed.load_state_dict({k: v.clone() for k, v in state.items()})
        tail = stream(resumed, signal[pos:], sizes[cut:])
        assert np.array_equal(np.concatenate([*head, tail]), whole), f"cut {cut}"
        # the original keeps going unchanged too (the state is a copy)
        tail_first = stream(first, signal[pos:], sizes[cut:])
        assert np.array_equal(tail_first, tail)


def test_identity_rate_passes_samples_through():
    resampler = StreamResampler(16000, 16000)
    signal = make_signal(1000)
    assert resampler.latency_samples == 0
    assert np.array_equal(stream(resampler, signal, [3, 500, 497]), signal)


def test_invalid_rates_are_refused():
    with pytest.raises(StemstreamError):
        StreamResampler(0, 16000)
    with pytest.raises(StemstreamError):
        StreamResampler(16000, -1)
