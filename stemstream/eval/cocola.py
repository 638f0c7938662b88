"""COCOLA: a contrastive model of musical coherence (Ciranni et al., 2024), as the paper
uses it to score an accompaniment against its input mix.

Features: 16 kHz mono, 5 s windows (2.5 s hop when scoring long clips), harmonic and
percussive log-mel spectrograms ``[2, n_mels, frames]``. Two HPSS front ends (``hpss``):

- ``mel_median`` (ours, default): a 512-point STFT (hop 256) mapped to 64 mel bands, split by
  median filtering of the *mel* power (soft masks: median over 17 frames for the harmonic
  part, over 5 bands for the percussive part) -> ``[2, 64, 313]``; batched torch, cheap
  enough to compute features for contrastive training on one CPU core.
- ``librosa``: the official front end — ``librosa.decompose.hpss`` on a 1024-point STFT
  (window 400, hop 160), 64 mel bands 60-7800 Hz, dB relative to each channel's maximum ->
  ``[2, 64, 501]``; slow (two 31x31 median filters per window), used with official weights.

Encoders (``encoder``): ``cnn`` (ours, default: four conv blocks with batch norm; the first
strides by 2, the others are followed by 2x2 pooling; global average pool) or
``efficientnet_b0`` (the official encoder, :class:`EfficientNetB0`, parameter names of
``efficientnet_pytorch``). A linear projection to ``D`` follows, then ``embedding_norm``;
similarity is the bilinear form ``s(x, y) = x^T W y``, trained with a symmetric InfoNCE loss
on positives made of two *disjoint submixes of the same window*
(:mod:`stemstream.eval.cocola_train`).

Modes: ``both`` feeds both channels; ``harmonic`` / ``percussive`` fill the other channel
with silence (the log floor for ``mel_median``; 0, as the official code does, for
``librosa``). Training drops one channel at random (a third of the batches each), so the
single-channel modes are in distribution.

Batch norm per mode (``mode_norm``, cnn only): a training batch holds one mode, so batch norm
normalises it with that mode's statistics; a single running average over all batches mixes
the three and matches none of them at evaluation. With ``mode_norm`` every batch-norm layer
keeps one set of running statistics per mode (:class:`ModeBatchNorm2d`; weights shared) and
:func:`stemstream.eval.cocola_train.calibrate_norms` sets them exactly from training
features. On the synthetic validation pairs this alone moved percussive pair accuracy from
0.81 to 0.97 (the weights unchanged).

Official weights: :func:`load_cocola` on a ``.ckpt`` (the PyTorch Lightning checkpoint of
``gladia-research-group/cocola``, e.g. ``COCOLA_HP_v1``, downloaded by the user) maps its
state dict onto ``encoder=efficientnet_b0, hpss=librosa, embedding_dim=512``. Scores then
follow the official ``CoCola.score()``: bilinear form on the raw projections
(``embedding_norm=none``). Our own checkpoints are safetensors written by
``stemstream cocola train``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
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
_CHOICES = {"hpss": ("mel_median", "librosa"), "encoder": ("cnn", "efficientnet_b0"),
            "embedding_norm": ("l2", "layernorm_tanh", "none")}
# fields added after the first checkpoints; at these defaults they leave features unchanged
FEATURE_FIELDS = ("n_fft", "hop_length", "n_mels", "median")
LATER_FEATURE_FIELDS = ("win_length", "f_min", "f_max", "hpss")


@dataclass(frozen=True)
class CocolaConfig:
    """Feature front end and encoder shape (see the module docstring for the choices)."""

    n_fft: int = 512
    hop_length: int = 256
    win_length: int | None = None  # None = n_fft
    n_mels: int = 64
    f_min: float = 30.0
    f_max: float = 8000.0
    median: int = 17  # harmonic median length in frames (mel_median only)
    hpss: str = "mel_median"
    encoder: str = "cnn"
    channels: tuple[int, ...] = (32, 64, 128, 192)  # cnn only
    embedding_dim: int = 128
    embedding_norm: str = "l2"
    mode_norm: bool = False  # one set of batch-norm statistics per mode (cnn only)

    def __post_init__(self) -> None:
        for name, known in _CHOICES.items():
            if getattr(self, name) not in known:
                raise ConfigError(f"COCOLA {name} must be one of {', '.join(known)}, "
                                  f"got {getattr(self, name)!r}")
        if not 0 <= self.f_min < self.f_max <= SAMPLE_RATE / 2:
            raise ConfigError(f"COCOLA mel range {self.f_min}-{self.f_max} Hz is invalid")
        if self.mode_norm and self.encoder != "cnn":
            raise ConfigError("COCOLA mode_norm needs encoder=cnn")

    @property
    def silence(self) -> float:
        """Feature value of an empty channel (what a single-channel mode feeds)."""
        return float(np.log(1e-6)) if self.hpss == "mel_median" else 0.0

    def feature_key(self) -> dict[str, Any]:
        """The settings that determine the features (a cache key)."""
        key = {f: getattr(self, f) for f in FEATURE_FIELDS}
        default = CocolaConfig()
        key |= {f: getattr(self, f) for f in LATER_FEATURE_FIELDS
                if getattr(self, f) != getattr(default, f)}
        return key

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


OFFICIAL_CONFIG = CocolaConfig(n_fft=1024, hop_length=160, win_length=400, f_min=60.0,
                               f_max=7800.0, hpss="librosa", encoder="efficientnet_b0",
                               embedding_dim=512, embedding_norm="none")


# ----------------------------------------------------------------------------- features
@functools.cache
def _mel_matrix(n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    import librosa

    mel = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=n_fft, n_mels=n_mels, fmin=f_min,
                              fmax=f_max)
    return torch.from_numpy(mel).float()


def _median(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Median filter of ``x [B, F, T]`` along ``dim`` (reflect padding)."""
    x = x.transpose(dim, -1)
    padded = F.pad(x, (size // 2, size // 2), mode="reflect")
    return padded.unfold(-1, size, 1).median(dim=-1).values.transpose(dim, -1)


def _mel_median_features(wave: torch.Tensor, config: CocolaConfig) -> torch.Tensor:
    window = torch.hann_window(config.win_length or config.n_fft, device=wave.device)
    spec = torch.stft(wave, config.n_fft, config.hop_length, win_length=config.win_length,
                      window=window, return_complex=True).abs() ** 2  # [B, F, T]
    mel = _mel_matrix(config.n_fft, config.n_mels, config.f_min, config.f_max)
    mel = mel.to(wave.device) @ spec  # [B, M, T]
    harmonic = _median(mel, config.median, dim=2)
    percussive = _median(mel, 5, dim=1)
    total = harmonic**2 + percussive**2 + 1e-20
    parts = [mel * (part**2 / total) for part in (harmonic, percussive)]
    return torch.log(torch.stack(parts, dim=1) + 1e-6)


def _librosa_features(wave: torch.Tensor, config: CocolaConfig) -> torch.Tensor:
    """The official front end, one window at a time (``feature_extraction.HPSS``)."""
    import librosa

    out = []
    for row in wave.cpu().numpy():
        stft = librosa.stft(row, n_fft=config.n_fft, win_length=config.win_length,
                            hop_length=config.hop_length)
        channels = []
        for part in librosa.decompose.hpss(stft):
            mel = librosa.feature.melspectrogram(S=np.abs(part) ** 2, sr=SAMPLE_RATE,
                                                 n_fft=config.n_fft, fmin=config.f_min,
                                                 fmax=config.f_max, n_mels=config.n_mels)
            channels.append(librosa.power_to_db(mel, ref=np.max))
        out.append(np.stack(channels))
    return torch.from_numpy(np.stack(out)).float().to(wave.device)


def features(wave: torch.Tensor, config: CocolaConfig) -> torch.Tensor:
    """``[B, N]`` 16 kHz audio -> ``[B, 2, n_mels, frames]`` harmonic/percussive log-mels."""
    if config.hpss == "librosa":
        return _librosa_features(wave, config)
    return _mel_median_features(wave, config)


# ------------------------------------------------------------------------------ encoders
class ModeBatchNorm2d(nn.BatchNorm2d):
    """Batch norm with one set of running statistics per COCOLA mode and shared affine
    weights. ``running_mean``/``running_var`` serve ``both``; the single-channel modes have
    their own buffers. The owning :class:`CocolaModel` sets :attr:`mode` before each pass."""

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.mode = "both"
        for mode in MODES[:2]:
            self.register_buffer(f"running_mean_{mode}", torch.zeros(width))
            self.register_buffer(f"running_var_{mode}", torch.ones(width))

    def statistics(self, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        if mode == "both":
            return self.running_mean, self.running_var
        return getattr(self, f"running_mean_{mode}"), getattr(self, f"running_var_{mode}")

    def reset_mode(self, mode: str) -> None:
        mean, var = self.statistics(mode)
        mean.zero_()
        var.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.statistics(self.mode)
        factor = 0.0
        if self.training:
            self.num_batches_tracked += 1
            # momentum None: a cumulative average (what calibration uses, one mode at a time)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
        return F.batch_norm(x, mean, var, self.weight, self.bias, self.training, factor,
                            self.eps)


def _cnn(channels: tuple[int, ...], mode_norm: bool = False) -> nn.Sequential:
    """``[B, 2, M, T] -> [B, channels[-1]]``."""
    layers: list[nn.Module] = []
    previous = 2
    norm = ModeBatchNorm2d if mode_norm else nn.BatchNorm2d
    for i, width in enumerate(channels):
        # the first block strides by 2 instead of pooling: a quarter of the work at the
        # input resolution, which dominates the cost on a CPU
        stride = 2 if i == 0 else 1
        layers += [nn.Conv2d(previous, width, 3, stride=stride, padding=1),
                   norm(width), nn.ReLU(inplace=True)]
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        previous = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class _SameConv(nn.Conv2d):
    """TF "same" convolution with the padding fixed for a 224x224 input, as
    ``efficientnet_pytorch.Conv2dStaticSamePadding`` does (whatever the real input size)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=bias)
        # every stride-2 layer of B0 sees an even size, so the total pad is kernel - stride
        total = max(kernel - stride, 0)
        self.pad = (total // 2, total - total // 2) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


def _bn(width: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(width, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation (EfficientNet's block)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = _SameConv(cin, mid, 1), _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        squeezed = max(1, int(cin * 0.25))
        self._se_reduce = nn.Conv2d(mid, squeezed, 1)
        self._se_expand = nn.Conv2d(squeezed, mid, 1)
        self._project_conv, self._bn2 = _SameConv(mid, cout, 1), _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.silu(self._bn1(self._depthwise_conv(h)))
        h = h * torch.sigmoid(self._se_expand(F.silu(self._se_reduce(h.mean((2, 3), True)))))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 without its classifier: ``[B, C, H, W] -> [B, 1280]`` (inference
    equivalent of ``EfficientNet.from_name("efficientnet-b0", include_top=False)``; no drop
    connect)."""

    # (repeats, kernel, stride, expand, in, out)
    STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
              (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
              (1, 3, 1, 6, 192, 320))

    def __init__(self, in_channels: int = 2) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = _SameConv(in_channels, 32, 3, 2), _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in self.STAGES:
            blocks.append(_MBConv(cin, cout, kernel, stride, expand))
            blocks += [_MBConv(cout, cout, kernel, 1, expand) for _ in range(repeats - 1)]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = _SameConv(320, 1280, 1), _bn(1280)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.silu(self._bn1(self._conv_head(x))).mean(dim=(2, 3))


# --------------------------------------------------------------------------------- model
class CocolaModel(nn.Module):
    """Encoder + projection + bilinear similarity (see the module docstring)."""

    def __init__(self, config: CocolaConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CocolaConfig()
        if config.encoder == "cnn":
            self.encoder: nn.Module = _cnn(config.channels, config.mode_norm)
            width = config.channels[-1]
        else:
            self.encoder, width = EfficientNetB0(in_channels=2), 1280
        self.project = nn.Linear(width, config.embedding_dim)
        if config.embedding_norm == "layernorm_tanh":
            self.layer_norm = nn.LayerNorm(config.embedding_dim)
        self.bilinear = nn.Parameter(torch.eye(config.embedding_dim))
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))

    def encode(self, feats: torch.Tensor, mode: str = "both") -> torch.Tensor:
        """``[B, 2, M, T]`` features -> ``[B, D]`` embeddings (L2-normalised by default)."""
        for norm in self.mode_norms():
            norm.mode = mode
        z = self.project(self.encoder(mask_mode(feats, mode, self.config.silence)))
        if self.config.embedding_norm == "l2":
            return F.normalize(z, dim=-1)
        if self.config.embedding_norm == "layernorm_tanh":
            return torch.tanh(self.layer_norm(z))
        return z

    def mode_norms(self) -> list[ModeBatchNorm2d]:
        return [m for m in self.encoder.modules() if isinstance(m, ModeBatchNorm2d)]

    def similarity(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[B, D] x [B', D] -> [B, B']`` bilinear scores (without the learned scale)."""
        return x @ self.bilinear @ y.T

    def embed(self, audio: np.ndarray, sample_rate: int, mode: str = "both") -> np.ndarray:
        """Mono audio -> ``[n_windows, D]`` (5 s windows, 2.5 s hop)."""
        with torch.inference_mode():
            feats = features(windows(audio, sample_rate), self.config)
            return self.encode(feats, mode).double().numpy()


def mask_mode(feats: torch.Tensor, mode: str, silence: float = math.log(1e-6)
              ) -> torch.Tensor:
    """Fill the channel a mode leaves out with ``silence``."""
    if mode == "both":
        return feats
    if mode not in MODES:
        raise ConfigError(f"unknown COCOLA mode {mode!r}; known: {', '.join(MODES)}")
    keep = 0 if mode == "harmonic" else 1
    silent = torch.full_like(feats[:, :1], silence)
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


# ------------------------------------------------------------------------- checkpoints
def save_cocola(model: CocolaModel, path: str | Path, extra: dict[str, Any] | None = None
                ) -> Path:
    from stemstream import checkpoint

    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta = {"kind": KIND, "config": model.config.to_dict(), **(extra or {})}
    return checkpoint.save(path, tensors, meta)


def load_cocola(path: str | Path | None = None) -> CocolaModel:
    """A COCOLA model in eval mode: ours (safetensors; ``None`` = the shipped one) or the
    official Lightning ``.ckpt`` (see the module docstring)."""
    from stemstream import checkpoint

    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise StemstreamError(
            f"{path}: no COCOLA checkpoint" + (" (train one with `stemstream cocola train`)"
                                               if path == DEFAULT_CHECKPOINT else "")
        )
    if path.suffix == ".ckpt":
        return load_official_cocola(path)
    tensors, meta = checkpoint.load(path)
    if meta.get("kind") not in (KIND, "cocola-train"):
        raise ConfigError(f"{path}: not a COCOLA checkpoint (kind {meta.get('kind')!r})")
    model = CocolaModel(CocolaConfig.from_dict(meta["config"]))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    return model.eval()


_OFFICIAL_PREFIXES = (("encoder.encoder.model.0.", "encoder."), ("encoder.projection.",
                      "project."), ("similarity.w", "bilinear"))


def load_official_cocola(path: str | Path) -> CocolaModel:
    """The official COCOLA weights (``gladia-research-group/cocola`` Lightning checkpoint,
    HPSS input, EfficientNet-B0) as a :class:`CocolaModel` with :data:`OFFICIAL_CONFIG`."""
    state = _read_lightning_state_dict(Path(path))
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for old, new in _OFFICIAL_PREFIXES:
            if key.startswith(old):
                mapped[new + key[len(old):]] = value
    model = CocolaModel(OFFICIAL_CONFIG)
    expected = {k for k in model.state_dict() if k != "log_scale"}
    stem = mapped.get("encoder._conv_stem.weight")
    if set(mapped) != expected or stem is None or stem.shape[1] != 2:
        raise ConfigError(
            f"{path}: not an official COCOLA checkpoint with harmonic/percussive input and an "
            f"EfficientNet-B0 encoder ({len(expected - set(mapped))} weights missing, "
            f"{len(set(mapped) - expected)} unexpected); only that variant can be loaded")
    try:
        model.load_state_dict(mapped | {"log_scale": model.log_scale.detach()})
    except RuntimeError as error:
        raise ConfigError(f"{path}: weights do not fit EfficientNet-B0/512: "
                          f"{str(error).splitlines()[-1].strip()}") from None
    return model.eval()


class _Opaque(dict):
    """Stands in for any non-tensor object of a Lightning checkpoint (hyper-parameters,
    enums, loop state) so that no foreign code is imported or run while reading it."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return dict.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


def _read_lightning_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import collections
    import pickle
    import types

    allowed = {("collections", "OrderedDict"): collections.OrderedDict}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in allowed:
                return allowed[(module, name)]
            if module == "torch._utils" and name.startswith("_rebuild"):
                return getattr(torch._utils, name)
            if module == "torch" and isinstance(getattr(torch, name, None),
                                                (torch.dtype, torch.device)):
                return getattr(torch, name)
            if module == "torch" and name in ("Size", "device"):
                return getattr(torch, name)
            return _Opaque

    safe_pickle = types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load,
                                        __name__="pickle")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=safe_pickle)
    except Exception as error:  # a corrupt or foreign file: one clear line
        raise ConfigError(f"{path}: cannot read as a PyTorch checkpoint ({error})") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ConfigError(f"{path}: no Lightning 'state_dict' of tensors in this checkpoint")
    return dict(state)
