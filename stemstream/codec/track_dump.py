"""Whole-track token dumps: every (track, target stem) pair encoded once over its whole length,
so training can draw a fresh window at random at every step (:class:`TrackCrops`) instead of
revisiting a few fixed windows per track (which overfits: train loss 2.40 vs validation 2.59).

Layout (``K`` codebooks, ``N`` frames of all rows of a split laid end to end)::

    DUMP/meta.json                   format "stemstream-track-dump", codec identity, rates, K
    DUMP/<split>/input_codes.npy     [K, N]  codes of the input mixture (the other stems)
    DUMP/<split>/target_codes.npy    [K, N]  codes of the target stem
    DUMP/<split>/joint_active.npy    bool [N] input and target both sound (A.1 activity)
    DUMP/<split>/onsets.npy          bool [N] a note of the target starts in the frame (MIDI)
    DUMP/<split>/rows.npy            int64 [M, 3] (first frame, frames, instrument class)
    DUMP/<split>/input_features.npy  float16 [F, N] musical features of the input mixture
                                     (:mod:`stemstream.features`, all of them, in the order
                                     meta.json's ``features`` names)
    DUMP/<split>/provenance.jsonl    one JSON object per row (track, target stem, input stems)

Input and target of a row share the gain of :func:`~stemstream.data.windows.mix_pair`, as
window dumps do. A split is written in ``DUMP/.<split>.partial`` and renamed when complete, so
an interrupted dump is redone split by split by rerunning the same command. A dump made before
features existed gains them with :func:`add_features` (``stemstream data dump-features``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stemstream import __version__
from stemstream.codec.base import Codec, same_tokens
from stemstream.codec.dump import code_dtype
from stemstream.data.instruments import NEVER_TARGET
from stemstream.data.slakh import SlakhCorpus, TrackInfo
from stemstream.data.tokens import (
    FEATURES,
    PROVENANCE,
    TRACK_ARRAYS,
    TRACK_FORMAT,
    TRACK_FORMAT_VERSION,
    DumpError,
    read_track_meta,
)
from stemstream.data.windows import active_frames, mix_pair, track_rng
from stemstream.errors import ConfigError
from stemstream.features import FEATURE_NAMES, feature_dim, features

log = logging.getLogger(__name__)

IDENTITY_KEYS = ("format_version", "corpus", "codec", "sample_rate", "targets_per_track",
                 "silence_db", "seed")


@dataclass
class TrackDumpSummary:
    out_dir: Path
    rows: dict[str, int]
    hours: dict[str, float]
    skipped: list[str]
    wall_seconds: float

    def format(self) -> str:
        lines = [f"track dump {self.out_dir}:"]
        for split, rows in self.rows.items():
            state = "skipped (already dumped)" if split in self.skipped else "dumped"
            lines.append(f"  {split:<12} {rows:>6} rows  {self.hours[split]:7.2f} h  {state}")
        lines.append(f"wall {self.wall_seconds:.1f} s")
        return "\n".join(lines)


def onset_frames(track: TrackInfo, stem_id: str, frame_rate_hz: float, frames: int) -> np.ndarray:
    """``bool [frames]``: frames in which a MIDI note of the stem starts (all ``False``
    without MIDI)."""
    out = np.zeros(frames, dtype=bool)
    path = track.stem(stem_id).midi_path
    if path is None or not Path(path).is_file():
        return out
    import pretty_midi

    try:
        midi = pretty_midi.PrettyMIDI(str(path))
    except (OSError, ValueError, EOFError, KeyError, IndexError) as err:
        log.warning("%s: unreadable MIDI (%s: %s); no onsets", path, type(err).__name__, err)
        return out
    starts = [note.start for inst in midi.instruments for note in inst.notes]
    index = np.floor(np.asarray(starts, dtype=np.float64) * frame_rate_hz).astype(np.int64)
    out[index[(index >= 0) & (index < frames)]] = True
    return out


def dump_tracks(
    corpus: str | Path | SlakhCorpus,
    codec: Codec,
    out_dir: str | Path,
    splits: Sequence[str] | None = None,
    targets_per_track: int = 0,
    silence_db: float = -60.0,
    seed: int = 0,
    progress: bool = True,
) -> TrackDumpSummary:
    """Encode whole tracks, one row per (track, target stem); see the module docstring.

    Args:
        corpus: Slakh-layout corpus root or an open :class:`SlakhCorpus`.
        codec: the codec (its device is used).
        out_dir: dump directory (created; finished splits of the same configuration are
            skipped, another configuration is refused).
        splits: splits to dump (default: all of the corpus).
        targets_per_track: target stems drawn per track (0 = every eligible stem).
        silence_db: A-weighted RMS below this is silent (activity arrays).
        seed: seed of the target draw.
        progress: a tqdm bar over tracks.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    reader = corpus if isinstance(corpus, SlakhCorpus) else SlakhCorpus(corpus)
    if isinstance(targets_per_track, bool) or targets_per_track < 0:
        raise ConfigError(f"targets_per_track must be >= 0, got {targets_per_track!r}")
    reader.check_splits(splits)
    out_dir = Path(out_dir)
    meta = _open(out_dir, {
        "format": TRACK_FORMAT,
        "format_version": TRACK_FORMAT_VERSION,
        "stemstream_version": __version__,
        "corpus": str(reader.root.resolve()),
        "codec": codec.codec_identity(),
        "sample_rate": codec.sample_rate,
        "frame_rate_hz": codec.frame_rate,
        "num_codebooks": codec.num_codebooks,
        "codebook_size": codec.codebook_size,
        "targets_per_track": targets_per_track,
        "silence_db": silence_db,
        "seed": seed,
        "features": list(FEATURE_NAMES),
        "splits": {},
    })
    skipped = []
    for split in dict.fromkeys(splits or reader.splits):
        if split in meta["splits"] and (out_dir / split / "rows.npy").is_file():
            skipped.append(split)
            continue
        tracks = reader.tracks(split)
        partial = out_dir / f".{split}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        columns: dict[str, list[np.ndarray]] = {name: [] for name in TRACK_ARRAYS[:4]}
        columns[FEATURES] = []
        rows: list[tuple[int, int, int]] = []
        frames_total = 0
        with open(partial / PROVENANCE, "w", encoding="utf-8") as prov:
            for track in tqdm(tracks, desc=f"dump {split}", unit="track", disable=not progress):
                for row in _track_rows(track, codec, targets_per_track, silence_db, seed):
                    arrays, record = row
                    frames = arrays["target_codes.npy"].shape[-1]
                    for name, array in arrays.items():
                        columns[name].append(array)
                    rows.append((frames_total, frames, record["inst_class"]))
                    prov.write(json.dumps({"row": len(rows) - 1, **record}) + "\n")
                    frames_total += frames
        dtype = code_dtype(codec.codebook_size)
        for name, parts in columns.items():
            if name.endswith("codes.npy"):
                empty = np.zeros((codec.num_codebooks, 0), dtype)
                joined = np.concatenate(parts, axis=-1) if parts else empty
            elif name == FEATURES:
                empty = np.zeros((feature_dim(FEATURE_NAMES), 0), np.float16)
                joined = np.concatenate(parts, axis=-1) if parts else empty
            else:
                joined = np.concatenate(parts) if parts else np.zeros(0, bool)
            np.save(partial / name, joined)
        np.save(partial / "rows.npy", np.asarray(rows, dtype=np.int64).reshape(-1, 3))
        shutil.rmtree(out_dir / split, ignore_errors=True)
        os.replace(partial, out_dir / split)
        meta["splits"][split] = {"rows": len(rows), "frames": frames_total,
                                 "tracks": len(tracks)}
        _write_json(out_dir / "meta.json", meta)
    hours = {s: v["frames"] / meta["frame_rate_hz"] / 3600 for s, v in meta["splits"].items()}
    rows_out = {s: v["rows"] for s, v in meta["splits"].items()}
    return TrackDumpSummary(out_dir, rows_out, hours, skipped, time.perf_counter() - started)


