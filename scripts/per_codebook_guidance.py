"""Experiment (issue 16): input guidance with one weight per codebook, before the sampler
takes one.

Guided sampling draws from ``u + w (c - u)`` with a single ``w``. The reliance table per
codebook (docs/results.md, Update 10) suggests a larger ``w`` on codebook 0 alone: it carries
the notes and their timing, while guidance on the finer codebooks turns codec detail into
noise. This script replaces the streaming decoder's guided combine (the sampler's, the
batched engine's and the reliance measure's) with ``u + W_q (c - u)`` for the weights in
``Q_GUIDANCE`` (comma-separated, one per codebook). It applies wherever a run asks for any
guidance other than 1. Then it runs a stemstream CLI command, or a script from ``scripts/``,
with the remaining arguments:

    Q_GUIDANCE=6,2,2,2 python scripts/per_codebook_guidance.py accompany IN.flac \\
        --instrument Bass --model default --guidance 2 -o stem.wav --picture stem.png
    Q_GUIDANCE=6,2,2,2 python scripts/per_codebook_guidance.py scripts/input_reliance.py \\
        --model models/streaming-listen-more/model.safetensors --dump dumps/synth10h-tracks \\
        --batches 12 --guidance 2
"""

from __future__ import annotations

import os
import runpy
import sys

import torch

from stemstream.model import batched, streaming
from stemstream.model.sampling import guided_logits
from stemstream.train import reliance

WEIGHTS = [float(w) for w in os.environ.get("Q_GUIDANCE", "").split(",") if w.strip()]


def per_codebook(conditional: torch.Tensor, unconditional: torch.Tensor,
                 guidance: float) -> torch.Tensor:
    """The weights of ``Q_GUIDANCE`` wherever a run asks for guidance other than 1."""
    return guided_logits(conditional, unconditional, WEIGHTS if guidance != 1 else 1.0)


def main() -> None:
    if not WEIGHTS:
        raise SystemExit("set Q_GUIDANCE, e.g. Q_GUIDANCE=6,2,2,2")
    for module in (streaming, batched, reliance):
        module.guided_logits = per_codebook
    args = sys.argv[1:]
    if args and args[0].endswith(".py"):
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")
        return
    from stemstream.cli import main as cli

    sys.argv = ["stemstream", *args]
    cli()


if __name__ == "__main__":
    main()
