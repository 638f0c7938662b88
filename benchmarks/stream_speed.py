"""End-to-end streaming speed at ``k = 1`` against the SPEC section 9 targets.

Streams ``--seconds`` of generated music-like audio
(:func:`stemstream.stream.bench.synthetic_music`) in 20 ms blocks through a
:class:`~stemstream.stream.session.Session` (virtual clock) with the ``default`` model (an
untrained ``cpu``-preset streaming decoder until a trained one ships: real timings,
meaningless audio) and the shipped codec, and prints the real-time factor (wall time of the
session calls / audio seconds) and per-frame compute percentiles next to the targets
(RTF <= 0.3, p99 per frame < 20 ms on the 2-core machine).

Baselines measured in the same run, same session, same audio:

* ``codec only``: the model replaced by a no-op that emits token 0 on every codebook (pads
  where the delay pattern needs them), so the codec in/out and session bookkeeping remain;
  ``model share`` = 1 - its RTF / the full RTF.
* ``model only``: the decoder's ``generate_chunk`` alone on random latents (no codec).

    python benchmarks/stream_speed.py [--model default] [--seconds 10] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from typing import Any

import numpy as np
import torch

from stemstream.model.sampling import SamplingConfig
from stemstream.model.streaming import StreamingDecoder
from stemstream.stream.bench import bench_session, stream_timing, synthetic_music
from stemstream.stream.models import load_stream_model
from stemstream.stream.report import percentiles

TARGET_RTF = 0.3
TARGET_P99_FRAME_MS = 20.0


def noop_model(model: StreamingDecoder) -> StreamingDecoder:
    """A view of ``model`` whose ``generate_chunk`` emits token 0 (pads where due) and
    advances the state without running the network."""
    view = copy.copy(model)
    num_k = model.config.num_codebooks

    def generate_chunk(state, input_latents, sampling=None, generator=None, forced=None,
                       input_complete=False, input_offset=0) -> torch.Tensor:
        k, start = view.config.chunk_frames, state.step
        batch = state.inst.shape[0]
        out = [view._apply_pads(torch.zeros(batch, num_k, dtype=torch.long), start + i)
               for i in range(k)]
        state.tokens.extend(out)
        state.step, state.pending = start + k, 0
        return torch.stack(out, dim=-1)

    view.generate_chunk = generate_chunk
    return view


def measure_stream(model: StreamingDecoder, codec, audio: np.ndarray, seed: int) -> dict[str, Any]:
    """RTF and per-frame percentiles of one stream (k = 1: a chunk is a frame)."""
    timing = stream_timing(bench_session(model, codec, seed), audio)
    k = model.config.chunk_frames
    frames = max(1, len(timing.chunk_s) * k)
    return {
        "rtf": timing.wall_seconds / timing.audio_seconds,
        "frame_ms": percentiles(timing.chunk_s * 1e3 / k),
        "split_ms_per_frame": {
            "codec_in": float(timing.codec_in_s.sum() * 1e3 / frames),
            "model": float(timing.model_s.sum() * 1e3 / frames),
            "codec_out": float(timing.codec_out_s.sum() * 1e3 / frames),
        },
    }


def measure_model_only(model: StreamingDecoder, frames: int, seed: int) -> dict[str, Any]:
    """``generate_chunk`` alone, one frame per call, on random latents (ms per frame)."""
    gen = torch.Generator().manual_seed(seed)
    horizon = max(1, model.config.future_frames)  # the last frame's chunk hears t_f ahead
    latents = torch.randn(1, model.config.input_dim, frames + horizon, generator=gen)
    state = model.new_state(torch.tensor([0]), window=model.config.backbone.max_seq_len)
    sampling = SamplingConfig()
    times = []
    with torch.inference_mode():
        for _ in range(frames):
            began = time.perf_counter()
            model.generate_chunk(state, latents, sampling, gen)
            times.append(time.perf_counter() - began)
            state.forget_tokens(2)
    ms = np.array(times) * 1e3
    return {"mean_ms_per_frame": float(ms.mean()), "frame_ms": percentiles(ms)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no trained default model yet" (printed below)
        loaded = load_stream_model(args.model, args.codec, chunk_frames=1, weights=args.weights)
    model, codec = loaded.model, loaded.codec
    rate = codec.sample_rate
    audio = synthetic_music(args.seconds, rate, args.seed)
    warm = synthetic_music(args.warmup, rate, args.seed + 1)
    for candidate in (model, noop_model(model)):
        measure_stream(candidate, codec, warm, args.seed)
    full = measure_stream(model, codec, audio, args.seed)
    codec_only = measure_stream(noop_model(model), codec, audio, args.seed)
    model_only = measure_model_only(model, int(args.seconds * codec.frame_rate), args.seed)
    return {
        "model": loaded.source,
        "trained": loaded.trained,
        "codec": type(codec).__name__,
        "threads": args.threads,
        "seconds": args.seconds,
        "future_frames": model.config.future_frames,
        "chunk_frames": model.config.chunk_frames,
        "frame_ms": 1e3 / codec.frame_rate,
        "rtf": full["rtf"],
        "p99_frame_ms": full["frame_ms"]["p99"],
        "target_rtf": TARGET_RTF,
        "target_p99_frame_ms": TARGET_P99_FRAME_MS,
        "meets_targets": full["rtf"] <= TARGET_RTF
        and full["frame_ms"]["p99"] < TARGET_P99_FRAME_MS,
        "full": full,
        "codec_only": codec_only,
        "model_only": model_only,
        "model_share": 1.0 - codec_only["rtf"] / full["rtf"],
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"model {result['model']} ({'trained' if result['trained'] else 'untrained'}), "
          f"codec {result['codec']}, {result['threads']} thread(s), k=1, "
          f"t_f={result['future_frames']}, {result['seconds']:g} s in 20 ms blocks")
    header = f"{'pipeline':<12}{'RTF':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
    header += f"{'in ms':>8}{'model ms':>10}{'out ms':>8}"
    print(header)
    print("-" * len(header))
    for name in ("full", "codec_only"):
        r = result[name]
        p, s = r["frame_ms"], r["split_ms_per_frame"]
        print(f"{name.replace('_', ' '):<12}{r['rtf']:>8.3f}{p['p50']:>9.2f}{p['p95']:>9.2f}"
              f"{p['p99']:>9.2f}{s['codec_in']:>8.2f}{s['model']:>10.2f}{s['codec_out']:>8.2f}")
    m = result["model_only"]
    p = m["frame_ms"]
    print(f"{'model only':<12}{m['mean_ms_per_frame'] / result['frame_ms']:>8.3f}"
          f"{p['p50']:>9.2f}{p['p95']:>9.2f}{p['p99']:>9.2f}")
    print(f"model share of the full RTF: {100 * result['model_share']:.0f}%")
    ok = {True: "ok", False: "MISSED"}
    print(f"target RTF <= {result['target_rtf']}: measured {result['rtf']:.3f} "
          f"[{ok[result['rtf'] <= result['target_rtf']]}]")
    print(f"target p99 per frame < {result['target_p99_frame_ms']:g} ms: measured "
          f"{result['p99_frame_ms']:.2f} ms "
          f"[{ok[result['p99_frame_ms'] < result['target_p99_frame_ms']]}]")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--codec", default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.seconds <= 0 or args.threads < 1:
        parser.error("--seconds must be > 0 and --threads >= 1")
    return args


def main() -> None:
    args = parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