def _track_rows(track: TrackInfo, codec: Codec, targets_per_track: int, silence_db: float,
                seed: int):
    """``(arrays, provenance)`` for each chosen target stem of ``track``."""
    eligible = [s for s in track.stems if s.inst_class not in NEVER_TARGET]
    if len(track.stems) < 2 or not eligible:
        return
    if targets_per_track and targets_per_track < len(eligible):
        rng = track_rng(seed, track, 0)
        chosen = sorted(rng.choice(len(eligible), targets_per_track, replace=False).tolist())
        eligible = [eligible[i] for i in chosen]
    rate, hop = codec.sample_rate, codec.hop_length
    stems = track.load_stems(rate)
    for target in eligible:
        mixture, wave = mix_pair(stems, target.stem_id)
        frames = wave.shape[0] // hop  # whole frames of real audio
        if frames < 1:
            continue
        batch = torch.from_numpy(np.stack([mixture, wave])[:, None, : frames * hop].copy())
        device = next(codec.parameters(), batch).device
        with torch.no_grad():
            codes = codec.encode(batch.to(device), rate).cpu().numpy()
        dtype = code_dtype(codec.codebook_size)
        joint = (active_frames(mixture, rate, silence_db)[:frames]
                 & active_frames(wave, rate, silence_db)[:frames])
        arrays = {
            "input_codes.npy": codes[0].astype(dtype),
            "target_codes.npy": codes[1].astype(dtype),
            "joint_active.npy": joint,
            "onsets.npy": onset_frames(track, target.stem_id, codec.frame_rate, frames),
            FEATURES: mixture_features(mixture, frames, rate, hop),
        }
        record = {"track": track.name, "split": track.split, "target_stem": target.stem_id,
                  "inst_class": target.inst_class, "frames": frames,
                  "input_stems": [s.stem_id for s in track.stems if s is not target]}
        yield arrays, record


