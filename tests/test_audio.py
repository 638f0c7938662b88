import numpy as np
import pytest
import soundfile as sf

from stemstream import audio
from stemstream.errors import AudioError

SR = 16000


def _sine(freq=440.0, seconds=1.0, sr=SR, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_roundtrip_resample_and_downmix(tmp_path):
    stereo = np.stack([_sine(sr=44100), 0.5 * _sine(sr=44100)])
    path = audio.save(tmp_path / "x.wav", stereo, 44100)
    loaded = audio.load(path, sample_rate=SR)
    assert loaded.sample_rate == SR and loaded.samples.shape == (1, SR)
    assert loaded.samples.dtype == np.float32
    expected = 0.75 * _sine()
    # soxr HQ resampling of a 440 Hz tone is accurate away from the edges.
    np.testing.assert_allclose(loaded.samples[0, 1000:-1000], expected[1000:-1000], atol=2e-3)
    kept = audio.load(path, channels=None)
    assert kept.samples.shape == (2, 44100) and kept.sample_rate == 44100


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "cannot decode"),
        (b"RIFF\x00\x00garbage-not-a-wave-file" * 4, "cannot decode"),
    ],
)
def test_corrupt_files_rejected(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=message):
        audio.load(path)


def test_missing_empty_and_nonfinite(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        audio.load(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0, 1), np.float32), SR)
    with pytest.raises(AudioError, match="empty"):
        audio.load(empty)
    nan = tmp_path / "nan.wav"
    data = _sine()
    data[100] = np.nan
    sf.write(str(nan), data, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="1 NaN/Inf"):
        audio.load(nan)
    with pytest.raises(AudioError, match="NaN/Inf"):
        audio.check_audio(np.array([0.0, np.inf]))


def test_loudness_normalisation_and_peak_safety():
    x = _sine(amp=0.1, seconds=3.0)
    y = audio.normalize_loudness(x, SR, -18.0)
    assert audio.loudness(y, SR) == pytest.approx(-18.0, abs=0.05)
    # A target that would push the peak above 1 is limited to the peak instead.
    z = audio.normalize_loudness(x, SR, 0.0, peak_limit=1.0)
    assert np.max(np.abs(z)) == pytest.approx(1.0, abs=1e-6)
    assert audio.loudness(np.zeros(SR, np.float32), SR) == audio.SILENCE_LUFS
    # Short clips are measurable too (periodic extension to one 400 ms gating block).
    short = audio.loudness(_sine(seconds=0.1), SR)
    assert short == pytest.approx(audio.loudness(x * 5, SR), abs=0.5)
