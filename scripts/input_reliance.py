"""How much a streaming model uses its input: validation loss with the true input stream
against the same windows with the input of a window half the split away (another track:
neighbouring windows of a dump often come from the same track, same key and tempo), overall,
at target-onset frames (whole-track dumps, which know the onsets) and with the target history
hidden (:mod:`stemstream.train.reliance`; the trainer logs the same numbers on validation).

    python scripts/input_reliance.py [--model default|CKPT] [--dump DIR] [--batches 16]
                                     [--guidance W]

A model that accompanies its input has a clearly lower loss with the true input; equal losses
mean it ignores the input (it can still make plausible music, but not coherent music).
A whole-track dump (``stemstream data dump-tracks``) gives one fixed 10 s window per row,
rows spread evenly over the split (``--seconds``).

``--edges`` also splits the loss by decoding step (e.g. ``0,25,100,600``: steps 0-24,
25-99, 100-599). Under teacher forcing the stem's own past tells the model its tempo and key
once a few bars are decoded, so a model can lean on the input early in a window and hardly
later; at generation time it has no true past to lean on.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from stemstream.data.tokens import (
    TokenDataset,
    TrackCrops,
    collate,
    is_track_dump,
    read_track_meta,
)
from stemstream.errors import ConfigError
from stemstream.guidance import Guidance, guidance_json, parse_guidance
from stemstream.stream.models import load_stream_model
from stemstream.train.inputs import BatchInputs
from stemstream.train.reliance import measure_reliance


def _guidance(text: str) -> Guidance:
    try:
        return parse_guidance(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dump", default="dumps/synth20h-cpu16k")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--edges", default="", help="decoding-step edges, e.g. 0,25,100,600")
    parser.add_argument("--guidance", type=_guidance, default=1.0,
                        help="measure the logits of input-guided sampling with this weight, "
                             "or one per codebook (6,2,2,2)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="window length for a whole-track dump")
    args = parser.parse_args()
    edges = [int(e) for e in args.edges.split(",") if e.strip()]
    torch.manual_seed(0)
    loaded = load_stream_model(args.model)
    model, codec = loaded.model.eval(), loaded.codec
    k = model.config.num_codebooks
    if is_track_dump(args.dump):
        future = max(0, model.config.future_frames)
        rate = float(read_track_meta(args.dump)["frame_rate_hz"])
        data = TrackCrops(args.dump, args.split, k, round(args.seconds * rate), future, seed=0)
        count = min(len(data), args.batches * args.batch_size)
        rows = np.linspace(0, len(data) - 1, count).round().astype(int).tolist()
    else:
        data = TokenDataset(args.dump, args.split, k)
        rows = list(range(min(len(data), args.batches * args.batch_size)))
    examples = [data[i] for i in rows]
    shifted = [data[(i + len(data) // 2) % len(data)] for i in rows]
    others = [e._replace(input_codes=o.input_codes, input_features=o.input_features)
              for e, o in zip(examples, shifted, strict=True)]
    stored = data.feature_names if isinstance(data, TrackCrops) else ()
    inputs = BatchInputs(codec.embed, model.config.input_features, stored, args.dump)
    size = args.batch_size
    batches = [collate(examples[s : s + size]) for s in range(0, len(examples), size)]
    other_batches = [collate(others[s : s + size]) for s in range(0, len(others), size)]
    with torch.inference_mode():
        result = measure_reliance(model, inputs, batches, other_batches, args.guidance)
    result |= {"windows": len(examples), "model": loaded.source,
               "guidance": guidance_json(args.guidance)}
    segments = {name: torch.zeros(max(len(edges) - 1, 0), 2, dtype=torch.float64)
                for name in ("true input", "another window's input")}  # [segment, (sum, n)]
    if len(edges) > 1:
        with torch.inference_mode():
            for batch, other in zip(batches, other_batches, strict=True):
                for name, source in zip(segments, (batch, other), strict=True):
                    out = model(inputs(source, "cpu"), batch.target_codes, batch.inst_class)
                    _add_segments(segments[name], out, edges, model.delay.pad_id)
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
