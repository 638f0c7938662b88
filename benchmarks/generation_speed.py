"""Generation speed of the streaming decoder on CPU, against the authors' implementation.

Times :class:`~stemstream.model.streaming.StreamingDecoder` (random seeded weights, random
input latents, batch 1, KV cache, top-k 200 sampling included) in two regimes:

* ``k = 1``: one delayed step per call; ``ms_per_frame`` is the median over ``--frames`` steps
  after ``--warmup`` steps (steady state: the cache already holds the warm-up positions).
* ``k = 50``: one chunk per call; ``ms_per_chunk_k50`` is the median over ``--chunks`` chunks
  after ``--warmup-chunks`` chunks, so every timed chunk includes the re-feed of the previous
  chunk's 50 positions (100 positions per chunk).

Weights are ``fp32`` or ``bf16`` (parameters cast to bfloat16, inputs and KV cache too); int8
weights run on the onnx route of the decode step (``benchmarks/stream_speed.py``).
Optionally it also times training at ``--train-preset`` size (forward + backward + AdamW on
random tensors, batch 16, 10 s = 500 frame windows) and reports tokens/s (frames x K per
second). The reference numbers are the authors' implementation at ``paper`` size, fp32,
2 threads, batch 1, measured on the project's dev machine; speed-up = reference / ours.

    python benchmarks/generation_speed.py [--preset paper] [--threads 2]
        [--weights fp32|bf16] [--frames 32] [--warmup 64] [--chunks 3]
        [--train-preset cpu | --skip-train] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from stemstream.model.sampling import SamplingConfig
from stemstream.model.streaming import (
    GenerationState,
    StreamingDecoder,
    StreamingDecoderConfig,
)
from stemstream.model.transformer import TransformerConfig

REFERENCE_MS_PER_FRAME = 46.0
REFERENCE_MS_PER_CHUNK_K50 = 3700.0
REFERENCE_NOTE = "authors' implementation, paper size, fp32, 2 threads, batch 1, this machine"
WEIGHT_MODES = ("fp32", "bf16")  # int8: the onnx route, benchmarks/stream_speed.py
CHUNK_K = 50


@dataclass
class Result:
    """One benchmark run; times in milliseconds, ratios are reference / ours."""

    preset: str
    threads: int
    weights: str
    dtype: str
    params: int
    future_frames: int
    warmup_frames: int
    timed_frames: int
    ms_per_frame: float
    ms_per_frame_mean: float
    warmup_chunks: int
    timed_chunks: int
    ms_per_chunk_k50: float
    ms_per_frame_k50: float
    reference_ms_per_frame: float
    reference_ms_per_chunk_k50: float
    speedup_k1: float
    speedup_k50: float
    reference_note: str
    train_preset: str | None = None
    train_batch: int | None = None
    train_frames: int | None = None
    train_ms_per_step: float | None = None
    train_tokens_per_s: float | None = None


def build_model(preset: str, chunk_frames: int, future_frames: int, seed: int) -> StreamingDecoder:
    """A ``StreamingDecoder`` with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    config = StreamingDecoderConfig(
        backbone=TransformerConfig.preset(preset),
        num_codebooks=4,
        codebook_size=1024,
        input_dim=128,
        future_frames=future_frames,
        chunk_frames=chunk_frames,
    )
    return StreamingDecoder(config).eval()


def convert_weights(model: StreamingDecoder, weights: str) -> tuple[nn.Module, torch.dtype]:
    """Apply the weight mode; returns the model and the dtype of its activations/KV cache."""
    if weights == "fp32":
        return model, torch.float32
    if weights == "bf16":
        # Parameters only: ``model.to(torch.bfloat16)`` would also cast the rotary table, a
        # complex64 buffer, to a real dtype (dropping the imaginary part, i.e. breaking RoPE).
        for param in model.parameters():
            param.data = param.data.to(torch.bfloat16)
        return model, torch.bfloat16
    raise ValueError(f"unknown weight mode {weights!r}")


def new_state(
    model: StreamingDecoder, inst: torch.Tensor, max_steps: int, dtype: torch.dtype
) -> GenerationState:
    """``model.new_state`` with the caches in the activations' dtype."""
    caches = model.backbone.make_caches(
        inst.shape[0], 2 * max_steps, device=torch.device("cpu"), dtype=dtype
    )
    return GenerationState(inst, caches, [], 0, 0)


def time_calls(fn: Callable[[], object], warmup: int, timed: int) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``timed`` times; seconds per timed call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def time_generation(
    model: StreamingDecoder, dtype: torch.dtype, warmup: int, timed: int, seed: int
) -> list[float]:
    """Seconds per ``generate_chunk`` call over one stream of ``warmup + timed`` calls."""
    k = model.config.chunk_frames
    steps = (warmup + timed) * k
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, model.config.input_dim, steps + model.config.future_frames + 1,
                          generator=gen).to(dtype)
    inst = torch.zeros(1, dtype=torch.long)
    state = new_state(model, inst, steps, dtype)
    sampling = SamplingConfig(temperature=1.0, top_k=200)
    return time_calls(lambda: model.generate_chunk(state, latents, sampling, gen), warmup, timed)


