"""How many concurrent, real-time-paced sessions a server holds with zero missed deadlines
(issue 18): sessions one by one (each its own model step, on the fastest single-stream route)
against the batched engine (one model step for all), in one process or spread over several,
measured in the same run.

Every ``--block-ms`` of wall time, each of ``n`` sessions receives the next block of its own
input (generated music, a different seed per session), as a server's clients would send it;
sessions run on wall clocks, so a round that takes longer than the block makes output late
and counts as missed deadlines at latency ``--latency``. ``n`` grows one by one until a run
misses again when retried (``--retries``; ``--max-sessions`` at most). Prints, per mode and
``n``: missed chunks, the round's wall time p50 / p99 against the block, and the most sessions
held with zero misses.

    python benchmarks/serve_load.py [--model default-live] [--seconds 6] [--max-sessions 16]
        [--window 512] [--weights fp32|int8] [--codec-block N] [--engines 1 2] [--json]

``--engines 2``: the sessions spread over two engine processes (one per core; ``stemstream
serve --engines 2``), one by one or batched in each.

``--window`` is every session's KV ring in positions (``stemstream serve --window``): a
batched step's attention reads every row's ring, so a shorter ring holds more sessions; what
it costs in loss: ``python benchmarks/route_quality.py --seconds 20 --rings 128 256 512``.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import ExitStack

import numpy as np
import torch

from stemstream.stream.bench import synthetic_music
from stemstream.stream.clock import WallClock
from stemstream.stream.engine import Engine, EngineWorker
from stemstream.stream.models import load_stream_model
from stemstream.stream.remote import RemoteEngine
from stemstream.stream.session import Session, SessionConfig

INSTRUMENTS = ["Bass", "Drums", "Piano", "Guitar", "Strings", "Organ", "Reed", "Brass"]


def run(mode: str, n: int, loaded, args, inputs: list[np.ndarray], engines: int = 1) -> dict:
    """``n`` sessions paced in real time for ``args.seconds``; ``mode`` "alone" or "batched";
    ``engines`` > 1: spread over that many engine processes (``stemstream serve --engines``),
    each driven by its :class:`EngineWorker` as the server drives it."""
    rate = loaded.codec.sample_rate
    configs = [SessionConfig(instrument=INSTRUMENTS[i % len(INSTRUMENTS)],
                             input_sample_rate=rate, latency=args.latency, seed=i,
                             guidance=loaded.guidance, window=args.window,
                             codec_block=args.codec_block) for i in range(n)]
    workers = []
    if engines > 1:
        share = -(-n // engines)
        workers = [EngineWorker(RemoteEngine(loaded.loader, share, window=args.window,
                                             guided=loaded.guidance != 1,
                                             batched=mode == "batched"))
                   for _ in range(engines)]
        owners = [workers[i % engines] for i in range(n)]
        sessions = [w.call(w.engine.open, c, WallClock()).result()
                    for w, c in zip(owners, configs, strict=True)]
    elif mode == "batched":
        engine = Engine(loaded.model, loaded.codec, max_sessions=n, route=loaded.route.name,
                        guided=loaded.guidance != 1, weights=loaded.weights,
                        window=args.window)
        sessions = [engine.open(c, clock=WallClock()) for c in configs]
    else:
        sessions = [Session(loaded.model, loaded.codec, c, clock=WallClock()) for c in configs]
    block = round(rate * args.block_ms / 1000)
    rounds = int(args.seconds * 1000 / args.block_ms)
    round_ms = []
    began = time.perf_counter()
    for r in range(rounds):
        due = began + r * args.block_ms / 1000
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        t0 = time.perf_counter()
        blocks = {s: inputs[i][r * block : (r + 1) * block] for i, s in enumerate(sessions)}
        if workers:
            with ExitStack() as held:  # every engine's round starts with all its sessions
                for worker in workers:
                    held.enter_context(worker.paused())
                futures = [owner.push(s, b) for owner, (s, b) in zip(owners, blocks.items(),
                                                                     strict=True)]
            for future in futures:
                future.result()
        elif mode == "batched":
            engine.push(blocks)
        else:
            for session, b in blocks.items():
                session.push(b)
        round_ms.append((time.perf_counter() - t0) * 1e3)
    for worker in workers:
        worker.stop()
    missed = sum(s.stats.missed_chunks for s in sessions)
    chunks = sum(s.stats.chunks for s in sessions)
    warm = np.array(round_ms[len(round_ms) // 10:])  # past the first tenth (warm-up)
    return {"mode": mode, "engines": engines, "sessions": n, "missed_chunks": missed,
            "chunks": chunks, "round_ms_p50": float(np.percentile(warm, 50)),
            "round_ms_p99": float(np.percentile(warm, 99)), "block_ms": args.block_ms}


def round_split(n: int, loaded, inputs: list[np.ndarray], window: int | None,
                rounds: int = 150) -> dict:
    """The batched engine unpaced: mean ms per round of ``n`` sessions' 20 ms blocks, split
    into the batched model steps and everything else (codec batches, per-session work)."""
    rate = loaded.codec.sample_rate
    engine = Engine(loaded.model, loaded.codec, max_sessions=n, route=loaded.route.name,
                    guided=loaded.guidance != 1, weights=loaded.weights, window=window)
    sessions = [engine.open(SessionConfig(instrument=INSTRUMENTS[i % len(INSTRUMENTS)],
                                          input_sample_rate=rate, seed=i,
                                          guidance=loaded.guidance)) for i in range(n)]
    model_s = [0.0]
    step = engine.pool.step

    def timed(streams):
        began = time.perf_counter()
        out = step(streams)
        model_s[0] += time.perf_counter() - began
        return out

    engine.pool.step = timed
    block = rate // 50
    began = time.perf_counter()
    for r in range(rounds):
        engine.push({s: inputs[i][r * block : (r + 1) * block] for i, s in enumerate(sessions)})
    total = (time.perf_counter() - began) / rounds * 1e3
    model = model_s[0] / rounds * 1e3
    return {"sessions": n, "round_ms": total, "model_ms": model, "rest_ms": total - model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default-live")
    parser.add_argument("--route", default="auto",
                        help="decode-step route, one by one and (its per-row form) batched")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--block-ms", type=float, default=20.0)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--max-sessions", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--window", type=int, default=None,
                        help="KV ring in positions (default: the sessions' default)")
    parser.add_argument("--weights", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--codec-block", type=int, default=None,
                        help="codec frames per call (default: what the latency allows, "
                             "SessionConfig.codec_block)")
    parser.add_argument("--retries", type=int, default=1,
                        help="runs again a count of sessions that missed, this many times: "
                             "a shared machine's hiccup (one slow round) is not overload")
    parser.add_argument("--engines", nargs="+", type=int, default=[1],
                        help="engine processes (stemstream serve --engines): 1 runs in this "
                             "process; more, each in a child process with its share")
    parser.add_argument("--split", nargs="*", type=int, default=[1, 4, 8],
                        help="also time unpaced engine rounds of these many sessions, split "
                             "into model steps and the rest")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_stream_model(args.model, route=args.route, weights=args.weights)
    rate = loaded.codec.sample_rate
    inputs = [synthetic_music(args.seconds + 1, rate, seed=i) for i in range(args.max_sessions)]
    inputs += [synthetic_music(4.0, rate, seed=100 + i)
               for i in range(max([0, *args.split]) - len(inputs))]
    splits = [round_split(n, loaded, inputs, args.window) for n in args.split]
    for row in splits:
        print(f"engine, {row['sessions']:>2} sessions unpaced: round {row['round_ms']:6.1f} ms = "
              f"model steps {row['model_ms']:5.1f} + the rest {row['rest_ms']:5.1f} "
              f"({row['rest_ms'] / row['sessions']:.1f} per session)", flush=True)
    rows, held = [], {}
    for engines in args.engines:
        for mode in ("alone", "batched"):
            key = f"{mode}, {engines} engine{'s' if engines > 1 else ''}"
            held[key] = 0
            n = engines
            while n <= args.max_sessions:
                for attempt in range(1 + args.retries):
                    row = run(mode, n, loaded, args, inputs, engines)
                    row["attempt"] = attempt + 1
                    rows.append(row)
                    print(f"{key:>19} n={n:>2}: missed {row['missed_chunks']:>5} of "
                          f"{row['chunks']:>5} chunks, round p50 {row['round_ms_p50']:6.1f} "
                          f"ms, p99 {row['round_ms_p99']:6.1f} ms (block {args.block_ms:g} ms)"
                          + (f", attempt {attempt + 1}" if attempt else ""), flush=True)
                    if not row["missed_chunks"]:
                        break
                if row["missed_chunks"]:
                    break
                held[key] = n
                n += 1
        alone, batched = (held[f"{m}, {engines} engine{'s' if engines > 1 else ''}"]
                          for m in ("alone", "batched"))
        # a count that reached --max-sessions without a miss is a lower bound, not a capacity
        at_least = {n: (">= " if n == args.max_sessions else "") for n in (alone, batched)}
        ratio = f"{batched / max(alone, 1):.1f}x"
        if at_least[batched] and not at_least[alone]:
            ratio = ">= " + ratio
        elif at_least[alone]:
            ratio = "ratio unknown"
        print(f"sessions held with 0 misses, {engines} process{'es' if engines > 1 else ''}: "
              f"one by one ({loaded.route.name} route) {at_least[alone]}{alone}, batched "
              f"engine {at_least[batched]}{batched} ({ratio}); weights {loaded.weights}, KV "
              f"ring {args.window or 'default'}", flush=True)
        if at_least[batched]:
            print(f"  the batched engine held every count up to --max-sessions "
                  f"{args.max_sessions}: raise it to measure its capacity", flush=True)
    if args.json:
        print(json.dumps({"model": loaded.source, "route": loaded.route.name, "rows": rows,
                          "held": held, "splits": splits, "guidance": loaded.guidance,
                          "weights": loaded.weights, "window": args.window},
                         indent=1))


if __name__ == "__main__":
    main()
