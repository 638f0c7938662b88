"""COCOLA: a contrastive model of musical coherence (Ciranni et al., 2024), as the paper
uses it to score an accompaniment against its input mix.

Features: 16 kHz mono, 5 s windows (2.5 s hop when scoring long clips); a 512-point STFT
(hop 256) mapped to 64 mel bands is split by median-filter HPSS (soft masks: median over 17
frames for the harmonic part, over 5 bands for the percussive part) into harmonic and
percussive log-mel spectrograms -> ``[2, 64, 313]``. Encoder: a small CNN (four conv blocks with
batch norm; the first strides by 2, the others are followed by 2x2 pooling; global average
pool, linear projection to ``D``). Similarity: the
bilinear form ``s(x, y) = x^T W y`` on L2-normalised embeddings, trained with a symmetric
InfoNCE loss on positives made of two *disjoint submixes of the same window*
(:mod:`stemstream.eval.cocola_train`).

Modes: ``both`` feeds both channels; ``harmonic`` / ``percussive`` zero the other channel.
Training drops one channel at random (a third of the batches each), so the single-channel
modes are in distribution.

The official COCOLA checkpoint uses an EfficientNet-B0 encoder (PyTorch Lightning ``.ckpt``);
that architecture is not implemented here (no torchvision), so :func:`load_cocola` refuses
such a file with an explanation instead of loading it wrongly. Our own checkpoints are
safetensors written by ``stemstream cocola train``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stemstream.errors import ConfigError, StemstreamError

SAMPLE_RATE = 16000
WINDOW_SECONDS = 5.0
HOP_SECONDS = 2.5
MODES = ("harmonic", "percussive", "both")
KIND = "cocola"
DEFAULT_CHECKPOINT = (Path(__file__).resolve().parent.parent / "assets" / "cocola"
                      / "cocola-synth.safetensors")


@dataclass(frozen=True)
class CocolaConfig:
    """Feature and encoder shape."""

    n_fft: int = 512
    hop_length: int = 256
    n_mels: int = 64
    median: int = 17
    channels: tuple[int, ...] = (32, 64, 128, 192)
    embedding_dim: int = 128

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CocolaConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigError(f"unknown COCOLA config keys {unknown}")
        data = dict(data)
        if "channels" in data:
            data["channels"] = tuple(data["channels"])
        return cls(**data)


@functools.cache
def _mel_matrix(n_fft: int, n_mels: int) -> torch.Tensor:
    import librosa

    mel = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=n_fft, n_mels=n_mels, fmin=30.0,
                              fmax=SAMPLE_RATE / 2)
    return torch.from_numpy(mel).float()


def _median(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Median filter of ``x [B, F, T]`` along ``dim`` (reflect padding)."""
    x = x.transpose(dim, -1)
    padded = F.pad(x, (size // 2, size // 2), mode="reflect")
    return padded.unfold(-1, size, 1).median(dim=-1).values.transpose(dim, -1)


def features(wave: torch.Tensor, config: CocolaConfig) -> torch.Tensor:
    """``[B, N]`` 16 kHz audio -> ``[B, 2, n_mels, frames]`` harmonic/percussive log-mels.

    HPSS runs on the mel power spectrogram (median over ``median`` frames for the harmonic
    part, over 5 bands for the percussive part; soft masks) — an approximation of STFT-domain
    HPSS that is ~4x cheaper, which matters when the features are computed on the fly for
    contrastive training.
    """
    window = torch.hann_window(config.n_fft, device=wave.device)
    spec = torch.stft(wave, config.n_fft, config.hop_length, window=window,
                      return_complex=True).abs() ** 2  # [B, F, T]
    mel = _mel_matrix(config.n_fft, config.n_mels).to(wave.device) @ spec  # [B, M, T]
    harmonic = _median(mel, config.median, dim=2)
    percussive = _median(mel, 5, dim=1)
    total = harmonic**2 + percussive**2 + 1e-20
    parts = [mel * (part**2 / total) for part in (harmonic, percussive)]
    return torch.log(torch.stack(parts, dim=1) + 1e-6)


class CocolaModel(nn.Module):
    """Encoder + bilinear similarity (see the module docstring)."""

    def __init__(self, config: CocolaConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CocolaConfig()
        layers: list[nn.Module] = []
        previous = 2
        for i, width in enumerate(config.channels):
            # the first block strides by 2 instead of pooling: a quarter of the work at the
            # input resolution, which dominates the cost on a CPU
            stride = 2 if i == 0 else 1
            layers += [nn.Conv2d(previous, width, 3, stride=stride, padding=1),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            previous = width
        self.encoder = nn.Sequential(*layers)
        self.project = nn.Linear(previous, config.embedding_dim)
        self.bilinear = nn.Parameter(torch.eye(config.embedding_dim))
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))

    def encode(self, feats: torch.Tensor, mode: str = "both") -> torch.Tensor:
        """``[B, 2, M, T]`` features -> L2-normalised ``[B, D]`` embeddings."""
        feats = mask_mode(feats, mode)
        h = self.encoder(feats).mean(dim=(2, 3))
        return F.normalize(self.project(h), dim=-1)

    def similarity(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[B, D] x [B', D] -> [B, B']`` bilinear scores (without the learned scale)."""
        return x @ self.bilinear @ y.T

    def embed(self, audio: np.ndarray, sample_rate: int, mode: str = "both") -> np.ndarray:
        """Mono audio -> ``[n_windows, D]`` (5 s windows, 2.5 s hop)."""
        with torch.inference_mode():
            feats = features(windows(audio, sample_rate), self.config)
            return self.encode(feats, mode).double().numpy()


def mask_mode(feats: torch.Tensor, mode: str) -> torch.Tensor:
    """Zero the channel a mode leaves out (the log floor, i.e. silence)."""
    if mode == "both":
        return feats
    if mode not in MODES:
        raise ConfigError(f"unknown COCOLA mode {mode!r}; known: {', '.join(MODES)}")
    keep = 0 if mode == "harmonic" else 1
    silent = torch.full_like(feats[:, :1], float(np.log(1e-6)))
    parts = [feats[:, :1], silent] if keep == 0 else [silent, feats[:, 1:]]
    return torch.cat(parts, dim=1)


def windows(audio: np.ndarray, sample_rate: int) -> torch.Tensor:
    """Mono audio (any rate) -> ``[n, 80000]`` 5 s windows at 16 kHz with a 2.5 s hop
    (a shorter clip is zero-padded to one window)."""
    from stemstream import audio as audio_lib

    samples = np.asarray(audio, np.float32).reshape(-1)
    if sample_rate != SAMPLE_RATE:
        samples = audio_lib.resample(samples, sample_rate, SAMPLE_RATE)
    size, hop = int(WINDOW_SECONDS * SAMPLE_RATE), int(HOP_SECONDS * SAMPLE_RATE)
    if samples.size < size:
        samples = np.pad(samples, (0, size - samples.size))
    count = 1 + (samples.size - size) // hop
    starts = np.arange(count) * hop
    return torch.from_numpy(np.stack([samples[s : s + size] for s in starts]))


def cocola_score(model: CocolaModel, stem: np.ndarray, mix: np.ndarray, sample_rate: int,
                 mode: str = "both") -> float:
    """Mean bilinear similarity of the stem's and the mix's window embeddings (higher =
    more coherent)."""
    n = min(len(stem), len(mix))
    if n == 0:
        raise ConfigError("COCOLA needs non-empty audio")
    a = torch.from_numpy(model.embed(np.asarray(stem)[:n], sample_rate, mode)).float()
    b = torch.from_numpy(model.embed(np.asarray(mix)[:n], sample_rate, mode)).float()
    with torch.inference_mode():
        return float(torch.diagonal(model.similarity(a, b)).mean())


def save_cocola(model: CocolaModel, path: str | Path, extra: dict[str, Any] | None = None
                ) -> Path:
    from stemstream import checkpoint

    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta = {"kind": KIND, "config": model.config.to_dict(), **(extra or {})}
    return checkpoint.save(path, tensors, meta)


def load_cocola(path: str | Path | None = None) -> CocolaModel:
    """Our COCOLA checkpoint (``None`` = the shipped one) in eval mode."""
    from stemstream import checkpoint

    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if path.suffix == ".ckpt":
        raise ConfigError(
            f"{path}: the official COCOLA checkpoint uses an EfficientNet-B0 encoder that "
            "stemstream does not implement; train ours with `stemstream cocola train`"
        )
    if not path.is_file():
        raise StemstreamError(
            f"{path}: no COCOLA checkpoint" + (" (train one with `stemstream cocola train`)"
                                               if path == DEFAULT_CHECKPOINT else "")
        )
    tensors, meta = checkpoint.load(path)
    if meta.get("kind") not in (KIND, "cocola-train"):
        raise ConfigError(f"{path}: not a COCOLA checkpoint (kind {meta.get('kind')!r})")
    model = CocolaModel(CocolaConfig.from_dict(meta["config"]))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    return model.eval()
