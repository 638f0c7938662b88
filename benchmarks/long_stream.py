"""A long stream at the default configuration (issue 17): deadline misses and resident memory
over time.

Streams ``--minutes`` of generated music (a new seed every minute, so the input never repeats
exactly) through one :class:`~stemstream.stream.session.Session` in 20 ms blocks on a virtual
clock: each chunk's deadline is judged against the compute actually measured, as a live
stream would see it. Prints, per minute: missed chunks, RTF, p99 ms per frame and RSS, and
at the end the RSS growth after the first minute.

RSS is read at the end of each minute after the benchmark has dropped that minute's input
(tens of MiB of float64 temporaries to synthesise it) and asked the C allocator to return
free memory to the system (glibc ``malloc_trim``, where there is one): otherwise the input's
own buffers decide the figure (it alternated by 29 MiB between minutes), not the session.

    python benchmarks/long_stream.py [--minutes 60] [--model default] [--route auto] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import resource
import time

import numpy as np
import torch

from stemstream.stream.bench import synthetic_music
from stemstream.stream.models import load_stream_model
from stemstream.stream.session import Session, SessionConfig


def rss_mb() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def release_free_memory() -> None:
    """Collect garbage and return the C heap's free pages to the system (glibc only)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--model", default="default")
    parser.add_argument("--route", default="auto")
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_stream_model(args.model, route=args.route)
    rate = loaded.codec.sample_rate
    session = Session(loaded.model, loaded.codec,
                      SessionConfig(instrument="Bass", input_sample_rate=rate,
                                    latency=args.latency))
    block = rate // 50
    rows = []
    for minute in range(int(np.ceil(args.minutes))):
        audio = synthetic_music(60.0, rate, seed=minute)
        missed_before = session.stats.missed_chunks
        frame_ms = []
        began = time.perf_counter()
        for start in range(0, len(audio), block):
            t0 = time.perf_counter()
            session.push(audio[start : start + block])
            frame_ms.append((time.perf_counter() - t0) * 1e3)
        wall = time.perf_counter() - began
        del audio
        release_free_memory()
        rows.append({"minute": minute + 1, "missed": session.stats.missed_chunks - missed_before,
                     "rtf": wall / 60.0, "p99_ms": float(np.percentile(frame_ms, 99)),
                     "rss_mb": rss_mb()})
        if not args.json:
            row = rows[-1]
            print(f"minute {row['minute']:>3}: missed {row['missed']:>4}, RTF {row['rtf']:.3f}, "
                  f"p99 {row['p99_ms']:.1f} ms per block, RSS {row['rss_mb']:.1f} MiB",
                  flush=True)
    session.finish()
    growth = rows[-1]["rss_mb"] - rows[0]["rss_mb"]
    summary = {"routes": loaded.describe_routes(), "minutes": len(rows),
               "missed": sum(r["missed"] for r in rows), "rss_growth_after_first_minute_mb":
               growth, "per_minute": rows}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['routes']}: {summary['minutes']} min, missed {summary['missed']} "
              f"chunks, RSS growth after the first minute {growth:+.1f} MiB")


if __name__ == "__main__":
    main()
