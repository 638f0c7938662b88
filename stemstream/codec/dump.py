"""Token dumps: appendix-A.1 windows encoded once with a codec, then loaded fast for training.

Layout (``M`` rows per split, ``K`` codebooks, ``T`` output frames, ``T_in = T + max(0, t_f)``
input frames; codes are int16, or int32 when ``codebook_size > 32767``)::

    DUMP/meta.json                      codec identity, window config, rates, K, counts
    DUMP/<split>/input_codes.npy        [M, K, T_in]  codes of the input mixture
    DUMP/<split>/target_codes.npy       [M, K, T]     codes of the target stem
    DUMP/<split>/inst_class.npy         int16 [M]     the target's instrument class
    DUMP/<split>/provenance.jsonl       one JSON object per row (track, stems, start, activity)
    DUMP/<split>/audio/000000_input.flac, 000000_target.flac     (``audio_splits`` only)

Row ``i``'s target frame ``t`` covers ``[start + t*hop, start + (t+1)*hop)`` samples of the
target stem; input frame ``t`` the same span of the mixture of the other stems, which runs
``t_f`` frames of real (never padded) audio past the output window when ``t_f > 0``.

A split is built in ``DUMP/.<split>.partial/`` (arrays written incrementally into memory maps
sized after window selection, so memory stays bounded), renamed to ``DUMP/<split>`` when
complete and only then recorded in ``meta.json`` (rewritten atomically). An interrupted dump
never leaves a half split that looks whole, and re-running it redoes only the missing splits.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stemstream import __version__, audio
from stemstream.codec.base import Codec, same_tokens
from stemstream.data.dataset import WindowDataset
from stemstream.data.dataset import collate as collate_windows
from stemstream.data.slakh import SlakhCorpus
from stemstream.data.tokens import (  # noqa: F401  (re-exported: the dump's reader side)
    ARRAYS,
    FORMAT,
    FORMAT_VERSION,
    META,
    PROVENANCE,
    DumpError,
    TokenBatch,
    TokenDataset,
    TokenExample,
    collate,
    read_meta,
)
from stemstream.data.windows import WindowConfig
from stemstream.errors import ConfigError

log = logging.getLogger(__name__)

# What must agree for a re-run to add to (or skip) an existing dump instead of refusing it.
IDENTITY_KEYS = (
    "format_version",
    "corpus",
    "codec",
    "sample_rate",
    "window",
    "windows_per_track",
    "seed",
)


def code_dtype(codebook_size: int) -> np.dtype:
    """Smallest stored dtype for codes in ``[0, codebook_size)``: int16, else int32."""
    return np.dtype(np.int16 if codebook_size <= np.iinfo(np.int16).max else np.int32)


@dataclass
class SplitSummary:
    """One split of a dump: ``rows`` windows from ``tracks`` tracks; ``rejections`` counts
    rejected window draws (``windows_per_track`` per track) per reason; ``audio`` whether audio
    files were written; ``skipped`` when this run found the split already dumped (then the
    seconds are the original run's)."""

    tracks: int
    rows: int
    rejections: dict[str, int]
    audio: bool
    encode_seconds: float = 0.0
    audio_seconds: float = 0.0
    skipped: bool = False


@dataclass
class DumpSummary:
    """What :func:`dump_corpus` did; :meth:`format` renders it for the CLI."""

    out_dir: Path
    meta: dict[str, Any]
    splits: dict[str, SplitSummary]
    disk_bytes: int
    wall_seconds: float

    @property
    def realtime_factor(self) -> float:
        """Audio seconds encoded per second of encoding, over splits dumped by this run."""
        done = [s for s in self.splits.values() if not s.skipped]
        seconds = sum(s.encode_seconds for s in done)
        return sum(s.audio_seconds for s in done) / seconds if seconds > 0 else float("nan")

    def format(self) -> str:
        m, w = self.meta, self.meta["window"]
        lines = [
            f"dump {self.out_dir}: codec {m['codec']['class']} "
            f"(weights {m['codec']['weights_hash']}), {m['sample_rate']} Hz, "
            f"{m['frame_rate_hz']:g} frames/s, K={m['num_codebooks']} x {m['codebook_size']} "
            f"({m['dtype']})",
            f"windows: {w['window_seconds']:g} s output ({w['window_frames']} frames), "
            f"t_f {w['future_seconds']:+g} s ({w['input_frames']} input frames), "
            f"{m['windows_per_track']} per track, seed {m['seed']}",
            f"{'split':<12} {'tracks':>6} {'rows':>6} {'rejected':>8}  audio  status",
        ]
        for name, s in self.splits.items():
            lines.append(
                f"{name:<12} {s.tracks:>6} {s.rows:>6} {sum(s.rejections.values()):>8}"
                f"  {'yes' if s.audio else 'no':<5}  "
                f"{'skipped (already dumped)' if s.skipped else 'dumped'}"
            )
        reasons = sum((Counter(s.rejections) for s in self.splits.values()), Counter())
        lines += [f"  rejected ({reason}): {n}" for reason, n in reasons.most_common()]
        lines.append(
            f"disk: {self.disk_bytes / 2**20:.2f} MiB; wall {self.wall_seconds:.1f} s; "
            f"encode throughput {self.realtime_factor:.1f}x real time"
        )
        return "\n".join(lines)


def dump_corpus(
    corpus: str | Path | SlakhCorpus,
    codec: Codec,
    out_dir: str | Path,
    window: WindowConfig,
    splits: Sequence[str] | None = None,
    windows_per_track: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    audio_splits: Sequence[str] = ("validation", "test"),
    overwrite: bool = False,
) -> DumpSummary:
    """Select A.1 windows of every track, encode input mix and target, write a dump.

    Windows are chosen exactly as :class:`~stemstream.data.dataset.WindowDataset` chooses them
    (audio decoded at the codec's sample rate, ``windows_per_track`` draws per track from
    ``seed``), then encoded ``batch_size`` at a time under ``torch.no_grad()`` on the codec's
    device. See the module docstring for the layout.

    Args:
        corpus: Slakh-layout corpus root or an open :class:`SlakhCorpus`.
        codec: the codec; its frame rate must equal ``window.frame_rate_hz``.
        out_dir: dump directory (created; an existing dump is extended or skipped).
        window: window rule (output length, ``t_f``, silence threshold...).
        splits: splits to dump (default: all of the corpus).
        windows_per_track: windows drawn per track.
        batch_size: windows per ``codec.encode`` call.
        seed: seed of every window draw.
        progress: show a tqdm bar over windows.
        audio_splits: splits whose input/target audio is also written as FLAC files.
        overwrite: redo requested splits that exist, and replace a dump made with another
            codec or configuration instead of raising :class:`DumpError`.

    Returns:
        A :class:`DumpSummary` (per-split counts, rejections, disk size, throughput).
    """
    started = time.perf_counter()
    reader = corpus if isinstance(corpus, SlakhCorpus) else SlakhCorpus(corpus)
    if abs(codec.frame_rate - window.frame_rate_hz) > 1e-9:
        raise ConfigError(
            f"the codec runs at {codec.frame_rate:g} frames/s but the window "
            f"config at {window.frame_rate_hz:g}; they must match"
        )
    for name, value in (("windows_per_track", windows_per_track), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    reader.check_splits(splits)
    out_dir = Path(out_dir)
    meta = _open_dump(out_dir, _new_meta(reader, codec, window, windows_per_track, seed), overwrite)
    summaries: dict[str, SplitSummary] = {}
    for split in dict.fromkeys(splits or reader.splits):
        done = meta["splits"].get(split)
        if done is not None and not overwrite and _is_complete(out_dir / split):
            log.info("%s: split %r already dumped with this codec and config", out_dir, split)
            summaries[split] = SplitSummary(**done, skipped=True)
            continue
        meta["splits"].pop(split, None)
        _write_json(out_dir / META, meta)  # forget the old split before touching its files
        dataset = WindowDataset(reader, split, window, codec.sample_rate, windows_per_track, seed)
        if len(dataset) == 0:
            reasons = Counter(r.reason for r in dataset.rejections).most_common(1)
            raise DumpError(
                f"{reader.root}: no track of split {split!r} gives a window of "
                f"{window.window_seconds:g} s (+{max(0.0, window.future_seconds):g} s "
                f"look-ahead)" + (f"; most common reason: {reasons[0][0]}" if reasons else "")
            )
        summary = _dump_split(dataset, codec, out_dir, batch_size, split in audio_splits, progress)
        summary.tracks = len(reader.tracks(split))
        meta["splits"][split] = dataclasses.asdict(summary)
        del meta["splits"][split]["skipped"]
        _write_json(out_dir / META, meta)
        summaries[split] = summary
    disk = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return DumpSummary(out_dir, meta, summaries, disk, time.perf_counter() - started)


def _dump_split(
    dataset: WindowDataset,
    codec: Codec,
    out_dir: Path,
    batch_size: int,
    with_audio: bool,
    progress: bool,
) -> SplitSummary:
    """Encode every window of ``dataset`` into ``out_dir/.<split>.partial``, then rename it
    to ``out_dir/<split>``."""
    from tqdm import tqdm

    split, rows, window = dataset.split, len(dataset), dataset.config
    partial = out_dir / f".{split}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "audio" if with_audio else partial).mkdir(parents=True)
    shape, dtype = (rows, codec.num_codebooks), code_dtype(codec.codebook_size)
    inputs = np.lib.format.open_memmap(
        partial / ARRAYS[0], "w+", dtype, (*shape, window.input_frames)
    )
    targets = np.lib.format.open_memmap(
        partial / ARRAYS[1], "w+", dtype, (*shape, window.window_frames)
    )
    classes = np.lib.format.open_memmap(partial / ARRAYS[2], "w+", np.int16, (rows,))
    summary = SplitSummary(tracks=0, rows=rows, rejections={}, audio=with_audio)
    bar = tqdm(total=rows, desc=f"dump {split}", unit="window", disable=not progress)
    with open(partial / PROVENANCE, "w", encoding="utf-8") as prov, bar:
        for lo in range(0, rows, batch_size):
            examples = [dataset[i] for i in range(lo, min(rows, lo + batch_size))]
            batch = collate_windows(examples)
            hi = lo + len(examples)
            tic = time.perf_counter()
            inputs[lo:hi] = _encode(codec, batch.input_audio, inputs.shape[1:], dtype)
            targets[lo:hi] = _encode(codec, batch.target_audio, targets.shape[1:], dtype)
            summary.encode_seconds += time.perf_counter() - tic
            summary.audio_seconds += (
                batch.input_audio.numel() + batch.target_audio.numel()
            ) / codec.sample_rate
            classes[lo:hi] = batch.inst_class.numpy()
            for row, example in enumerate(examples, start=lo):
                record = {"row": row, **example.provenance, "inst_class": example.inst_class}
                record["input_stems"] = list(dataset.window(row).input_stems)
                if with_audio:
                    record["audio"] = _save_audio(partial, row, example, codec.sample_rate)
                prov.write(json.dumps(record) + "\n")
            bar.update(len(examples))
    for array in (inputs, targets, classes):
        array.flush()
    del array, inputs, targets, classes  # close the maps before the rename
    shutil.rmtree(out_dir / split, ignore_errors=True)
    os.replace(partial, out_dir / split)
    summary.rejections = dict(Counter(r.reason for r in dataset.rejections))
    log.info("%s: dumped %d windows of split %r", out_dir, rows, split)
    return summary


def _encode(
    codec: Codec, wave: torch.Tensor, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """Float ``[B, 1, N]`` -> codes ``[B, K, T]`` in the stored dtype, checking ``(K, T)``."""
    device = next(itertools.chain(codec.parameters(), codec.buffers()), wave).device
    with torch.no_grad():
        codes = codec.encode(wave.to(device), codec.sample_rate)
    if tuple(codes.shape[1:]) != tuple(shape):
        raise DumpError(
            f"codec returned codes {tuple(codes.shape)}, expected (B, {shape[0]}, {shape[1]})"
        )
    return codes.cpu().numpy().astype(dtype)  # .cpu() also synchronises for the timing


def _save_audio(split_dir: Path, row: int, example: Any, sample_rate: int) -> dict[str, str]:
    names = {"input": f"audio/{row:06d}_input.flac", "target": f"audio/{row:06d}_target.flac"}
    audio.save(split_dir / names["input"], example.input_audio.numpy(), sample_rate)
    audio.save(split_dir / names["target"], example.target_audio.numpy(), sample_rate)
    return names


def _new_meta(
    reader: SlakhCorpus, codec: Codec, window: WindowConfig, windows_per_track: int, seed: int
) -> dict[str, Any]:
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stemstream_version": __version__,
        "corpus": str(reader.root.resolve()),
        "codec": codec.codec_identity(),
        "sample_rate": codec.sample_rate,
        "hop_length": codec.hop_length,
        "frame_rate_hz": codec.frame_rate,
        "num_codebooks": codec.num_codebooks,
        "codebook_size": codec.codebook_size,
        "dtype": code_dtype(codec.codebook_size).name,
        "window": dataclasses.asdict(window)
        | {
            "window_frames": window.window_frames,
            "future_frames": window.future_frames,
            "input_frames": window.input_frames,
        },
        "windows_per_track": windows_per_track,
        "seed": seed,
        "splits": {},
    }
    return json.loads(json.dumps(meta))  # tuples -> lists: compares equal to a re-read meta


def _open_dump(out_dir: Path, fresh: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """The meta to continue with: the existing one if compatible, else ``fresh`` (after
    removing the old dump when ``overwrite``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DumpError(f"{out_dir}: exists and is not a directory")
    if not (out_dir / META).is_file():
        if out_dir.exists() and any(not _is_partial(p) for p in out_dir.iterdir()):
            raise DumpError(
                f"{out_dir}: exists but is not a token dump (no {META}); "
                "choose a new or empty directory"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(out_dir / META, fresh)
        return fresh
    try:
        old = read_meta(out_dir)
        differ = [key for key in IDENTITY_KEYS if not _same(key, old.get(key), fresh[key])]
    except DumpError:
        if not overwrite:
            raise
        old, differ = None, ["meta"]
    if not differ:
        return fresh | {"splits": old["splits"]}
    if not overwrite:
        raise DumpError(
            f"{out_dir}: holds a dump made with a different {', '.join(differ)}; "
            "pass --overwrite to replace it, or choose another directory"
        )
    log.warning("%s: replacing a dump made with a different %s", out_dir, ", ".join(differ))
    for path in out_dir.iterdir():
        if path.is_dir() and (_is_partial(path) or (path / ARRAYS[0]).is_file()):
            shutil.rmtree(path)
    _write_json(out_dir / META, fresh)
    return fresh


def _same(key: str, old: Any, fresh: Any) -> bool:
    """Equal meta entries; for the codec, equal tokens (a decoder-only change keeps a dump)."""
    if key == "codec" and isinstance(old, dict):
        return same_tokens(old, fresh)
    return old == fresh


def _is_partial(path: Path) -> bool:
    return path.is_dir() and path.name.startswith(".") and path.name.endswith(".partial")


def _is_complete(split_dir: Path) -> bool:
    return all((split_dir / name).is_file() for name in (*ARRAYS, PROVENANCE))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
