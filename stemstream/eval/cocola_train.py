"""``stemstream cocola train``: contrastive training of our COCOLA on a Slakh-layout corpus.

Positives are two *disjoint submixes of the same 5 s window*: the window's active stems are
split at random into two non-empty groups, each summed. The other pairs of the batch are the
negatives (symmetric InfoNCE over bilinear scores, learned temperature).

Features of a fixed pool of pairs are computed once and cached (``OUT/cache_<split>.pt``,
float16): HPSS on the fly would make a CPU run feature-bound. Training is resumable: rerun the
command to continue from the newest checkpoint (model, optimizer, step, RNG).
The validation metric is the acceptance criterion of the metric itself: the share of held-out
windows whose real partner scores above a random other window's submix, per mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stemstream import checkpoint
from stemstream.errors import ConfigError
from stemstream.eval.cocola import (
    MODES,
    SAMPLE_RATE,
    WINDOW_SECONDS,
    CocolaConfig,
    CocolaModel,
    features,
    save_cocola,
)
from stemstream.schedule import warmup_cosine
from stemstream.training import TrainLoop

log = logging.getLogger(__name__)
TRAIN_KIND = "cocola-train"


@dataclass(frozen=True)
class CocolaTrainConfig:
    """A COCOLA training run (YAML; dotted overrides on the command line)."""

    corpus: str = "corpora/synth20h"
    out_dir: str = "runs/cocola-synth"
    model: CocolaConfig = field(default_factory=CocolaConfig)
    train_pairs: int = 3000
    valid_pairs: int = 200
    windows_per_track: int = 3
    batch_size: int = 32
    steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    seed: int = 0
    log_every: int = 25
    valid_every: int = 250
    checkpoint_every: int = 100
    active_db: float = -45.0

    def __post_init__(self) -> None:
        for name in ("train_pairs", "valid_pairs", "batch_size", "steps", "windows_per_track"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size > self.train_pairs:
            raise ConfigError("batch_size cannot exceed train_pairs")


# ------------------------------------------------------------------------------- data
def make_pairs(corpus: str | Path, split: str, count: int, windows_per_track: int,
               active_db: float, seed: int, progress: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` positive pairs of waveforms ``[count, N]`` x 2 from ``split``."""
    from tqdm import tqdm

    from stemstream import audio
    from stemstream.data.slakh import SlakhCorpus

    tracks = SlakhCorpus(corpus).tracks(split)
    if not tracks:
        raise ConfigError(f"{corpus}: no tracks in split {split!r}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tracks))
    size = int(WINDOW_SECONDS * SAMPLE_RATE)
    first, second = [], []
    bar = tqdm(total=count, desc=f"cocola pairs ({split})", disable=not progress)
    cursor = 0
    attempts = 0
    while len(first) < count:
        if attempts > 20 * count:
            raise ConfigError(f"{corpus}/{split}: too few windows with two active stems")
        track = tracks[order[cursor % len(order)]]
        cursor += 1
        stems = [audio.load(s.audio_path, sample_rate=SAMPLE_RATE, channels=1).samples
                 .reshape(-1) for s in track.stems]
        length = min(len(s) for s in stems)
        if length < size or len(stems) < 2:
            attempts += 1
            continue
        for _ in range(windows_per_track):
            attempts += 1
            start = int(rng.integers(0, length - size + 1))
            segs = [s[start : start + size] for s in stems]
            rms_db = [20 * np.log10(np.sqrt(np.mean(x**2)) + 1e-12) for x in segs]
            active = [x for x, db in zip(segs, rms_db, strict=True) if db > active_db]
            if len(active) < 2:
                continue
            assign = rng.permutation(np.arange(len(active)) % 2)  # both groups non-empty
            a = np.sum([x for x, g in zip(active, assign, strict=True) if g == 0], axis=0)
            b = np.sum([x for x, g in zip(active, assign, strict=True) if g == 1], axis=0)
            first.append(a.astype(np.float32))
            second.append(b.astype(np.float32))
            bar.update(1)
            if len(first) == count:
                break
    bar.close()
    return torch.from_numpy(np.stack(first)), torch.from_numpy(np.stack(second))


def cached_features(config: CocolaTrainConfig, split: str, count: int, seed: int,
                    progress: bool) -> torch.Tensor:
    """``float16 [count, 2 (pair side), 2 (h/p), M, T]`` features, cached on disk."""
    path = Path(config.out_dir) / f"cache_{split}.pt"
    key = {"corpus": str(config.corpus), "count": count, "seed": seed,
           "features": config.model.feature_key(),
           "windows_per_track": config.windows_per_track}
    if path.exists():
        cached = torch.load(path, weights_only=False)
        if cached.get("key") == key:
            return cached["features"]
    a, b = make_pairs(config.corpus, split, count, config.windows_per_track,
                      config.active_db, seed, progress)
    feats = pair_features(a, b, config.model).half()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "features": feats}, path)
    return feats


