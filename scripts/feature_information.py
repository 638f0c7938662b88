"""How much the musical input features say about the target's note onsets, on a track dump:
the target-onset rate per beat-phase bin and per input-onset-strength quantile, and the
mutual information (nats) between target onsets and (phase bin x onset quartile).

    python scripts/feature_information.py [--dump dumps/synth10h-tracks] [--split validation]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from stemstream.features import feature_channels


def entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump", default="dumps/synth10h-tracks")
    parser.add_argument("--split", default="validation")
    args = parser.parse_args()
    meta = json.loads(open(f"{args.dump}/meta.json").read())
    feats = np.load(f"{args.dump}/{args.split}/input_features.npy").astype(np.float32)
    onsets = np.load(f"{args.dump}/{args.split}/onsets.npy")
    stored = meta["features"]
    sin, cos = feats[feature_channels(["beat"], stored)][:2]
    strength = feats[feature_channels(["onset"], stored)][0]
    phase_bin = np.floor((np.arctan2(sin, cos) % (2 * np.pi)) / (2 * np.pi) * 8).astype(int)
    result = {"frames": int(onsets.size), "target_onset_rate": float(onsets.mean()),
              "rate_by_phase_bin": [float(onsets[phase_bin == b].mean()) for b in range(8)]}
    edges = np.quantile(strength, [0.5, 0.9, 0.99])
    quartile = np.digitize(strength, edges)
    result["rate_by_onset_strength"] = {
        name: float(onsets[quartile == q].mean())
        for q, name in enumerate(["below p50", "p50-p90", "p90-p99", "top 1%"])}
    joint = phase_bin * 4 + quartile
    conditional = sum((joint == v).mean() * entropy(np.bincount(onsets[joint == v].astype(int),
                                                                minlength=2) / (joint == v).sum())
                      for v in np.unique(joint))
    total = entropy(np.bincount(onsets.astype(int)) / onsets.size)
    result["onset_entropy_nats"] = total
    result["mutual_information_nats"] = total - conditional
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
