"""Appendix-A.7 mixing: loudness targets, relative stem gain, peak safety, silence, errors."""

from __future__ import annotations

import numpy as np
import pytest

from stemstream.audio import loudness
from stemstream.errors import AudioError
from stemstream.mixing import mix_stem

SR = 16000


def _noise(seed: int, seconds: float = 3.0, scale: float = 0.1) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(
        np.float32
    )


def _coefficients(mix: np.ndarray, *tracks: np.ndarray) -> np.ndarray:
    """The gains with which uncorrelated ``tracks`` appear in ``mix`` (the mix is linear)."""
    basis = np.stack(tracks, axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, mix.astype(np.float64), rcond=None)
    return coef


def test_mix_is_at_target_loudness_and_peak_safe():
    mix = mix_stem([_noise(1, scale=0.5), _noise(2, scale=0.01)], _noise(3, scale=0.2), SR)
    assert mix.dtype == np.float32 and mix.shape == (3 * SR,)
    assert loudness(mix, SR) == pytest.approx(-18.0, abs=0.05)
    assert np.abs(mix).max() <= 0.99 + 1e-6


@pytest.mark.parametrize("stem_gain_db", [5.0, 0.0, -3.0])
def test_stem_sits_stem_gain_db_above_each_input_track(stem_gain_db):
    a, b, stem = _noise(1, scale=0.5), _noise(2, scale=0.01), _noise(3, scale=0.2)
    mix = mix_stem(np.stack([a, b]), stem, SR, stem_gain_db=stem_gain_db)
    ca, cb, cs = _coefficients(mix, a, b, stem)
    stem_lufs = loudness(cs * stem, SR)
    assert stem_lufs - loudness(ca * a, SR) == pytest.approx(stem_gain_db, abs=0.05)
    assert stem_lufs - loudness(cb * b, SR) == pytest.approx(stem_gain_db, abs=0.05)


def test_loud_peaky_mix_is_scaled_below_the_peak_limit():
    stem = _noise(3, scale=0.05)
    stem[::SR // 4] = 0.05 * 400  # sparse clicks: tiny loudness share, huge peaks
    mix = mix_stem(_noise(1), stem, SR)
    assert np.abs(mix).max() <= 0.99 + 1e-6
    assert loudness(mix, SR) < -18.0  # the peak limit won over the loudness target


def test_silent_stem_and_silent_inputs_are_fine():
    x = _noise(1)
    silent = np.zeros_like(x)
    mix = mix_stem([x, silent], silent, SR)
    assert np.isfinite(mix).all()
    assert loudness(mix, SR) == pytest.approx(-18.0, abs=0.05)
    assert not mix_stem(silent, silent, SR).any()
    only_stem = mix_stem(silent, x, SR)
    assert loudness(only_stem, SR) == pytest.approx(-18.0, abs=0.05)


def test_short_tracks_are_mixed():
    mix = mix_stem(_noise(1, seconds=0.1), _noise(2, seconds=0.1), SR)
    assert mix.shape == (SR // 10,) and np.isfinite(mix).all()


def test_bad_inputs_raise_one_clear_error():
    x = _noise(1)
    with pytest.raises(AudioError, match="samples but the stem has"):
        mix_stem([x[:-1]], x, SR)
    with pytest.raises(AudioError, match="NaN"):
        mix_stem(x, np.full_like(x, np.nan), SR)
    with pytest.raises(AudioError, match="mono"):
        mix_stem(x, np.stack([x, x]), SR)
    with pytest.raises(AudioError, match="at least one"):
        mix_stem([], x, SR)


def test_mix_in_the_inputs_channel_layout():
    from stemstream.mixing import mix_stem_channels

    left, right, stem = _noise(1, scale=0.4), _noise(2, scale=0.05), _noise(3, scale=0.2)
    mono = mix_stem_channels(left[None], stem, SR)
    np.testing.assert_array_equal(mono[0], mix_stem(left, stem, SR))  # C = 1 is mix_stem
    mix = mix_stem_channels(np.stack([left, right]), stem, SR)
    assert mix.shape == (2, 3 * SR) and mix.dtype == np.float32
    assert loudness(mix, SR) == pytest.approx(-18.0, abs=0.05)
    assert np.abs(mix).max() <= 0.99 + 1e-6
    # one input gain for both channels (the layout is kept), the stem equal in both
    cl, csl = _coefficients(mix[0], left, stem)
    cr, csr = _coefficients(mix[1], right, stem)
    assert cl == pytest.approx(cr, rel=1e-4) and csl == pytest.approx(csr, rel=1e-4)
    with pytest.raises(AudioError, match="as long as the input"):
        mix_stem_channels(np.stack([left, right]), stem[:-1], SR)
