"""Beat F-measure and FAD: validity checks on generated signals."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from stemstream.errors import ConfigError
from stemstream.eval.beats import beat_f_measure, resolve_tracker, track_beats
from stemstream.eval.fad import fad, frechet_distance, get_embedder
from stemstream.eval.vggish import VGGish, load_vggish, log_mel_examples

SR = 16000


def clicks(bpm: float = 120.0, seconds: float = 10.0, shift: float = 0.0) -> np.ndarray:
    out = np.zeros(int(seconds * SR), np.float32)
    burst = np.random.default_rng(0).standard_normal(400).astype(np.float32)
    burst *= np.exp(-np.arange(400) / 80.0).astype(np.float32)
    for t in np.arange(shift, seconds, 60.0 / bpm):
        start = int(t * SR)
        seg = out[start : start + 400]
        seg += 0.8 * burst[: len(seg)]
    return out


def test_beat_f_is_high_for_aligned_beats_and_drops_when_shifted():
    mix = clicks()
    assert beat_f_measure(clicks(), mix, SR, tracker="librosa") > 0.9
    shifted = beat_f_measure(clicks(shift=0.25), mix, SR, tracker="librosa")
    assert shifted < 0.3
    assert beat_f_measure(np.zeros_like(mix), mix, SR, tracker="librosa") == 0.0
    assert track_beats(np.zeros(SR), SR, "librosa").size == 0


def test_tracker_names():
    assert resolve_tracker("auto") in ("madmom", "librosa")
    with pytest.raises(ConfigError, match="unknown beat tracker"):
        resolve_tracker("tapping")
    with pytest.raises(ConfigError, match="beat_this"):
        track_beats(clicks(seconds=2), SR, "beat_this:/nowhere.ckpt")


def test_fad_matches_the_direct_formula_and_is_zero_on_itself():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((300, 6)) * 1.5 + 0.3
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fad(a, b) == pytest.approx(direct, rel=1e-8)
    assert fad(a, a) == pytest.approx(0.0, abs=1e-9)
    assert fad(a, b) == pytest.approx(fad(b, a), rel=1e-8)


def test_fad_grows_with_noise_and_survives_rank_deficient_covariances():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((500, 8))
    values = [fad(base, base + level * rng.standard_normal(base.shape))
              for level in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert values[0] == pytest.approx(0.0, abs=1e-9)
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    low_rank = rng.standard_normal((50, 2)) @ rng.standard_normal((2, 16))  # rank 2 in 16-D
    value = frechet_distance(low_rank.mean(0), np.cov(low_rank, rowvar=False),
                             np.zeros(16), np.cov(low_rank[:20], rowvar=False))
    assert np.isfinite(value) and value >= 0 and isinstance(value, float)
    with pytest.raises(ConfigError, match="at least two"):
        fad(base[:1], base)
    with pytest.raises(ConfigError, match="equal D"):
        fad(base, base[:, :3])


def test_codec_embedding_and_unknown_embedder():
    embedder = get_embedder("codec")
    emb = embedder.embed(np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 220).astype(np.float32), SR)
    assert emb.shape == (3, embedder.codec.latent_dim) and emb.dtype == np.float64
    with pytest.raises(ConfigError, match="unknown FAD embedding"):
        get_embedder("clap")


def test_vggish_shapes_and_weights_round_trip(tmp_path):
    examples = log_mel_examples(np.random.default_rng(0).standard_normal(2 * SR), SR)
    assert examples.shape == (2, 96, 64)
    torch.manual_seed(0)
    model = VGGish(pca=True).eval()
    state = {("pproc._pca_matrix" if k == "pca_matrix" else
              "pproc._pca_means" if k == "pca_means" else k): v
             for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "vggish.pth")
    loaded = load_vggish(tmp_path / "vggish.pth")
    audio = np.random.default_rng(1).standard_normal(3 * SR).astype(np.float32)
    assert np.allclose(loaded.embed(audio, SR), model.embed(audio, SR))
    assert loaded.embed(audio, SR).shape == (3, 128)
    with pytest.raises(ConfigError, match="needs weights"):
        load_vggish(None)
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="not VGGish weights"):
        load_vggish(tmp_path / "bad.pth")