def mixture_features(mixture: np.ndarray, frames: int, sample_rate: int, hop: int) -> np.ndarray:
    """``float16 [F, frames]``: all :mod:`stemstream.features` of the input mixture's first
    ``frames`` whole frames, as a stream of it would compute them."""
    out = features(mixture[: frames * hop], sample_rate, hop, FEATURE_NAMES)
    return out.astype(np.float16)


def add_features(dump_dir: str | Path, corpus: str | Path | None = None,
                 progress: bool = True) -> dict[str, int]:
    """Compute ``input_features.npy`` for every split of a track dump made without them.

    Each row's input mixture is rebuilt from the corpus exactly as :func:`dump_tracks` built
    it (its provenance names the track and target stem). Splits that have the features are
    skipped; a split is written to a temporary file and renamed, so an interrupted run is
    redone by rerunning it. Returns the rows processed per split.

    Args:
        dump_dir: the track dump.
        corpus: the corpus it was made from (default: the path in its ``meta.json``).
        progress: a tqdm bar over rows.
    """
    from tqdm import tqdm

    dump_dir = Path(dump_dir)
    meta = read_track_meta(dump_dir)
    reader = SlakhCorpus(corpus or meta["corpus"])
    rate, hop = int(meta["sample_rate"]), int(round(meta["sample_rate"] / meta["frame_rate_hz"]))
    done: dict[str, int] = {}
    for split in meta["splits"]:
        folder = dump_dir / split
        if (folder / FEATURES).is_file():
            continue
        rows = np.load(folder / "rows.npy")
        records = [json.loads(line) for line in
                   (folder / PROVENANCE).read_text(encoding="utf-8").splitlines()]
        tracks = {t.name: t for t in reader.tracks(split)}
        out = np.zeros((feature_dim(FEATURE_NAMES), int(rows[:, 1].sum()) if len(rows) else 0),
                       np.float16)
        loaded: tuple[str, dict[str, np.ndarray]] | None = None
        for (first, frames, _), record in tqdm(list(zip(rows, records, strict=True)),
                                               desc=f"features {split}", unit="row",
                                               disable=not progress):
            track = tracks.get(record["track"])
            if track is None:
                raise DumpError(f"{reader.root}: has no track {record['track']!r} in split "
                                f"{split!r}; pass the corpus the dump was made from")
            if loaded is None or loaded[0] != track.name:
                loaded = (track.name, track.load_stems(rate))
            mixture, _ = mix_pair(loaded[1], record["target_stem"])
            out[:, first : first + frames] = mixture_features(mixture, int(frames), rate, hop)
        tmp = folder / f".{FEATURES}.partial.npy"
        np.save(tmp, out)
        os.replace(tmp, folder / FEATURES)
        done[split] = len(rows)
    meta["features"] = list(FEATURE_NAMES)
    _write_json(dump_dir / "meta.json", meta)
    return done


def _open(out_dir: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    if not (out_dir / "meta.json").is_file():
        if out_dir.exists() and any(not p.name.startswith(".") for p in out_dir.iterdir()):
            raise DumpError(f"{out_dir}: exists but is not a track dump; choose a new directory")
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(out_dir / "meta.json", fresh)
        return fresh
    old = read_track_meta(out_dir)
    differ = [k for k in IDENTITY_KEYS if not (
        same_tokens(old[k], fresh[k]) if k == "codec" else old.get(k) == fresh[k])]
    if differ:
        raise DumpError(f"{out_dir}: holds a track dump made with a different "
                        f"{', '.join(differ)}; choose another directory")
    return fresh | {"splits": old["splits"]}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
