"""Benchmarks whose results include a correctness check run here on the tiny mock model."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path


def _benchmark(name: str):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_two_stage_pipeline_plays_exactly_the_serial_stream():
    pipeline = _benchmark("pipeline_speed")
    args = argparse.Namespace(model="random-tiny-mock", weights="fp32", seconds=2.0,
                              codec_block=2)
    result = pipeline.run(args)
    assert result["identical_audio"] is True
    assert result["samples"] > 0.5 * 2.0 * 8000 and result["rms"] > 0  # sound came out
    assert set(result["rtf"]) == {"serial", "pipelined"}
