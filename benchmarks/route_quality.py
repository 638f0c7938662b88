"""What each decode-step route costs in accuracy: validation loss of the same model streamed
step by step (teacher-forced: the true target history, the true input) on the eager path,
the compiled route, and ONNX Runtime with float32 and with int8 weights (issue 17).

Every route runs the same windows through ``generate_chunk`` with the true tokens forced, so
the logits of every step are comparable: the script prints the cross-entropy per route, its
change against eager (fp32), the largest logit difference and how often the argmax differs.

``--rings 128 256`` also streams on the eager route with KV rings of those many positions (the
attention window ``SessionConfig.window``; a batched step's attention cost grows with it,
issue 18) and prints their loss against the full context, over all steps and over the steps
after the first ``max(rings)`` (a long stream's steady state: every ring has wrapped); use
windows longer than the largest ring (``--seconds 20``).

    python benchmarks/route_quality.py [--model default] [--dump dumps/synth10h-tracks]
        [--windows 16] [--seconds 10] [--rings 128 256 512] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stemstream.data.tokens import TrackCrops, collate, read_track_meta
from stemstream.model import streaming
from stemstream.model.routes import accelerate
from stemstream.model.sampling import SamplingConfig
from stemstream.stream.models import load_stream_model
from stemstream.train.inputs import BatchInputs

ROUTES = (("eager", "fp32"), ("compiled", "fp32"), ("onnx", "fp32"), ("onnx", "int8"))


def stream_logits(model, latents: torch.Tensor, delayed: torch.Tensor, inst: torch.Tensor,
                  ring: int | None = None) -> torch.Tensor:
    """Logits ``[B, S, K, V]`` of every step of a teacher-forced stream (``k = 1``) whose KV
    cache is a ring of ``ring`` positions (default: the whole stream)."""
    seen: list[torch.Tensor] = []
    original = streaming.sample_tokens

    def recording(logits, *args, **kwargs):
        seen.append(logits.float().clone())
        return original(logits, *args, **kwargs)

    streaming.sample_tokens = recording
    try:
        state = model.new_state(inst, window=ring or delayed.shape[-1] + 1)
        with torch.inference_mode():
            for step in range(delayed.shape[-1]):
                model.generate_chunk(state, latents, SamplingConfig(temperature=0),
                                     forced=delayed[:, :, step : step + 1],
                                     input_complete=True)
    finally:
        streaming.sample_tokens = original
    return torch.stack(seen, dim=1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    loaded = load_stream_model(args.model, chunk_frames=1)
    model, codec = loaded.model.eval(), loaded.codec
    cfg = model.config
    rate = float(read_track_meta(args.dump)["frame_rate_hz"])
    data = TrackCrops(args.dump, "validation", cfg.num_codebooks, round(args.seconds * rate),
                      max(0, cfg.future_frames), seed=0)
    rows = np.linspace(0, len(data) - 1, min(args.windows, len(data))).round().astype(int)
    examples = [data[int(i)] for i in rows]
    batch = collate(examples)
    targets, inst = batch.target_codes.long(), batch.inst_class
    # what the model hears: the input codes' latents, then any input features it was
    # trained with (the dump stores them; a live model hears the beat phase)
    latents = BatchInputs(codec.embed, cfg.input_features, data.feature_names, args.dump)(
        batch, "cpu")
    delayed = model.delay.apply(targets)
    valid = (delayed != model.delay.pad_id).transpose(1, 2)  # [B, S, K]
    results: dict[str, Any] = {}
    reference = None
    chosen = [(r, w) for r, w in ROUTES
              if args.routes is None or r == "eager" or (f"{r}-{w}" if w == "int8" else r)
              in args.routes]
    for route, weights in chosen:
        info = accelerate(model, route, weights=weights)
        began = time.perf_counter()
        logits = stream_logits(model, latents, delayed, inst)
        seconds = time.perf_counter() - began
        targets_s = delayed.transpose(1, 2)  # [B, S, K]
        loss = F.cross_entropy(logits[valid], targets_s[valid])
        row = {"route": info.describe(), "loss": float(loss), "seconds": seconds}
        if reference is None:
            reference = logits
        else:
            row["loss_change"] = float(loss) - results["eager fp32"]["loss"]
            row["max_logit_diff"] = float((logits - reference)[valid].abs().max())
            row["argmax_differs"] = float(
                (logits.argmax(-1) != reference.argmax(-1))[valid].float().mean())
        results[f"{route} {weights}"] = row
    accelerate(model, "eager")
    rings = ring_losses(model, latents, delayed, inst, valid, reference, args.rings)
    return {"model": loaded.source, "windows": len(examples), "seconds": args.seconds,
            "tokens": int(valid.sum()), "routes": results, "rings": rings}


def ring_losses(model, latents, delayed, inst, valid, full_logits, rings: list[int]
                ) -> dict[str, Any]:
    """Loss of eager streams with KV rings of ``rings`` positions against the full context
    (``full_logits``), over all steps and after the first ``max(rings)`` steps."""
    if not rings:
        return {}
    steady = torch.zeros_like(valid)
    steady[:, max(rings):] = True
    targets = delayed.transpose(1, 2)

    def losses(logits):
        return {"loss": float(F.cross_entropy(logits[valid], targets[valid])),
                "loss_steady": (float(F.cross_entropy(logits[valid & steady],
                                                      targets[valid & steady]))
                                if (valid & steady).any() else float("nan"))}

    out = {"full": losses(full_logits) | {"steady_tokens": int((valid & steady).sum())}}
    for ring in sorted(rings):
        logits = stream_logits(model, latents, delayed, inst, ring)
        out[str(ring)] = losses(logits) | {"argmax_differs": float(
            (logits.argmax(-1) != full_logits.argmax(-1))[valid].float().mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dump", default="dumps/synth10h-tracks",
                        help="a whole-track dump (stemstream data dump-tracks)")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rings", type=int, nargs="*", default=[],
                        help="also stream with KV rings of these many positions (eager)")
    parser.add_argument("--routes", nargs="*", default=None,
                        help="routes to compare (default: all of eager, compiled, onnx, "
                             "onnx-int8); eager always runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    print(f"model {result['model']}: {result['windows']} validation windows of "
          f"{result['seconds']:g} s, {result['tokens']} tokens, teacher-forced streaming")
    print(f"{'route':<16}{'loss':>9}{'vs eager':>10}{'max |dlogit|':>14}{'argmax differs':>16}")
    for name, row in result["routes"].items():
        print(f"{name:<16}{row['loss']:>9.4f}{row.get('loss_change', 0.0):>+10.4f}"
              f"{row.get('max_logit_diff', 0.0):>14.4f}"
              f"{100 * row.get('argmax_differs', 0.0):>15.2f}%")
    for name, row in result["routes"].items():
        print(f"  {name}: {row['route']}")
    rings = result["rings"]
    if rings:
        full = rings["full"]
        print(f"KV ring (eager): loss over all steps / over the {full['steady_tokens']} tokens "
              "after the largest ring has wrapped")
        for name, row in rings.items():
            change = "" if name == "full" else (
                f"  ({row['loss'] - full['loss']:+.4f} / "
                f"{row['loss_steady'] - full['loss_steady']:+.4f}; argmax differs "
                f"{100 * row['argmax_differs']:.2f}%)")
            print(f"  {name:>6}: {row['loss']:.4f} / {row['loss_steady']:.4f}{change}")


if __name__ == "__main__":
    main()
