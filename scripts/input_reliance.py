"""How much a streaming model uses its input: validation loss with the true input stream
against the same windows with the input of a window half the split away (another track:
neighbouring windows of a dump often come from the same track, same key and tempo).

    python scripts/input_reliance.py [--model default|CKPT] [--dump DIR] [--batches 16]

A model that accompanies its input has a clearly lower loss with the true input; equal losses
mean it ignores the input (it can still make plausible music, but not coherent music).

``--edges`` also splits the loss by decoding step (e.g. ``0,25,100,600``: steps 0-24,
25-99, 100-599). Under teacher forcing the stem's own past tells the model its tempo and key
once a few bars are decoded, so a model can lean on the input early in a window and hardly
later; at generation time it has no true past to lean on.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from stemstream.data.tokens import TokenDataset, collate
from stemstream.stream.models import load_stream_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dump", default="dumps/synth20h-cpu16k")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--edges", default="", help="decoding-step edges, e.g. 0,25,100,600")
    args = parser.parse_args()
    edges = [int(e) for e in args.edges.split(",") if e.strip()]
    torch.manual_seed(0)
    loaded = load_stream_model(args.model)
    model, codec = loaded.model.eval(), loaded.codec
    k = model.config.num_codebooks
    data = TokenDataset(args.dump, args.split, k)
    sums = {"true input": 0.0, "another window's input": 0.0}
    segments = {name: torch.zeros(max(len(edges) - 1, 0), 2, dtype=torch.float64)
                for name in sums}  # [segment, (loss sum, tokens)]
    count = 0
    with torch.inference_mode():
        for b in range(args.batches):
            rows = range(b * args.batch_size, min(len(data), (b + 1) * args.batch_size))
            if len(rows) < 2:
                break
            batch = collate([data[i] for i in rows])
            other = collate([data[(i + len(data) // 2) % len(data)] for i in rows])
            latents = codec.embed(batch.input_codes).float()
            variants = {"true input": latents,
                        "another window's input": codec.embed(other.input_codes).float()}
            for name, lat in variants.items():
                out = model(lat, batch.target_codes, batch.inst_class)
                sums[name] += float(out.loss) * len(rows)
                if len(edges) > 1:
                    _add_segments(segments[name], out, edges, model.delay.pad_id)
            count += len(rows)
    result = {name: total / count for name, total in sums.items()} | {
        "windows": count, "model": loaded.source}
    if len(edges) > 1:
        result["by_step"] = {
            f"{lo}-{hi - 1}": {name: float(seg[i, 0] / seg[i, 1].clamp_min(1))
                               for name, seg in segments.items()}
            for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))
        }
    print(json.dumps(result, indent=1))


def _add_segments(acc: torch.Tensor, out, edges: list[int], pad_id: int) -> None:
    """Add per-token cross-entropy sums and counts of each step segment to ``acc``."""
    logits, targets = out.logits, out.targets.transpose(1, 2)  # [B, L', K, V], [B, L', K]
    loss = F.cross_entropy(logits.flatten(0, 2).float(), targets.flatten(),
                           ignore_index=pad_id, reduction="none").view(targets.shape)
    valid = targets != pad_id
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        acc[i, 0] += float(loss[:, lo:hi][valid[:, lo:hi]].sum())
        acc[i, 1] += float(valid[:, lo:hi].sum())


if __name__ == "__main__":
    main()
