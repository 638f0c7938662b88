"""Train a model config for about a given number of minutes, with a schedule that completes.

A machine lent for a fixed time (a GPU lease, say) should end a run with its learning rate
decayed, not cut mid-schedule. This script measures the speed first: a short calibration run
(``--calibrate`` steps, in a scratch folder) times its steps from the trainer's own log. Then
the real run gets ``steps`` = what fits in the budget, less a share for validation and
checkpoints, and ``--time-limit`` as a safety net (it checkpoints if reached). Rerunning the
same command resumes the real run (its step count is kept in ``OUT_DIR/budget.json``).

    python scripts/train_within.py --config configs/model/gpu_listen_distill_q0w6.yaml \\
        --minutes 6.5 [--calibrate 40] [--reserve 0.12] [OVERRIDE=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def _train(config: str, overrides: list[str], *extra: str) -> None:
    command = [sys.executable, "-m", "stemstream.cli", "train", "--config", config,
               "--no-progress", *extra, *overrides]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def step_seconds(metrics: Path, skip: int) -> float:
    """Seconds per step over the logged training steps after the first ``skip`` (warm-up:
    allocation, kernel selection)."""
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    train = [(r["step"], r["time"]) for r in lines if "loss/train" in r]
    late = [(s, t) for s, t in train if s >= skip]
    if len(late) < 2:
        raise SystemExit(f"{metrics}: too few logged steps to time (need two after {skip})")
    (s0, t0), (s1, t1) = late[0], late[-1]
    return (t1 - t0) / (s1 - s0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--minutes", type=float, required=True,
                        help="wall-clock budget of the real run")
    parser.add_argument("--calibrate", type=int, default=40, help="steps of the timing run")
    parser.add_argument("--reserve", type=float, default=0.12,
                        help="share of the budget kept for validation and checkpoints")
    parser.add_argument("overrides", nargs="*", help="config overrides, as `stemstream train`")
    args = parser.parse_args()

    config = yaml.safe_load(Path(args.config).read_text())
    out_dir = Path(next((o.split("=", 1)[1] for o in args.overrides
                         if o.startswith("out_dir=")), config["out_dir"]))
    budget_file = out_dir / "budget.json"
    if budget_file.is_file():  # a rerun: resume with the step count already chosen
        budget = json.loads(budget_file.read_text())
        print(f"resuming {out_dir} towards step {budget['steps']}", flush=True)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            log_every = max(1, args.calibrate // 4)
            _train(args.config, [*args.overrides, f"out_dir={scratch}/calibrate",
                                 "steps=100000000", f"log_every={log_every}",
                                 "valid_every=100000000", "checkpoint_every=100000000"],
                   "--stop-after", str(args.calibrate))
            seconds = step_seconds(Path(scratch) / "calibrate" / "metrics.jsonl", log_every)
        steps = max(1, math.floor(args.minutes * 60 * (1 - args.reserve) / seconds))
        budget = {"steps": steps, "step_seconds": seconds, "minutes": args.minutes,
                  "calibration_steps": args.calibrate}
        out_dir.mkdir(parents=True, exist_ok=True)
        budget_file.write_text(json.dumps(budget, indent=1) + "\n")
        print(f"{seconds * 1e3:.1f} ms per step: {steps} steps fit {args.minutes:g} min",
              flush=True)
    _train(args.config, [*args.overrides, f"steps={budget['steps']}"],
           "--time-limit", f"{args.minutes * 1.05:g}")


if __name__ == "__main__":
    main()