def pair_features(a: torch.Tensor, b: torch.Tensor, config: CocolaConfig,
                  batch: int = 32) -> torch.Tensor:
    """Waveform pairs ``[n, N]`` x 2 -> features ``[n, 2 (side), 2 (h/p), M, T]``."""
    with torch.inference_mode():
        return torch.cat([torch.stack([features(a[i : i + batch], config),
                                       features(b[i : i + batch], config)], dim=1)
                          for i in range(0, len(a), batch)])


# ----------------------------------------------------------------- per-mode batch norm
@torch.no_grad()
def calibrate_norms(model: CocolaModel, feats: torch.Tensor, count: int = 1024,
                    batch: int = 64, seed: int = 0) -> CocolaModel:
    """Set each mode's batch-norm statistics (``mode_norm`` models) to their exact averages
    over ``count`` pairs of ``feats [n, 2 (side), 2 (h/p), M, T]`` (both sides); returns the
    model in eval mode. The weights are not touched."""
    norms = model.mode_norms()
    if not norms:
        raise ConfigError("calibrate_norms needs a COCOLA model with mode_norm: true")
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed))
    order = order[: min(count, len(feats))]
    momenta = [norm.momentum for norm in norms]
    model.train()
    try:
        for mode in MODES:
            for norm in norms:
                norm.reset_mode(mode)
                norm.num_batches_tracked.zero_()
                norm.momentum = None
            for i in range(0, len(order), batch):
                chunk = feats[order[i : i + batch]].float()
                model.encode(torch.cat([chunk[:, 0], chunk[:, 1]]), mode)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
    return model.eval()


def with_mode_norm(model: CocolaModel) -> CocolaModel:
    """A copy of a ``cnn`` COCOLA model with per-mode batch norm (same weights; the per-mode
    statistics start as copies of the shared ones until :func:`calibrate_norms`)."""
    import dataclasses

    if model.config.mode_norm:
        return model
    converted = CocolaModel(dataclasses.replace(model.config, mode_norm=True))
    state = model.state_dict()
    for name, value in list(state.items()):
        for stat in ("running_mean", "running_var"):
            if name.endswith(f".{stat}"):
                for mode in MODES[:2]:
                    state[f"{name}_{mode}"] = value.clone()
    converted.load_state_dict(state)
    return converted.eval()


# --------------------------------------------------------------------------- training
def contrastive_loss(model: CocolaModel, fa: torch.Tensor, fb: torch.Tensor,
                     mode: str) -> torch.Tensor:
    za, zb = model.encode(fa, mode), model.encode(fb, mode)
    logits = model.similarity(za, zb) * model.log_scale.exp().clamp(max=100.0)
    target = torch.arange(len(za))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def pair_accuracy(model: CocolaModel, feats: torch.Tensor, seed: int = 0
                  ) -> dict[str, float]:
    """Per mode: share of windows whose real partner outscores a random other window's."""
    model.eval()
    rng = np.random.default_rng(seed)
    count = len(feats)
    other = (np.arange(count) + rng.integers(1, count, count)) % count
    out = {}
    for mode in MODES:
        za = torch.cat([model.encode(feats[i : i + 64, 0].float(), mode)
                        for i in range(0, count, 64)])
        zb = torch.cat([model.encode(feats[i : i + 64, 1].float(), mode)
                        for i in range(0, count, 64)])
        real = (za @ model.bilinear * zb).sum(-1)
        fake = (za @ model.bilinear * zb[torch.from_numpy(other)]).sum(-1)
        out[mode] = float((real > fake).float().mean())
    model.train()
    return out


