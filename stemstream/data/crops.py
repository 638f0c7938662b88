"""Random training crops for codec training: single stems, sub-mixes and full mixtures.

The codec must code whatever the models will read and write: a generated stem (one
instrument) and an input stream (a mixture of the others). So each crop is a stem, a random
sub-mix of 2+ stems, or the full mix, with probabilities from :class:`CropConfig`. Crops that
are (nearly) silent are redrawn. A random gain in ``gain_db`` is applied; no per-clip loudness
normalisation (a live stream has no "whole clip").

Stems are decoded once into memory as ``int16`` (a 50-minute, 5-stem corpus at 16 kHz is ~0.5 GB),
so sampling is cheap enough to feed a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stemstream.data.slakh import SlakhCorpus
from stemstream.errors import ConfigError, CorpusError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropConfig:
    """How crops are drawn."""

    crop_seconds: float = 1.0
    mix_prob: float = 0.4
    submix_prob: float = 0.3  # the rest are single stems
    min_rms_db: float = -45.0
    gain_db: tuple[float, float] = (-6.0, 3.0)
    max_tracks: int = 0  # 0 = every track of the split

    def __post_init__(self):
        if self.crop_seconds <= 0:
            raise ConfigError(f"crop_seconds must be > 0, got {self.crop_seconds}")
        if not (
            0 <= self.mix_prob and 0 <= self.submix_prob and self.mix_prob + self.submix_prob <= 1
        ):
            raise ConfigError("mix_prob and submix_prob must be >= 0 and sum to <= 1")


class CropSampler:
    """Draws ``[B, 1, N]`` batches of crops from one split of a Slakh-layout corpus.

    Args:
        corpus: corpus root.
        split: e.g. ``"train"``.
        sample_rate: crops are resampled to this rate when the corpus differs.
        config: crop mixture.
    """

    def __init__(self, corpus: str | Path, split: str, sample_rate: int, config: CropConfig):
        from tqdm import tqdm

        self.config = config
        self.sample_rate = sample_rate
        self.crop_samples = int(round(config.crop_seconds * sample_rate))
        tracks = SlakhCorpus(corpus).tracks(split)
        if config.max_tracks:
            tracks = tracks[: config.max_tracks]
        self.tracks: list[np.ndarray] = []  # each int16 [S, N]
        for track in tqdm(tracks, desc=f"load {split}", unit="track", leave=False):
            stems = track.load_stems(sample_rate)
            if not stems:
                continue
            data = np.stack(list(stems.values()))
            if data.shape[-1] < self.crop_samples:
                continue
            self.tracks.append(np.round(np.clip(data, -1, 1) * 32767).astype(np.int16))
        if not self.tracks:
            raise CorpusError(f"{corpus}: no track in split {split!r} is longer than one crop")
        self.seconds = sum(t.shape[-1] for t in self.tracks) / sample_rate

    def sample(self, rng: np.random.Generator, max_tries: int = 20) -> np.ndarray:
        """One crop, ``float32 [N]``."""
        cfg = self.config
        for _ in range(max_tries):
            track = self.tracks[int(rng.integers(len(self.tracks)))]
            start = int(rng.integers(track.shape[-1] - self.crop_samples + 1))
            kind = rng.random()
            n_stems = track.shape[0]
            if kind < cfg.mix_prob or n_stems == 1:
                chosen = np.arange(n_stems)
            elif kind < cfg.mix_prob + cfg.submix_prob and n_stems > 2:
                size = int(rng.integers(2, n_stems))
                chosen = rng.choice(n_stems, size=size, replace=False)
            else:
                chosen = rng.choice(n_stems, size=1)
            segment = track[chosen, start : start + self.crop_samples].astype(np.float32)
            crop = segment.sum(axis=0) / 32767.0
            rms_db = 10 * np.log10(np.mean(crop**2) + 1e-12)
            if rms_db >= cfg.min_rms_db:
                break
        gain = 10 ** (rng.uniform(*cfg.gain_db) / 20)
        peak = float(np.abs(crop).max())
        if peak * gain > 0.99:
            gain = 0.99 / peak
        return (crop * gain).astype(np.float32)

    def batch(self, batch_size: int, rng: np.random.Generator) -> torch.Tensor:
        """``float32 [B, 1, N]`` crops."""
        return torch.from_numpy(np.stack([self.sample(rng) for _ in range(batch_size)]))[:, None]
