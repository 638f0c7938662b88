"""Torch dataset of appendix-A.1 windows decoded straight from a Slakh-layout corpus.

:class:`WindowDataset` selects ``windows_per_track`` windows per track when it is built
(deterministic from ``seed``; rejected tracks are left out and logged). Item ``i`` is the same
window in every epoch unless :meth:`WindowDataset.set_epoch` is called with ``epoch > 0``: then
item ``i`` is re-drawn lazily, from the same track, by a generator keyed on ``(seed, epoch, i)``
(falling back to the epoch-0 window if the re-draw is rejected), so the length never changes.
Decoded tracks live in a small per-process LRU cache (a Slakh track of ten 4-minute stems is
~150 MB at 16 kHz).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from stemstream.data.slakh import SlakhCorpus, TrackInfo
from stemstream.data.windows import (
    Rejection,
    Window,
    WindowConfig,
    hop_samples,
    mix_pair,
    select_window,
    track_rng,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowExample:
    """One training example.

    Attributes:
        input_audio: ``float32 [1, input_frames * hop]``, the input mixture (all other stems).
        target_audio: ``float32 [1, num_frames * hop]``, the target stem, same start.
        inst_class: the target's instrument class id.
        provenance: ``track``, ``split``, ``target_stem``, ``start_seconds``, ``start_frame``,
            ``joint_activity``.
    """

    input_audio: torch.Tensor
    target_audio: torch.Tensor
    inst_class: int
    provenance: dict


@dataclass(frozen=True)
class WindowBatch:
    """Stacked examples: ``input_audio [B, 1, Ni]``, ``target_audio [B, 1, No]``,
    ``inst_class`` int64 ``[B]``, ``provenance`` one dict per example."""

    input_audio: torch.Tensor
    target_audio: torch.Tensor
    inst_class: torch.Tensor
    provenance: list[dict]


def collate(examples: list[WindowExample]) -> WindowBatch:
    """Stack examples of one :class:`WindowConfig` (equal lengths) into a batch."""
    return WindowBatch(
        input_audio=torch.stack([e.input_audio for e in examples]),
        target_audio=torch.stack([e.target_audio for e in examples]),
        inst_class=torch.tensor([e.inst_class for e in examples], dtype=torch.long),
        provenance=[e.provenance for e in examples],
    )


class WindowDataset(Dataset):
    """Windows of one split of a corpus as audio tensors.

    Args:
        corpus: Slakh-layout corpus root, or an open :class:`SlakhCorpus`.
        split: the split to read.
        config: window rule (length, ``t_f``, silence threshold...).
        sample_rate: audio rate of the examples, Hz (a multiple of ``config.frame_rate_hz``).
        windows_per_track: windows drawn per track (each with its own target draw).
        seed: seed of every draw.
        cache_tracks: decoded tracks kept in memory per process.
    """

    def __init__(
        self,
        corpus: str | Path | SlakhCorpus,
        split: str,
        config: WindowConfig,
        sample_rate: int = 16000,
        windows_per_track: int = 1,
        seed: int = 0,
        cache_tracks: int = 2,
    ):
        if windows_per_track < 1:
            raise ValueError(f"windows_per_track must be >= 1, got {windows_per_track}")
        self.corpus = corpus if isinstance(corpus, SlakhCorpus) else SlakhCorpus(corpus)
        self.split = split
        self.config = config
        self.sample_rate = sample_rate
        self.hop = hop_samples(sample_rate, config)
        self.seed = seed
        self.epoch = 0
        self._cache_size = max(1, cache_tracks)
        self._cache: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._tracks = {t.name: t for t in self.corpus.tracks(split)}
        self._base: list[Window] = []
        self._epoch_windows: dict[int, Window] = {}
        self.rejections: list[Rejection] = []
        for track in self._tracks.values():
            for index in range(windows_per_track):
                result = select_window(track, config, track_rng(seed, track, 0, index),
                                       stems=self._stems(track), sample_rate=sample_rate)
                if isinstance(result, Rejection):
                    self.rejections.append(result)
                    log.info("%s/%s: no window (%s)", split, track.name, result.reason)
                else:
                    self._base.append(result)
        if not self._base:
            log.warning("%s/%s: no track gave an accepted window", self.corpus.root, split)

    def __getstate__(self) -> dict:
        # DataLoader workers get a copy of the dataset: never ship decoded audio to them.
        return self.__dict__ | {"_cache": OrderedDict()}

    def __len__(self) -> int:
        return len(self._base)

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh windows for ``epoch`` (0 = the windows chosen at construction)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._epoch_windows.clear()

    def window(self, index: int) -> Window:
        """The window item ``index`` uses in the current epoch."""
        base = self._base[index]
        if self.epoch == 0:
            return base
        if index not in self._epoch_windows:
            track = self._tracks[base.track]
            rng = np.random.default_rng([self.seed, self.epoch, index])
            result = select_window(track, self.config, rng, stems=self._stems(track),
                                   sample_rate=self.sample_rate)
            self._epoch_windows[index] = base if isinstance(result, Rejection) else result
        return self._epoch_windows[index]

    def __getitem__(self, index: int) -> WindowExample:
        window = self.window(index)
        stems = self._stems(self._tracks[window.track])
        mixture, target = mix_pair(stems, window.target_stem)
        start = window.start_frame * self.hop
        input_audio = mixture[start : start + window.input_frames * self.hop]
        target_audio = target[start : start + window.num_frames * self.hop]
        provenance = {
            "track": window.track,
            "split": window.split,
            "target_stem": window.target_stem,
            "start_frame": window.start_frame,
            "start_seconds": window.start_frame / self.config.frame_rate_hz,
            "joint_activity": window.joint_activity,
        }
        return WindowExample(
            input_audio=torch.from_numpy(np.ascontiguousarray(input_audio))[None],
            target_audio=torch.from_numpy(np.ascontiguousarray(target_audio))[None],
            inst_class=window.inst_class,
            provenance=provenance,
        )

    def _stems(self, track: TrackInfo) -> dict[str, np.ndarray]:
        """Decoded stems of ``track`` through the LRU cache."""
        key = track.name
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        stems = track.load_stems(self.sample_rate)
        self._cache[key] = stems
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return stems
