"""End-to-end streaming speed at ``k = 1``: the eager path against the compiled routes, in one
run, against the SPEC section 9 targets (issue 17).

Streams ``--seconds`` of generated music-like audio
(:func:`stemstream.stream.bench.synthetic_music`) in 20 ms blocks through a
:class:`~stemstream.stream.session.Session` (virtual clock) with the ``default`` model and the
shipped codec, once per route (``eager``: PyTorch op by op; ``compiled``: the decode step and
the codec's streaming trunks compiled with AOTInductor, :mod:`stemstream.aot`; ``onnx``: the
decode step on ONNX Runtime, the codec compiled; ``onnx-int8``: the same with int8 MatMul
weights, :mod:`stemstream.model.routes`), and prints for
each the real-time factor (wall time of the session calls / audio seconds), per-frame compute
percentiles, the codec-in / model / codec-out split and the speed-up over eager, plus:

* ``codec only``: the model replaced by a no-op that emits token 0 on every codebook (pads
  where the delay pattern needs them), so the codec in/out and session bookkeeping remain;
* ``model only``: the decoder's ``generate_chunk`` alone on random latents (no codec);
* the weights-read floor: the bytes of the decoder's and the codec's weights over the memory
  bandwidth measured in the same run (a frame reads each weight once).

    python benchmarks/stream_speed.py [--model default] [--seconds 10] [--threads 1]
        [--routes eager compiled onnx onnx-int8] [--json]
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

from stemstream.codec.compiled import accelerate_codec
from stemstream.guidance import Guidance, format_guidance, guidance_json, parse_guidance
from stemstream.model.sampling import SamplingConfig
from stemstream.model.streaming import StreamingDecoder
from stemstream.stream.bench import bench_session, stream_timing, synthetic_music
from stemstream.stream.models import load_stream_model
from stemstream.stream.report import percentiles
from stemstream.stream.session import DEFAULT_WINDOW

ROUTE_CHOICES = ("eager", "compiled", "onnx", "onnx-int8")
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


def measure_stream(model: StreamingDecoder, codec, audio: np.ndarray, seed: int,
                   codec_block: int = 1, guidance: Guidance = 1.0) -> dict[str, Any]:
    """RTF and per-frame percentiles of one stream (k = 1: a chunk is a frame);
    ``codec_block``: frames per codec call; ``guidance``: what the model samples with."""
    session = bench_session(model, codec, seed, codec_block=codec_block, guidance=guidance)
    timing = stream_timing(session, audio)
    k = model.config.chunk_frames
    frames = max(1, len(timing.chunk_s) * k)
    return {
        "rtf": timing.wall_seconds / timing.audio_seconds,
        "mean_ms_per_frame": float(timing.chunk_s.mean() * 1e3 / k),
        "frame_ms": percentiles(timing.chunk_s * 1e3 / k),
        "split_ms_per_frame": {
            "codec_in": float(timing.codec_in_s.sum() * 1e3 / frames),
            "model": float(timing.model_s.sum() * 1e3 / frames),
            "codec_out": float(timing.codec_out_s.sum() * 1e3 / frames),
        },
    }


def measure_model_only(model: StreamingDecoder, frames: int, seed: int,
                       guidance: Guidance = 1.0) -> dict[str, Any]:
    """``generate_chunk`` alone, one frame per call, on random latents (ms per frame)."""
    gen = torch.Generator().manual_seed(seed)
    horizon = max(1, model.config.future_frames)  # the last frame's chunk hears t_f ahead
    latents = torch.randn(1, model.config.input_channels, frames + horizon, generator=gen)
    # the session's KV ring: the compiled step attends over the whole ring at every step
    sampling = SamplingConfig(guidance=guidance)
    state = model.new_state(torch.tensor([0]), window=DEFAULT_WINDOW, guided=sampling.guided)
    times = []
    with torch.inference_mode():
        for _ in range(frames):
            began = time.perf_counter()
            model.generate_chunk(state, latents, sampling, gen)
            times.append(time.perf_counter() - began)
            state.forget_tokens(2)
    ms = np.array(times) * 1e3
    return {"mean_ms_per_frame": float(ms.mean()), "frame_ms": percentiles(ms)}


def weights_read_floor_ms(model: StreamingDecoder, codec, seed: int = 0) -> dict[str, float]:
    """The time one frame needs just to read every weight once from memory: the bytes the
    decoder and the codec's two streaming directions hold, at the copy bandwidth this machine
    reaches now (a 256 MiB buffer summed, best of 5)."""
    buffer = torch.ones(64 << 20)  # 256 MiB: far past any cache
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - began)
    gb_per_s = buffer.numel() * 4 / best / 1e9
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    codec_bytes = sum(p.numel() * p.element_size() for p in codec.parameters())
    return {
        "bandwidth_gb_per_s": gb_per_s,
        "model_ms": model_bytes / gb_per_s / 1e6,
        "codec_ms": codec_bytes / gb_per_s / 1e6,
        "total_ms": (model_bytes + codec_bytes) / gb_per_s / 1e6,
    }


def measure_route(args: argparse.Namespace, route: str) -> tuple[dict[str, Any], Any]:
    """Full stream, codec only and model only, with the decode step and codec on ``route``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no trained default model yet" (printed below)
        name, _, weights = route.partition("-")
        loaded = load_stream_model(args.model, args.codec, chunk_frames=1,
                                   weights=weights or "fp32", route=name)
    model, codec = loaded.model, loaded.codec
    guidance = loaded.guidance if args.guidance is None else args.guidance
    rate = codec.sample_rate
    audio = synthetic_music(args.seconds, rate, args.seed)
    warm = synthetic_music(args.warmup, rate, args.seed + 1)
    for candidate in (model, noop_model(model)):
        measure_stream(candidate, codec, warm, args.seed, guidance=guidance)
    full = measure_stream(model, codec, audio, args.seed, guidance=guidance)
    codec_only = measure_stream(noop_model(model), codec, audio, args.seed)
    model_only = measure_model_only(model, int(args.seconds * codec.frame_rate), args.seed,
                                    guidance)
    blocks = {n: measure_stream(model, codec, audio, args.seed, codec_block=n,
                                guidance=guidance)["rtf"]
              for n in args.codec_blocks if n > 1}
    result = {
        "routes": loaded.describe_routes(),
        "guidance": guidance_json(guidance),
        "rtf": full["rtf"],
        "p99_frame_ms": full["frame_ms"]["p99"],
        "full": full,
        "codec_only": codec_only,
        "model_only": model_only,
        "model_share": 1.0 - codec_only["rtf"] / full["rtf"],
        "codec_block_rtf": blocks,
    }
    accelerate_codec(codec, model.config.num_codebooks, "eager")  # the codec may be shared
    return result, loaded


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    routes = {}
    for route in args.routes:
        routes[route], loaded = measure_route(args, route)
    model, codec = loaded.model, loaded.codec
    best = min(routes, key=lambda name: routes[name]["rtf"])
    result = {
        "model": loaded.source,
        "trained": loaded.trained,
        "codec": type(codec).__name__,
        "threads": args.threads,
        "seconds": args.seconds,
        "future_frames": model.config.future_frames,
        "chunk_frames": model.config.chunk_frames,
        "guidance": routes[best]["guidance"],
        "frame_ms": 1e3 / codec.frame_rate,
        "routes": routes,
        "fastest": best,
        "floor": weights_read_floor_ms(model, codec),
        "rtf": routes[best]["rtf"],
        "p99_frame_ms": routes[best]["p99_frame_ms"],
        "target_rtf": TARGET_RTF,
        "target_p99_frame_ms": TARGET_P99_FRAME_MS,
    }
    result["meets_targets"] = (result["rtf"] <= TARGET_RTF
                               and result["p99_frame_ms"] < TARGET_P99_FRAME_MS)
    if "eager" in routes:
        result["speedup_over_eager"] = {
            name: {part: routes["eager"][part]["mean_ms_per_frame"]
                   / routes[name][part]["mean_ms_per_frame"]
                   for part in ("full", "codec_only", "model_only")}
            for name in routes
        }
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"model {result['model']} ({'trained' if result['trained'] else 'untrained'}), "
          f"codec {result['codec']}, {result['threads']} thread(s), k=1, "
          f"t_f={result['future_frames']}, input guidance "
          f"{format_guidance(parse_guidance(result['guidance']), ' / ')}, "
          f"{result['seconds']:g} s in 20 ms blocks")
    header = f"{'route / pipeline':<22}{'RTF':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
    header += f"{'in ms':>8}{'model ms':>10}{'out ms':>8}{'x eager':>9}"
    print(header)
    print("-" * len(header))
    speedups = result.get("speedup_over_eager", {})
    for route, r in result["routes"].items():
        for name in ("full", "codec_only"):
            row, p, sp = r[name], r[name]["frame_ms"], r[name]["split_ms_per_frame"]
            ratio = speedups.get(route, {}).get(name)
            print(f"{route + ' ' + name.replace('_', ' '):<22}{row['rtf']:>8.3f}{p['p50']:>9.2f}"
                  f"{p['p95']:>9.2f}{p['p99']:>9.2f}{sp['codec_in']:>8.2f}{sp['model']:>10.2f}"
                  f"{sp['codec_out']:>8.2f}" + (f"{ratio:>9.2f}" if ratio else ""))
        m, p = r["model_only"], r["model_only"]["frame_ms"]
        ratio = speedups.get(route, {}).get("model_only")
        print(f"{route + ' model only':<22}{m['mean_ms_per_frame'] / result['frame_ms']:>8.3f}"
              f"{p['p50']:>9.2f}{p['p95']:>9.2f}{p['p99']:>9.2f}{'':>26}"
              + (f"{ratio:>9.2f}" if ratio else ""))
        for n, rtf in r["codec_block_rtf"].items():
            print(f"{route + f' full, blocks of {n}':<22}{rtf:>8.3f}"
                  f"{'':>61}" + f"{r['full']['rtf'] / rtf:>9.2f}  (x frame by frame)")
        print(f"  {route}: {r['routes']}")
    floor = result["floor"]
    print(f"weights-read floor per frame at {floor['bandwidth_gb_per_s']:.1f} GB/s measured now: "
          f"model {floor['model_ms']:.2f} ms + codec {floor['codec_ms']:.2f} ms = "
          f"{floor['total_ms']:.2f} ms")
    ok = {True: "ok", False: "MISSED"}
    print(f"fastest route: {result['fastest']}")
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
    parser.add_argument("--guidance", type=parse_guidance, default=None,
                        help="input guidance to sample with, one weight or one per codebook "
                             "(6,2,2,2); default: the model's own (what it ships with)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--routes", nargs="+", default=list(ROUTE_CHOICES),
                        choices=ROUTE_CHOICES,
                        help="decode-step routes to compare (onnx-int8: int8 weights)")
    parser.add_argument("--codec-blocks", nargs="*", type=int, default=[4],
                        help="also stream with the codec on blocks of these many frames "
                             "(SessionConfig.codec_block; the default's L allows what "
                             "StreamPlan.codec_block_frames says)")
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
