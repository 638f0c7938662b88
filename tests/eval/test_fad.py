"""FAD: the stable Fréchet distance against closed forms and scipy, the embedder registry,
and the VGGish implementation (shapes, filterbank, weight loading) with random weights."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch

from stemstream.errors import ConfigError
from stemstream.eval.fad import fad, frechet_distance, get_embedder
from stemstream.eval.vggish import VGGish, load_vggish, log_mel_examples, mel_matrix

SR = 16000


def direct(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root.real))


def test_matches_the_direct_formula_and_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((300, 6)) * 1.5 + 0.3
    assert fad(a, b) == pytest.approx(direct(a, b), rel=1e-8)
    assert fad(a, a) == pytest.approx(0.0, abs=1e-9)
    assert fad(a, b) == pytest.approx(fad(b, a), rel=1e-8)
    # Diagonal Gaussians: sum (mu1 - mu2)^2 + (sd1 - sd2)^2.
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = 1.0 + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    value = frechet_distance(np.zeros(3), np.diag(var1), np.array([1.0, 0, 0]), np.diag(var2))
    assert value == pytest.approx(expected, rel=1e-12)


def test_grows_monotonically_with_noise():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((500, 8))
    noise = rng.standard_normal(base.shape)
    values = [fad(base, base + level * noise) for level in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert values[0] == pytest.approx(0.0, abs=1e-9)
    assert all(b > a for a, b in zip(values, values[1:], strict=False))


def test_rank_deficient_covariances_give_real_non_negative_floats():
    rng = np.random.default_rng(2)
    low_rank = rng.standard_normal((50, 2)) @ rng.standard_normal((2, 16))  # rank 2 in 16-D
    few = rng.standard_normal((5, 32))  # n < D: singular covariance
    for a, b in ((low_rank, low_rank), (low_rank, low_rank[:20] + 1e-9), (few, few[::-1] * 2)):
        value = fad(a, b)
        assert isinstance(value, float) and np.isfinite(value) and value >= 0.0
    assert fad(low_rank, low_rank) == pytest.approx(0.0, abs=1e-8)
    # A PSD matrix whose round-off makes an eigenvalue slightly negative.
    vectors = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    sigma = (vectors * np.array([1.0, 0.5, 0.1, 0.0, 0.0, -1e-15])) @ vectors.T
    assert frechet_distance(np.zeros(6), sigma, np.zeros(6), sigma) == pytest.approx(0, abs=1e-7)


def test_invalid_inputs_are_clear_errors():
    base = np.random.default_rng(3).standard_normal((10, 4))
    with pytest.raises(ConfigError, match="at least two"):
        fad(base[:1], base)
    with pytest.raises(ConfigError, match="equal D"):
        fad(base, base[:, :3])
    with pytest.raises(ConfigError, match="NaN"):
        fad(np.full((3, 4), np.nan), base)
    with pytest.raises(ConfigError, match="mismatched shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_embedder_registry(monkeypatch):
    embedder = get_embedder("codec")
    tone = np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 220).astype(np.float32)
    emb = embedder.embed(tone, SR)
    assert emb.shape == (3, embedder.codec.latent_dim) and emb.dtype == np.float64  # 1 s means
    assert np.allclose(embedder.embed(np.stack([tone, tone]), SR), emb, atol=1e-5)

    class FakeCocola:
        def embed(self, audio, sample_rate):
            return np.ones((2, 5), np.float32)

    fake = types.ModuleType("stemstream.eval.cocola")
    fake.load_cocola = lambda path: FakeCocola()
    monkeypatch.setitem(sys.modules, "stemstream.eval.cocola", fake)
    cocola = get_embedder("cocola", "/some/ckpt")
    assert cocola.name == "cocola" and cocola.embed(tone, SR).dtype == np.float64
    with pytest.raises(ConfigError, match="VGGish needs weights"):
        get_embedder("vggish")
    with pytest.raises(ConfigError, match="unknown FAD embedding"):
        get_embedder("clap")


def test_vggish_front_end():
    weights = mel_matrix()
    assert weights.shape == (257, 64) and np.all(weights[0] == 0) and np.all(weights >= 0)
    peaks = weights.argmax(0)
    assert np.all(np.diff(peaks) >= 0) and peaks[0] >= 4 and peaks[-1] <= 240  # 125-7500 Hz
    noise = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32)
    assert log_mel_examples(noise, SR).shape == (2, 96, 64)
    assert log_mel_examples(noise[:1000], SR).shape == (1, 96, 64)  # short clips are padded
    assert log_mel_examples(np.stack([noise, noise]), SR).shape == (2, 96, 64)
    assert log_mel_examples(np.zeros(3 * 44100), 44100).shape == (3, 96, 64)


def test_vggish_forward_and_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    model = VGGish().eval()
    assert model(torch.zeros(3, 96, 64)).shape == (3, 128)
    # torchvggish layout: the network's .pth beside a PCA file holding numpy arrays.
    folder = tmp_path / "vggish"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "vggish-10086976.pth")
    rng = np.random.default_rng(0)
    pca = {"pca_eigen_vectors": np.linalg.qr(rng.standard_normal((128, 128)))[0],
           "pca_means": rng.standard_normal(128)}
    torch.save(pca, folder / "vggish_pca_params-970ea276.pth")
    audio = rng.standard_normal(2 * SR).astype(np.float32)
    raw = model.embed(audio, SR)
    assert raw.shape == (2, 128) and raw.dtype == np.float64
    whitened = load_vggish(folder).embed(audio, SR)
    expected = (pca["pca_eigen_vectors"] @ (raw.T - pca["pca_means"][:, None])).T
    assert np.allclose(whitened, expected, atol=1e-3)
    assert np.allclose(load_vggish(folder / "vggish-10086976.pth").embed(audio, SR), raw)

    with pytest.raises(ConfigError, match="no such VGGish weights"):
        load_vggish(tmp_path / "missing.pth")
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="not VGGish weights"):
        load_vggish(tmp_path / "bad.pth")


def test_codec_embedding_of_real_audio():
    from stemstream.eval.fad import get_embedder as registry

    embedder = registry("codec")
    tone = np.sin(np.arange(3 * 16000) / 16000 * 2 * np.pi * 220).astype(np.float32)
    emb = embedder.embed(tone, 16000)
    assert emb.shape == (3, embedder.codec.latent_dim) and emb.dtype == np.float64
