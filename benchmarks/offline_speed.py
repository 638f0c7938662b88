"""Whole-window generation time of every model family, against the streaming default.

The offline baselines cannot stream, so `stemstream bench` (a real-time session) does not
apply to them; what a user wants to know is how long one window takes. This script times
:func:`stemstream.stream.offline.generate_codes` (tokens only: the codec is the same for every
family) on ``--seconds`` of random input latents, batch 1, top-k 200 sampling, after one
untimed warm-up window, and prints seconds per window, the real-time factor (seconds /
audio seconds) and the ratio to the shipped streaming model (``default``, ``k = 1``,
``t_f = 0``) measured in the same run.

StemGen runs its own schedule, or each ``--stemgen-steps`` given (iterations per level;
A.5's is 128,64,32,32; classifier-free guidance doubles the batch).

    python benchmarks/offline_speed.py --model prefix=CKPT --model stemgen=CKPT \\
        [--stemgen-steps 16,8,4,4] [--stemgen-steps 128,64,32,32] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from stemstream.model.sampling import SamplingConfig
from stemstream.model.stemgen import StemGenModel
from stemstream.stream.models import load_stream_model
from stemstream.stream.offline import generate_codes
from stemstream.train.loop import load_model


def time_window(model: torch.nn.Module, frames: int, seed: int = 0) -> float:
    """Seconds to generate ``frames`` frames for random input latents (second of two runs)."""
    dim = model.config.input_dim
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, dim, frames, generator=gen)
    inst = torch.tensor([0])
    seconds = []
    for _ in range(2):
        began = time.perf_counter()
        with torch.inference_mode():
            generate_codes(model, latents, inst, SamplingConfig(1.0, 200),
                           torch.Generator().manual_seed(seed), num_frames=frames)
        seconds.append(time.perf_counter() - began)
    return seconds[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CKPT")
    parser.add_argument("--stemgen-steps", action="append", default=[], metavar="N,N,N,N")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    baseline = load_stream_model("default", None)
    frames = round(args.seconds * baseline.codec.frame_rate)
    rows = [("default (streaming, k=1, t_f=0)", time_window(baseline.model, frames))]
    for item in args.model:
        name, _, path = item.partition("=")
        model = load_model(path).model
        if not isinstance(model, StemGenModel) or not args.stemgen_steps:
            rows.append((name, time_window(model, frames)))
            continue
        for steps in args.stemgen_steps:
            model.use_steps([int(s) for s in steps.split(",")])
            rows.append((f"{name} (steps {steps})", time_window(model, frames)))

    base = rows[0][1]
    result = [{"model": name, "seconds_per_window": s, "rtf": s / args.seconds,
               "vs_default": s / base} for name, s in rows]
    if args.json:
        print(json.dumps({"seconds": args.seconds, "threads": args.threads, "rows": result}))
        return
    print(f"{args.seconds:g} s windows, batch 1, {args.threads} thread(s), tokens only")
    print(f"{'model':40s} {'s/window':>9s} {'RTF':>7s} {'x default':>10s}")
    for row in result:
        print(f"{row['model']:40s} {row['seconds_per_window']:9.2f} {row['rtf']:7.3f} "
              f"{row['vs_default']:10.2f}")


if __name__ == "__main__":
    main()
