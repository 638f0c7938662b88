"""VGGish (Hershey et al., 2017), the FAD embedding the paper uses — our implementation of the
architecture; the weights are yours to supply (nothing is downloaded).

Input: 0.96 s examples (non-overlapping) of a 64-band log-mel spectrogram at 16 kHz (25 ms
periodic-Hann windows, 10 ms hop, 512-point FFT, HTK mel 125-7500 Hz, ``log(mel + 0.01)``),
96 frames x 64 bands. Network: conv64-pool-conv128-pool-conv256-conv256-pool-conv512-conv512-
pool (3x3 convs, ReLU, 2x2 max-pool), then 12288 -> 4096 -> 4096 -> 128 with ReLU; optional
PCA whitening (``pca_eigen_vectors``, ``pca_means``), without the 8-bit quantisation.

Parameter names follow the common PyTorch port (torchvggish: ``features.{0,3,6,8,11,13}``,
``embeddings.{0,2,4}``, ``pproc.pca_eigen_vectors`` / ``pproc.pca_means``), so a converted
``vggish-10086976.pth`` state dict (or a safetensors file with the same keys) loads directly,
and that port's separate ``vggish_pca_params-970ea276.pth`` (``pca_eigen_vectors``,
``pca_means``) is passed as ``pca_path``: ``load_vggish("/path/vggish.pth", pca_path=...)``.
Get them from the torchvggish releases (or convert Google's ``vggish_model.ckpt`` /
``vggish_pca_params.npz``) on a machine with network access; nothing is downloaded here.
The mel filterbank is the VGGish one (triangles in HTK-mel space, DC bin zeroed), not
librosa's (triangles in Hz).
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
    """The VGGish network; ``pca`` adds the (whitening) PCA buffers applied to its output."""

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
    """``[N]`` or ``[C, N]`` audio -> ``float32 [n, 96, 64]`` VGGish input examples."""
    from stemstream import audio as audio_lib

    samples = np.asarray(audio, np.float32)
    samples = (samples.mean(axis=0) if samples.ndim == 2 else samples).reshape(-1)
    if sample_rate != SAMPLE_RATE:
        samples = audio_lib.resample(samples, sample_rate, SAMPLE_RATE)
    need = 400 + 160 * (FRAMES - 1)
    if samples.size < need:
        samples = np.pad(samples, (0, need - samples.size))
    frames = 1 + (samples.size - 400) // 160
    windows = np.lib.stride_tricks.sliding_window_view(samples, 400)[::160][:frames]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic
    spectrum = np.abs(np.fft.rfft(windows * hann, n=512))  # [frames, 257]
    log_mel = np.log(spectrum @ mel_matrix() + 0.01)
    count = log_mel.shape[0] // FRAMES
    return log_mel[: count * FRAMES].reshape(count, FRAMES, BANDS).astype(np.float32)


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def mel_matrix(num_bins: int = 257, low_hz: float = 125.0, high_hz: float = 7500.0) -> np.ndarray:
    """``[num_bins, 64]`` VGGish mel weights: triangles over HTK-mel-spaced band edges,
    evaluated at each FFT bin's mel value, with the DC bin zeroed."""
    bins_mel = _hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, num_bins))[:, None]  # [F, 1]
    edges = np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # [64] each
    rising = (bins_mel - lower) / (center - lower)
    falling = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0] = 0.0
    return weights


# Keys of the PyTorch ports -> ours (torchvggish's postprocessor and its separate PCA file).
_PORT_KEYS = {
    "pproc.pca_eigen_vectors": "pca_matrix", "pproc.pca_means": "pca_means",
    "pca_eigen_vectors": "pca_matrix", "pca_means": "pca_means",
    "pproc._pca_matrix": "pca_matrix", "pproc._pca_means": "pca_means",
}


def load_vggish(path: str | Path | None, pca_path: str | Path | None = None) -> VGGish:
    """VGGish with weights from ``path`` and, optionally, PCA parameters from ``pca_path``.

    Both may be a ``.pth`` / ``.pt`` state dict, a ``.safetensors`` file or an ``.npz``
    (Google's ``vggish_pca_params.npz``). PCA is applied when either file holds it. ``path``
    may also be a folder holding one weights file and, optionally, one file with ``pca`` in
    its name (e.g. torchvggish's two ``.pth`` files side by side).
    """
    if path is None:
        raise ConfigError(
            "VGGish needs weights (nothing is downloaded): get the torchvggish port's "
            "vggish-10086976.pth (or convert Google's vggish_model.ckpt to a PyTorch state "
            "dict) on a machine with network access and pass its local path"
        )
    if Path(path).is_dir():
        path, pca_path = _find_files(Path(path), pca_path)
    state = _read_state(path)
    if pca_path is not None:
        state.update(_read_state(pca_path))
    try:
        state = {_PORT_KEYS.get(k, k): torch.as_tensor(v, dtype=torch.float32)
                 for k, v in state.items()}
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"{path}: not VGGish weights ({err})") from None
    if "pca_means" in state:
        state["pca_means"] = state["pca_means"].reshape(-1, 1)
    model = VGGish(pca="pca_matrix" in state)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"{path}: not VGGish weights ({str(err).splitlines()[0]})") from None
    return model.eval()


def _find_files(folder: Path, pca_path: str | Path | None) -> tuple[Path, Path | None]:
    files = sorted(p for p in folder.iterdir()
                   if p.suffix in (".pth", ".pt", ".safetensors", ".npz"))
    weights = [p for p in files if "pca" not in p.name.lower()]
    pca = [p for p in files if "pca" in p.name.lower()]
    if len(weights) != 1 or len(pca) > 1:
        raise ConfigError(f"{folder}: expected one VGGish weights file and at most one PCA "
                          f"file, found {[p.name for p in files]}")
    return weights[0], pca_path if pca_path is not None else (pca[0] if pca else None)


def _read_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such VGGish weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            return {k: arrays[k] for k in arrays.files}
    # The ports' PCA file pickles numpy arrays: allow exactly those, nothing else.
    # numpy 1.x pickles name ``numpy.core.multiarray``, numpy 2.x ``numpy._core.multiarray``.
    reconstruct = np.zeros(1).__reduce__()[0]
    allowed = [(reconstruct, f"numpy.{core}.multiarray._reconstruct") for core in ("core", "_core")]
    allowed += [np.ndarray, np.dtype, *{type(np.dtype(c)) for c in "fdilbB"}]
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"{path}: unreadable weights ({str(err).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: not a state dict")
    return state
