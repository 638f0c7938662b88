"""Time to the first output frame of a fresh process, with an empty and with a warm cache of
built steps (issue 17).

Each measurement runs in a new Python process (imports included): load the model on the
route, open a :class:`~stemstream.stream.session.Session`, push 20 ms blocks of generated
music until the first accompaniment samples come back. The first run uses an empty cache
directory (every step is built: exported and, for ``compiled``, compiled); the second and
third reuse it.

    python benchmarks/cold_start.py [--model default] [--route auto] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
began = time.perf_counter()
import numpy as np
import torch
from stemstream.stream.bench import synthetic_music
from stemstream.stream.models import load_stream_model
from stemstream.stream.session import Session, SessionConfig
torch.set_num_threads(1)
imported = time.perf_counter()
loaded = load_stream_model(sys.argv[1], route=sys.argv[2])
ready = time.perf_counter()
rate = loaded.codec.sample_rate
session = Session(loaded.model, loaded.codec, SessionConfig(instrument="Bass",
                                                            input_sample_rate=rate))
audio = synthetic_music(5.0, rate, 0)
block = rate // 50
for start in range(0, len(audio), block):
    if len(session.push(audio[start : start + block])):
        break
first = time.perf_counter()
print(json.dumps({"import_s": imported - began, "load_s": ready - imported,
                  "first_output_s": first - began, "routes": loaded.describe_routes()}))
"""


def measure(model: str, route: str, cache: str) -> dict:
    env = dict(os.environ, STEMSTREAM_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", CHILD, model, route], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--route", default="auto", choices=["auto", "eager", "compiled", "onnx"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        runs = {name: measure(args.model, args.route, cache)
                for name in ("cold", "warm", "warm again")}
    if args.json:
        print(json.dumps(runs))
        return
    print(f"model {args.model}, route {args.route}: seconds from process start")
    print(f"{'run':<12}{'imports':>9}{'load':>8}{'first output':>14}")
    for name, row in runs.items():
        print(f"{name:<12}{row['import_s']:>9.2f}{row['load_s']:>8.2f}"
              f"{row['first_output_s']:>14.2f}   {row['routes']}")


if __name__ == "__main__":
    main()
