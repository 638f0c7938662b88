"""Reading token dumps (written by :mod:`stemstream.codec.dump`): memory-mapped arrays, no
pickle, one :class:`TokenExample` per row. See :mod:`stemstream.codec.dump` for the layout.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from stemstream.errors import StemstreamError

FORMAT = "stemstream-token-dump"
FORMAT_VERSION = 1
META = "meta.json"
ARRAYS = ("input_codes.npy", "target_codes.npy", "inst_class.npy")
PROVENANCE = "provenance.jsonl"
TRACK_FORMAT = "stemstream-track-dump"
TRACK_FORMAT_VERSION = 1
TRACK_ARRAYS = ("input_codes.npy", "target_codes.npy", "joint_active.npy", "onsets.npy",
                "rows.npy")


FEATURES = "input_features.npy"  # optional: float16 [F, N], meta.json's "features" order


class DumpError(StemstreamError):
    """A missing, corrupt or incompatible token dump."""


def read_meta(dump_dir: str | Path) -> dict[str, Any]:
    """``dump_dir/meta.json``, checked; :class:`DumpError` when missing or corrupt."""
    path = Path(dump_dir) / META
    if not path.is_file():
        raise DumpError(
            f"{dump_dir}: not a token dump (no {META}); create one with `stemstream data dump`"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DumpError(f"{path}: corrupt ({err.__class__.__name__}: {err})") from err
    if not _valid_meta(meta):
        raise DumpError(f"{path}: corrupt (not a {FORMAT} meta file)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DumpError(
            f"{path}: format version {meta.get('format_version')!r}, this "
            f"stemstream reads {FORMAT_VERSION}"
        )
    return meta


def _valid_meta(meta: Any) -> bool:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return False
    ints = ("num_codebooks", "codebook_size", "sample_rate")
    window, splits = meta.get("window"), meta.get("splits")
    return (
        all(isinstance(meta.get(key), int) for key in ints)
        and isinstance(meta.get("codec"), dict)
        and isinstance(window, dict)
        and all(isinstance(window.get(key), int) for key in ("window_frames", "input_frames"))
        and isinstance(splits, dict)
        and all(isinstance(s, dict) and isinstance(s.get("rows"), int) for s in splits.values())
    )


class TokenExample(NamedTuple):
    """One dumped window: ``input_codes`` long ``[K', T_in]``, ``target_codes`` long
    ``[K', T]``, the target's ``inst_class``, the row ``index`` and, where the dump knows
    them, ``onsets`` bool ``[T]`` (a note of the target starts in the frame) and the input's
    musical ``input_features`` float32 ``[F, T_in]`` (every feature the dump stores)."""

    input_codes: torch.Tensor
    target_codes: torch.Tensor
    inst_class: int
    index: int
    onsets: torch.Tensor | None = None
    input_features: torch.Tensor | None = None


class TokenBatch(NamedTuple):
    """Stacked examples: codes long ``[B, K', T_in]`` / ``[B, K', T]``, ``inst_class`` and
    ``index`` long ``[B]``, ``onsets`` bool ``[B, T]`` or ``None``, ``input_features``
    float32 ``[B, F, T_in]`` or ``None``."""

    input_codes: torch.Tensor
    target_codes: torch.Tensor
    inst_class: torch.Tensor
    index: torch.Tensor
    onsets: torch.Tensor | None = None
    input_features: torch.Tensor | None = None


def collate(examples: Sequence[TokenExample]) -> TokenBatch:
    """Stack :class:`TokenExample` s of one dump split into a :class:`TokenBatch`."""
    onsets = [e.onsets for e in examples]
    features = [e.input_features for e in examples]
    return TokenBatch(
        input_codes=torch.stack([e.input_codes for e in examples]),
        target_codes=torch.stack([e.target_codes for e in examples]),
        inst_class=torch.tensor([e.inst_class for e in examples], dtype=torch.long),
        index=torch.tensor([e.index for e in examples], dtype=torch.long),
        onsets=None if any(o is None for o in onsets) else torch.stack(onsets),
        input_features=None if any(f is None for f in features) else torch.stack(features),
    )


def read_track_meta(dump_dir: str | Path) -> dict[str, Any]:
    """``meta.json`` of a whole-track dump (:mod:`stemstream.codec.track_dump`), checked."""
    path = Path(dump_dir) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DumpError(f"{dump_dir}: not a token dump (no {META})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DumpError(f"{path}: corrupt ({err.__class__.__name__}: {err})") from err
    if not isinstance(meta, dict) or meta.get("format") != TRACK_FORMAT:
        raise DumpError(f"{path}: not a {TRACK_FORMAT} meta file")
    if meta.get("format_version") != TRACK_FORMAT_VERSION:
        raise DumpError(f"{path}: format version {meta.get('format_version')!r}, this "
                        f"stemstream reads {TRACK_FORMAT_VERSION}")
    return meta


def is_track_dump(dump_dir: str | Path) -> bool:
    """Whether ``dump_dir`` holds a whole-track dump (else a window dump, or nothing)."""
    try:
        meta = json.loads((Path(dump_dir) / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == TRACK_FORMAT


class TrackCrops(Dataset):
    """Windows cut from a whole-track dump: item ``i`` of epoch ``e`` is a window of row
    ``i`` (a track with one target stem) starting at a frame drawn from ``(seed, e, i)``, so
    every epoch sees new windows and a resumed run sees the same ones. A start is accepted
    when at least ``min_joint_activity`` of the output window is jointly active (the A.1 rule;
    after ``max_retries`` draws the best one is kept). Rows shorter than the window are left
    out.

    Args:
        dump_dir: the dump directory.
        split: the split to read.
        num_codebooks: keep the first ``K'`` levels (default all).
        window_frames: ``T``, output frames per window.
        future_frames: ``t_f``; windows carry ``T + max(0, t_f)`` input frames.
        seed: seed of every draw.
    """

    def __init__(
        self,
        dump_dir: str | Path,
        split: str,
        num_codebooks: int | None = None,
        window_frames: int = 500,
        future_frames: int = 0,
        seed: int = 0,
        min_joint_activity: float = 0.5,
        max_retries: int = 16,
    ):
        self.dump_dir = Path(dump_dir)
        self.meta = read_track_meta(self.dump_dir)
        if split not in self.meta["splits"]:
            raise DumpError(f"{self.dump_dir}: no dumped split {split!r}; available: "
                            f"{', '.join(self.meta['splits']) or 'none'}")
        total = int(self.meta["num_codebooks"])
        self.num_codebooks = total if num_codebooks is None else num_codebooks
        if not 1 <= self.num_codebooks <= total:
            raise DumpError(f"num_codebooks must be in 1..{total} (the dump's K), "
                            f"got {num_codebooks}")
        if window_frames < 1:
            raise DumpError(f"window_frames must be >= 1, got {window_frames}")
        self.split, self.seed, self.epoch = split, seed, 0
        self.window_frames, self.future_frames = window_frames, future_frames
        self.input_frames = window_frames + max(0, future_frames)
        self.min_joint_activity, self.max_retries = min_joint_activity, max_retries
        self._arrays: dict[str, np.ndarray] | None = None
        rows = self._open()["rows.npy"]
        self.rows = np.flatnonzero(rows[:, 1] >= self.input_frames)
        if len(self.rows) == 0:
            raise DumpError(f"{self.dump_dir}/{split}: no row holds {self.input_frames} frames")

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_arrays": None}

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The input features the dump stores (empty for a dump made without them)."""
        if FEATURES not in self._open():
            return ()
        return tuple(self.meta.get("features", ()))

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start(self, index: int) -> int:
        """The window start (frame within its row) of item ``index`` in this epoch."""
        arrays = self._open()
        row = int(self.rows[index])
        first, frames, _ = (int(v) for v in arrays["rows.npy"][row])
        joint = arrays["joint_active.npy"][first : first + frames]
        last = frames - self.input_frames
        rng = np.random.default_rng([self.seed, self.epoch, row])
        best, best_share = 0, -1.0
        for _ in range(self.max_retries):
            start = int(rng.integers(last + 1))
            share = float(np.mean(joint[start : start + self.window_frames]))
            if share >= self.min_joint_activity:
                return start
            if share > best_share:
                best, best_share = start, share
        return best

    def __getitem__(self, index: int) -> TokenExample:
        index = range(len(self.rows))[index]
        arrays = self._open()
        row = int(self.rows[index])
        first, _, inst = (int(v) for v in arrays["rows.npy"][row])
        lo = first + self.start(index)
        k, t = self.num_codebooks, self.window_frames
        features = arrays.get(FEATURES)
        if features is not None:
            features = torch.from_numpy(
                features[:, lo : lo + self.input_frames].astype(np.float32))
        return TokenExample(
            input_codes=torch.from_numpy(
                arrays["input_codes.npy"][:k, lo : lo + self.input_frames].astype(np.int64)),
            target_codes=torch.from_numpy(
                arrays["target_codes.npy"][:k, lo : lo + t].astype(np.int64)),
            inst_class=inst,
            index=row,
            onsets=torch.from_numpy(np.array(arrays["onsets.npy"][lo : lo + t], dtype=bool)),
            input_features=features,
        )

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            folder = self.dump_dir / self.split
            arrays = {}
            for name in TRACK_ARRAYS:
                path = folder / name
                if not path.is_file():
                    raise DumpError(f"{path}: missing from the dump")
                try:
                    arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as err:
                    raise DumpError(f"{path}: corrupt ({err})") from err
            if (folder / FEATURES).is_file():  # dumps made before features lack them
                try:
                    arrays[FEATURES] = np.load(folder / FEATURES, mmap_mode="r",
                                               allow_pickle=False)
                except (OSError, ValueError) as err:
                    raise DumpError(f"{folder / FEATURES}: corrupt ({err})") from err
            frames = arrays["target_codes.npy"].shape[-1]
            if any(array.shape[-1] != frames for name, array in arrays.items()
                   if name != "rows.npy"):
                raise DumpError(f"{folder}: arrays of different lengths")
            self._arrays = arrays
        return self._arrays


class TokenDataset(Dataset):
    """One split of a token dump, memory-mapped (no pickle is ever loaded).

    Args:
        dump_dir: the dump directory (holding ``meta.json``).
        split: the split to read.
        num_codebooks: keep the first ``K' <= K`` RVQ levels (default all ``K``).

    Raises:
        DumpError: missing dump or split, corrupt ``meta.json`` or arrays, ``K' > K``.
    """

    def __init__(self, dump_dir: str | Path, split: str, num_codebooks: int | None = None):
        self.dump_dir = Path(dump_dir)
        self.meta = read_meta(self.dump_dir)
        if split not in self.meta["splits"]:
            raise DumpError(
                f"{self.dump_dir}: no dumped split {split!r}; available: "
                f"{', '.join(self.meta['splits']) or 'none'}"
            )
        self.split = split
        total = int(self.meta["num_codebooks"])
        self.num_codebooks = total if num_codebooks is None else num_codebooks
        if not 1 <= self.num_codebooks <= total:
            raise DumpError(
                f"num_codebooks must be in 1..{total} (the dump's K), got {num_codebooks}"
            )
        self._rows = int(self.meta["splits"][split]["rows"])
        self._arrays: tuple[np.ndarray, ...] | None = None
        self._offsets: np.ndarray | None = None
        self._open()  # fail now, not in a DataLoader worker

    def __getstate__(self) -> dict[str, Any]:
        # A pickled np.memmap is a full copy: workers re-open the files instead.
        return self.__dict__ | {"_arrays": None, "_offsets": None}

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, index: int) -> TokenExample:
        index = range(self._rows)[index]  # IndexError out of range; negatives allowed
        inputs, targets, classes = self._open()
        k = self.num_codebooks
        return TokenExample(
            input_codes=torch.from_numpy(inputs[index, :k].astype(np.int64)),
            target_codes=torch.from_numpy(targets[index, :k].astype(np.int64)),
            inst_class=int(classes[index]),
            index=index,
        )

    def provenance(self, index: int) -> dict[str, Any]:
        """Row ``index``'s provenance record (track, split, stems, start, joint activity)."""
        index = range(self._rows)[index]
        path = self.dump_dir / self.split / PROVENANCE
        if self._offsets is None:
            with open(path, "rb") as f:
                lengths = [len(line) for line in f]
            if len(lengths) != self._rows:
                raise DumpError(f"{path}: {len(lengths)} records for {self._rows} rows")
            self._offsets = np.cumsum([0, *lengths[:-1]], dtype=np.int64)
        with open(path, "rb") as f:
            f.seek(int(self._offsets[index]))
            return json.loads(f.readline())

    def _open(self) -> tuple[np.ndarray, ...]:
        if self._arrays is None:
            window, k, rows = self.meta["window"], int(self.meta["num_codebooks"]), self._rows
            shapes = (
                (rows, k, window["input_frames"]),
                (rows, k, window["window_frames"]),
                (rows,),
            )
            self._arrays = tuple(
                _load_array(self.dump_dir / self.split / name, shape)
                for name, shape in zip(ARRAYS, shapes, strict=True)
            )
        return self._arrays


def _load_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise DumpError(f"{path}: missing from the dump")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DumpError(f"{path}: corrupt ({err})") from err
    if array.shape != tuple(shape) or array.dtype.kind != "i":
        raise DumpError(
            f"{path}: holds {array.dtype} {array.shape}, meta.json says int {tuple(shape)}"
        )
    return array
