"""Reading token dumps (written by :mod:`stemstream.data.dump`): memory-mapped arrays, no
pickle, one :class:`TokenExample` per row. See :mod:`stemstream.data.dump` for the layout.
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
    ``[K', T]``, the target's ``inst_class`` and the row ``index``."""

    input_codes: torch.Tensor
    target_codes: torch.Tensor
    inst_class: int
    index: int


class TokenBatch(NamedTuple):
    """Stacked examples: codes long ``[B, K', T_in]`` / ``[B, K', T]``, ``inst_class`` and
    ``index`` long ``[B]``."""

    input_codes: torch.Tensor
    target_codes: torch.Tensor
    inst_class: torch.Tensor
    index: torch.Tensor


def collate(examples: Sequence[TokenExample]) -> TokenBatch:
    """Stack :class:`TokenExample` s of one dump split into a :class:`TokenBatch`."""
    return TokenBatch(
        input_codes=torch.stack([e.input_codes for e in examples]),
        target_codes=torch.stack([e.target_codes for e in examples]),
        inst_class=torch.tensor([e.inst_class for e in examples], dtype=torch.long),
        index=torch.tensor([e.index for e in examples], dtype=torch.long),
    )


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