class CocolaTrainer(TrainLoop):
    """Contrastive training of :class:`CocolaModel` on cached pair features; the loop is
    :class:`~stemstream.training.TrainLoop`'s."""

    bar_label = "cocola"

    def __init__(self, config: CocolaTrainConfig) -> None:
        torch.manual_seed(config.seed)
        self.model = CocolaModel(config.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.rng = np.random.default_rng(config.seed)
        self.setup_loop(config, config.out_dir, keep_checkpoints=3)
        self._train_feats = self._valid_feats = None

    def lr_at(self, step: int) -> float:
        cfg = self.config
        return cfg.lr * warmup_cosine(step, cfg.warmup_steps, cfg.steps, 0.0)

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        opt_tensors, opt_meta = checkpoint.flatten_optimizer(self.optimizer, "optim")
        rng_tensors, rng_meta = checkpoint.rng_state(self.rng)
        meta = {"kind": TRAIN_KIND, "config": self.config.model.to_dict(), "step": self.step,
                "optimizer": opt_meta, "rng": rng_meta}
        return {**tensors, **opt_tensors, **rng_tensors}, meta

    def load_checkpoint(self, path: Path) -> None:
        tensors, meta = checkpoint.load(path)
        if meta.get("kind") != TRAIN_KIND:
            raise ConfigError(f"{path}: not a COCOLA training checkpoint")
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items()
                                    if k.startswith("model/")})
        checkpoint.restore_optimizer(self.optimizer, tensors, meta["optimizer"], "optim")
        checkpoint.restore_rng(tensors, meta["rng"], self.rng)
        self.step = meta["step"]

    def advance(self) -> dict[str, float]:
        cfg, train = self.config, self._train_feats
        index = torch.from_numpy(self.rng.choice(len(train), cfg.batch_size, replace=False))
        batch = train[index].float()
        mode = MODES[int(self.rng.integers(0, 3))]  # random channel dropout
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        loss = contrastive_loss(self.model, batch[:, 0], batch[:, 1], mode)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss/train": loss.item(), "lr": self.lr_at(self.step + 1)}

    def validate(self) -> dict[str, float]:
        accuracy = pair_accuracy(self.model, self._valid_feats)
        return {f"valid/pair_accuracy_{m}": v for m, v in accuracy.items()}

    def run(self, progress: bool = True, stop_after: int | None = None,
            time_limit_s: float | None = None) -> dict[str, Any]:
        """Train to ``config.steps`` (resuming); returns the last validation accuracies per
        mode (``both``, ``harmonic``, ``percussive``)."""
        cfg = self.config
        self._train_feats = cached_features(cfg, "train", cfg.train_pairs, cfg.seed, progress)
        self._valid_feats = cached_features(cfg, "validation", cfg.valid_pairs, cfg.seed + 1,
                                            progress)
        self.model.train()
        last = super().run(progress, stop_after, time_limit_s)
        prefix = "valid/pair_accuracy_"
        return {k[len(prefix):]: v for k, v in last.items() if k.startswith(prefix)}

    def export(self, path: str | Path) -> Path:
        """The model as a standalone checkpoint; ``mode_norm`` statistics are calibrated on
        the training pairs first."""
        if self.config.model.mode_norm:
            train = cached_features(self.config, "train", self.config.train_pairs,
                                    self.config.seed, progress=False)
            calibrate_norms(self.model, train)
        return save_cocola(self.model.eval(), path, {"step": self.step})


def validate(model: CocolaModel, corpus: str | Path, split: str = "test", pairs: int = 200,
             seed: int = 2, progress: bool = False) -> dict[str, float]:
    """The metric's validity check on fresh windows of ``split``: per mode, the share of
    windows whose real partner (a disjoint submix of the same window) scores above a random
    other window's submix."""
    a, b = make_pairs(corpus, split, pairs, 3, CocolaTrainConfig.active_db, seed, progress)
    return pair_accuracy(model, pair_features(a, b, model.config), seed)