def time_training(preset: str, batch: int, frames: int, steps: int, seed: int) -> float:
    """Seconds per forward + backward + AdamW step at ``preset`` size (median of ``steps``)."""
    model = build_model(preset, 1, 0, seed).train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, model.config.input_dim, frames, generator=gen)
    codes = torch.randint(0, model.config.codebook_size, (batch, model.config.num_codebooks,
                                                          frames), generator=gen)
    inst = torch.randint(0, model.config.num_classes, (batch,), generator=gen)

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        model(latents, codes, inst).loss.backward()
        optim.step()

    return statistics.median(time_calls(step, 1, steps))


def run(args: argparse.Namespace, weights: str) -> Result:
    """Measure one weight mode (and training, unless skipped)."""
    torch.set_num_threads(args.threads)
    params = 0
    with torch.inference_mode():
        model1 = build_model(args.preset, 1, args.future_frames, args.seed)
        params = sum(p.numel() for p in model1.parameters())
        model1, dtype = convert_weights(model1, weights)
        k1 = time_generation(model1, dtype, args.warmup, args.frames, args.seed)
        del model1
        model50 = build_model(args.preset, CHUNK_K, args.future_frames, args.seed)
        model50, _ = convert_weights(model50, weights)
        k50 = time_generation(model50, dtype, args.warmup_chunks, args.chunks, args.seed)
        del model50
    ms_frame = 1000 * statistics.median(k1)
    ms_chunk = 1000 * statistics.median(k50)
    result = Result(
        preset=args.preset,
        threads=args.threads,
        weights=weights,
        dtype=str(dtype).removeprefix("torch."),
        params=params,
        future_frames=args.future_frames,
        warmup_frames=args.warmup,
        timed_frames=args.frames,
        ms_per_frame=ms_frame,
        ms_per_frame_mean=1000 * statistics.fmean(k1),
        warmup_chunks=args.warmup_chunks,
        timed_chunks=args.chunks,
        ms_per_chunk_k50=ms_chunk,
        ms_per_frame_k50=ms_chunk / CHUNK_K,
        reference_ms_per_frame=REFERENCE_MS_PER_FRAME,
        reference_ms_per_chunk_k50=REFERENCE_MS_PER_CHUNK_K50,
        speedup_k1=REFERENCE_MS_PER_FRAME / ms_frame,
        speedup_k50=REFERENCE_MS_PER_CHUNK_K50 / ms_chunk,
        reference_note=REFERENCE_NOTE,
    )
    if not args.skip_train:
        seconds = time_training(args.train_preset, args.train_batch, args.train_frames,
                                args.train_steps, args.seed)
        result.train_preset = args.train_preset
        result.train_batch = args.train_batch
        result.train_frames = args.train_frames
        result.train_ms_per_step = 1000 * seconds
        result.train_tokens_per_s = args.train_batch * args.train_frames * 4 / seconds
    return result


def print_table(results: list[Result]) -> None:
    """Readable summary of one or more runs."""
    first = results[0]
    print(f"preset {first.preset}, {first.params / 1e6:.1f}M params, {first.threads} threads, "
          f"batch 1, t_f = {first.future_frames}")
    print(f"reference: {REFERENCE_MS_PER_FRAME:.1f} ms/frame (k=1), "
          f"{REFERENCE_MS_PER_CHUNK_K50:.0f} ms/chunk (k=50) [{REFERENCE_NOTE}]")
    header = f"{'weights':<8}{'ms/frame k=1':>14}{'x ref':>8}{'ms/chunk k=50':>15}{'x ref':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.weights:<8}{r.ms_per_frame:>14.1f}{r.speedup_k1:>8.2f}"
              f"{r.ms_per_chunk_k50:>15.0f}{r.speedup_k50:>8.2f}")
    trained = [r for r in results if r.train_tokens_per_s is not None]
    if trained:
        r = trained[0]
        print(f"training ({r.train_preset}, batch {r.train_batch}, {r.train_frames} frames, "
              f"fp32, AdamW): {r.train_ms_per_step:.0f} ms/step, "
              f"{r.train_tokens_per_s:,.0f} tokens/s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper", help="backbone preset: tiny, cpu, paper")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default="fp32", help="fp32, bf16 or all")
    parser.add_argument("--frames", type=int, default=32, help="timed k=1 steps (>= 32)")
    parser.add_argument("--warmup", type=int, default=64, help="untimed k=1 steps first")
    parser.add_argument("--chunks", type=int, default=3, help="timed k=50 chunks")
    parser.add_argument("--warmup-chunks", type=int, default=1,
                        help="untimed k=50 chunks first (>= 1 so timed chunks re-feed)")
    parser.add_argument("--future-frames", type=int, default=0, help="t_f")
    parser.add_argument("--train-preset", default="cpu")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-frames", type=int, default=500, help="10 s at 50 Hz")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.weights not in (*WEIGHT_MODES, "all"):
        parser.error(f"--weights must be one of {', '.join(WEIGHT_MODES)} or all")
    if args.frames < 1 or args.chunks < 1 or args.warmup < 0 or args.warmup_chunks < 0:
        parser.error("--frames/--chunks must be >= 1, warm-ups >= 0")
    return args


def main() -> None:
    args = parse_args()
    modes = WEIGHT_MODES if args.weights == "all" else (args.weights,)
    results = []
    for i, mode in enumerate(modes):
        skip = args.skip_train or i > 0  # training is fp32 and independent of the mode
        results.append(run(argparse.Namespace(**{**vars(args), "skip_train": skip}), mode))
    if args.json:
        if len(results) == 1:
            print(json.dumps(asdict(results[0])))
        else:
            print(json.dumps({"runs": [asdict(r) for r in results]}))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
