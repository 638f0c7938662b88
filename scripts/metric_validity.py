"""Validity of the evaluation metrics on a corpus split (issue 7 acceptance), printed as JSON.

* COCOLA: share of windows whose real partner (disjoint submix of the same window) outscores
  a random pairing, per mode (``stemstream cocola validate``);
* beat F: a real stem against its own input mix, against the mix shifted by 250 ms (stem
  delayed), and a random pairing (another window's stem of the same length);
* FAD: FAD(X, X) and FAD(X, X + noise) for growing noise levels (codec embeddings).

    python scripts/metric_validity.py --corpus corpora/synth20h --split test --windows 64
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=200, help="COCOLA pairs")
    parser.add_argument("--tracker", default="auto")
    parser.add_argument("--cocola", default=None)
    parser.add_argument("--skip-cocola", action="store_true")
    args = parser.parse_args()

    from stemstream.beats import beat_f_measure
    from stemstream.data.dataset import WindowDataset
    from stemstream.data.windows import WindowConfig
    from stemstream.eval.fad import fad, get_embedder

    began = time.perf_counter()
    out: dict = {"corpus": args.corpus, "split": args.split}
    if not args.skip_cocola:
        from stemstream.eval.cocola import load_cocola
        from stemstream.eval.cocola_train import validate

        out["cocola_pair_accuracy"] = validate(load_cocola(args.cocola), args.corpus,
                                               args.split, args.pairs)
    dataset = WindowDataset(args.corpus, args.split, WindowConfig(window_seconds=10.0))
    rate = dataset.sample_rate
    index = np.unique(np.linspace(0, len(dataset) - 1, args.windows).round().astype(int))
    rng = np.random.default_rng(0)
    real, shifted, random_pair, stems = [], [], [], []
    shift = int(0.25 * rate)
    for i in index:
        example = dataset[int(i)]
        stem = example.target_audio[0].numpy()
        mix = example.input_audio[0].numpy()[: len(stem)]
        other = dataset[int(rng.choice([j for j in index if j != i]))].target_audio[0].numpy()
        real.append(beat_f_measure(stem, mix, rate, args.tracker))
        late = np.concatenate([np.zeros(shift, np.float32), stem[:-shift]])
        shifted.append(beat_f_measure(late, mix, rate, args.tracker))
        random_pair.append(beat_f_measure(other[: len(stem)], mix, rate, args.tracker))
        stems.append(stem)
    out["beat_f"] = {"real": float(np.mean(real)), "shifted_250ms": float(np.mean(shifted)),
                     "random_pairing": float(np.mean(random_pair)),
                     "real_above_shifted": float(np.mean(np.array(real) > np.array(shifted))),
                     "windows": len(real)}
    embedder = get_embedder("codec")
    clean = np.concatenate([embedder.embed(s, rate) for s in stems])
    noise_fad = {}
    for level in (0.0, 0.01, 0.03, 0.1, 0.3):
        noisy = np.concatenate([
            embedder.embed(s + level * rng.standard_normal(len(s)).astype(np.float32), rate)
            for s in stems])
        noise_fad[str(level)] = fad(clean, noisy)
    out["fad_codec_vs_noise"] = noise_fad
    out["seconds"] = time.perf_counter() - began
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
