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


def test_the_serve_load_benchmark_paces_sessions_in_every_mode():
    """Every mode `serve_load.py` compares plays all its sessions' chunks: one by one and
    batched, in this process and spread over two engine processes."""
    from stemstream.stream.models import load_stream_model

    serve_load = _benchmark("serve_load")
    loaded = load_stream_model("random-tiny-mock", route="eager")
    args = argparse.Namespace(latency=0.2, window=32, codec_block=None, seconds=0.4,
                              block_ms=20.0)
    inputs = [serve_load.synthetic_music(1.0, loaded.codec.sample_rate, seed=i)
              for i in range(3)]
    for mode in ("alone", "batched"):
        for engines in (1, 2):
            row = serve_load.run(mode, 3, loaded, args, inputs, engines)
            assert (row["mode"], row["engines"], row["sessions"]) == (mode, engines, 3)
            # every session's 20 chunks (and the delay pattern's first frames) were played
            assert row["chunks"] >= 3 * 0.4 * loaded.codec.frame_rate - 3 * 4, row
            assert 0 <= row["missed_chunks"] <= row["chunks"]
