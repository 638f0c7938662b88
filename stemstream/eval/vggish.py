"""VGGish (Hershey et al., 2017), the FAD embedding the paper uses — our implementation of the
architecture; the weights are yours to supply (nothing is downloaded).

Input: 0.96 s examples (non-overlapping) of a 64-band log-mel spectrogram at 16 kHz (25 ms
periodic-Hann windows, 10 ms hop, 512-point FFT, HTK mel 125-7500 Hz, ``log(mel + 0.01)``),
96 frames x 64 bands. Network: conv64-pool-conv128-pool-conv256-conv256-pool-conv512-conv512-
pool (3x3 convs, ReLU, 2x2 max-pool), then 12288 -> 4096 -> 4096 -> 128 with ReLU; optional
PCA whitening (``pca_eigen_vectors``, ``pca_means``), without the 8-bit quantisation.

Parameter names follow the common PyTorch port (``features.{0,3,6,8,11,13}``,
``embeddings.{0,2,4}``, ``pproc._pca_matrix`` / ``pproc._pca_means``), so a converted
``vggish-*.pth`` state dict (or a safetensors file with the same keys) loads directly:
``load_vggish("/path/vggish.pth")``. The mel front end follows the published recipe with
librosa's HTK filterbank, which matches the original to within its band-edge rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from stemstream.errors import ConfigError

SAMPLE_RATE = 16000
FRAMES, BANDS = 96, 64


class VGGish(nn.Module):
    def __init__(self, pca: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for item in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 128), nn.ReLU(inplace=True),
        )
        self.pca = pca
        if pca:
            self.register_buffer("pca_matrix", torch.eye(128))
            self.register_buffer("pca_means", torch.zeros(128, 1))

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """``[n, 96, 64]`` log-mel examples -> ``[n, 128]``."""
        x = self.features(examples[:, None])  # [n, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).flatten(1)  # TF-port order: (time, freq, channel)
        x = self.embeddings(x)
        if self.pca:
            x = (self.pca_matrix @ (x.T - self.pca_means)).T
        return x

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono audio -> ``[n, 128]`` (one row per 0.96 s; a shorter clip is zero-padded)."""
        with torch.inference_mode():
            examples = torch.from_numpy(log_mel_examples(audio, sample_rate))
            return self(examples).double().numpy()


def log_mel_examples(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """``float32 [n, 96, 64]`` VGGish input examples."""
    import librosa

    from stemstream import audio as audio_lib

    samples = np.asarray(audio, np.float32).reshape(-1)
    if sample_rate != SAMPLE_RATE:
        samples = audio_lib.resample(samples, sample_rate, SAMPLE_RATE)
    need = 400 + 160 * (FRAMES - 1)
    if samples.size < need:
        samples = np.pad(samples, (0, need - samples.size))
    frames = 1 + (samples.size - 400) // 160
    windows = np.lib.stride_tricks.sliding_window_view(samples, 400)[::160][:frames]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic
    spectrum = np.abs(np.fft.rfft(windows * hann, n=512))
    mel = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=512, n_mels=BANDS, fmin=125.0,
                              fmax=7500.0, htk=True, norm=None)
    log_mel = np.log(spectrum @ mel.T + 0.01)
    count = log_mel.shape[0] // FRAMES
    return log_mel[: count * FRAMES].reshape(count, FRAMES, BANDS).astype(np.float32)


_PORT_KEYS = {"pproc._pca_matrix": "pca_matrix", "pproc._pca_means": "pca_means"}


def load_vggish(path: str | Path | None) -> VGGish:
    """VGGish with weights from ``path`` (``.pth`` / ``.pt`` state dict or ``.safetensors``)."""
    if path is None:
        raise ConfigError(
            "VGGish needs weights: convert the published VGGish checkpoint to a PyTorch state "
            "dict (e.g. the common torchvggish port's vggish-*.pth) and pass its path"
        )
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such VGGish weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = {_PORT_KEYS.get(k, k): v for k, v in state.items()}
    model = VGGish(pca="pca_matrix" in state)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"{path}: not VGGish weights ({str(err).splitlines()[0]})") from None
    return model.eval()
