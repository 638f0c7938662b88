"""How much a streaming model uses its input: validation loss with the true input stream
against the same windows with the input of a window half the split away (another track:
neighbouring windows of a dump often come from the same track, same key and tempo).

    python scripts/input_reliance.py [--model default|CKPT] [--dump DIR] [--batches 16]

A model that accompanies its input has a clearly lower loss with the true input; equal losses
mean it ignores the input (it can still make plausible music, but not coherent music).
"""

from __future__ import annotations

import argparse
import json

import torch

from stemstream.data.tokens import TokenDataset, collate
from stemstream.stream.models import load_stream_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dump", default="dumps/synth20h-cpu16k")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_stream_model(args.model)
    model, codec = loaded.model.eval(), loaded.codec
    k = model.config.num_codebooks
    data = TokenDataset(args.dump, args.split, k)
    sums = {"true input": 0.0, "another window's input": 0.0}
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
            count += len(rows)
    result = {name: total / count for name, total in sums.items()} | {
        "windows": count, "model": loaded.source}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
