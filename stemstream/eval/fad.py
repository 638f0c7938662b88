"""Fréchet audio distance (SPEC section 8) with pluggable embeddings.

``FAD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between Gaussians fitted to two
embedding sets. Everything is float64, and the trace of the matrix square root is computed
from the symmetric PSD matrix ``S_a^(1/2) S_b S_a^(1/2)`` (same eigenvalues as ``S_a S_b``) by
eigendecomposition with negative round-off clipped, so the result is always real and
non-negative — unlike ``scipy.linalg.sqrtm(S_a @ S_b)``, which can return complex values and
negative distances on rank-deficient covariances.

Embeddings (:func:`get_embedder`):

* ``cocola`` — our COCOLA encoder (``stemstream.eval.cocola``; 5 s windows, 2.5 s hop), the
  offline default;
* ``codec`` — the shipped codec's quantised latents (``codec.embed(codec.encode(wave))``,
  ``[1, D, T]``) averaged over 1 s blocks: one row per second, so FAD sees as many rows per
  clip as the other embedders do and frame-to-frame jitter is smoothed out; a cheap
  timbre/pitch embedding that needs no extra weights (``path`` = a codec spec);
* ``vggish`` — VGGish (the paper's choice) with user-supplied weights: ``path`` = a weights
  file or a folder with weights + PCA file (:func:`stemstream.eval.vggish.load_vggish`).

FAD numbers are only comparable within one embedding: reports name it (``fad_<embedding>``).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from stemstream.errors import ConfigError

EMBEDDINGS = ("cocola", "codec", "vggish")


class Embedder(Protocol):
    name: str

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """``[N]`` (or ``[C, N]``) float audio -> ``float64 [n, D]`` embeddings."""


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; negative round-off eigenvalues count as 0."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64, >= 0)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or \
            sigma1.shape != (mu1.size, mu1.size):
        raise ConfigError(f"FAD: mismatched shapes {mu1.shape} {sigma1.shape} / "
                          f"{mu2.shape} {sigma2.shape}")
    if not all(np.isfinite(x).all() for x in (mu1, mu2, sigma1, sigma2)):
        raise ConfigError("FAD: non-finite mean or covariance")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)
    trace_sqrt = float(np.sqrt(eig).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def fad(emb_a: np.ndarray, emb_b: np.ndarray) -> float:
    """FAD between two embedding sets ``[n_a, D]`` and ``[n_b, D]`` (each n >= 2)."""
    emb_a, emb_b = np.asarray(emb_a, np.float64), np.asarray(emb_b, np.float64)
    if emb_a.ndim != 2 or emb_b.ndim != 2 or emb_a.shape[1] != emb_b.shape[1]:
        raise ConfigError(f"FAD needs [n, D] embeddings of equal D, got {emb_a.shape} and "
                          f"{emb_b.shape}")
    if len(emb_a) < 2 or len(emb_b) < 2:
        raise ConfigError("FAD needs at least two embeddings per set")
    if not (np.isfinite(emb_a).all() and np.isfinite(emb_b).all()):
        raise ConfigError("FAD embeddings contain NaN/Inf")
    return frechet_distance(emb_a.mean(0), np.cov(emb_a, rowvar=False),
                            emb_b.mean(0), np.cov(emb_b, rowvar=False))


class CodecEmbedder:
    """Quantised codec latents averaged over ``seconds`` blocks."""

    name = "codec"

    def __init__(self, codec_spec: str | None = None, seconds: float = 1.0) -> None:
        from stemstream.codec.registry import get_codec

        self.codec = get_codec(codec_spec or "default").eval()
        self.frames = max(1, round(seconds * self.codec.frame_rate))

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        import torch

        from stemstream import audio as audio_lib

        samples = np.asarray(audio, np.float32)
        samples = (samples.mean(axis=0) if samples.ndim == 2 else samples).reshape(-1)
        if sample_rate != self.codec.sample_rate:
            samples = audio_lib.resample(samples, sample_rate, self.codec.sample_rate)
        with torch.inference_mode():
            wave = torch.from_numpy(np.ascontiguousarray(samples))[None, None]
            latents = self.codec.embed(self.codec.encode(wave))[0].T.numpy()  # [T, D]
        blocks = max(1, latents.shape[0] // self.frames)
        usable = latents[: blocks * self.frames] if latents.shape[0] >= self.frames else latents
        return usable.reshape(blocks, -1, latents.shape[1]).mean(1).astype(np.float64)


class CocolaEmbedder:
    name = "cocola"

    def __init__(self, path: str | None = None) -> None:
        from stemstream.eval.cocola import load_cocola

        self.model = load_cocola(path)

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        return np.asarray(self.model.embed(audio, sample_rate), np.float64)


class VGGishEmbedder:
    name = "vggish"

    def __init__(self, path: str | None) -> None:
        from stemstream.eval.vggish import load_vggish

        self.model = load_vggish(path)

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        return np.asarray(self.model.embed(audio, sample_rate), np.float64)


def get_embedder(name: str, path: str | None = None) -> Embedder:
    """An embedder by name (see the module docstring); ``path`` = its weights if needed."""
    if name == "codec":
        return CodecEmbedder(path)
    if name == "cocola":
        return CocolaEmbedder(path)
    if name == "vggish":
        return VGGishEmbedder(path)
    raise ConfigError(f"unknown FAD embedding {name!r}; known: {', '.join(EMBEDDINGS)}")
