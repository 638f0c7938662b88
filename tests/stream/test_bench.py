"""`stemstream bench` and :mod:`stemstream.stream.bench` on the tiny mock model (fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from stemstream.cli import cli
from stemstream.stream.bench import best_future_frames, run_bench, synthetic_music

LATENCIES = (0.0, 0.04, 0.1, 0.2, 0.5)


@pytest.fixture(scope="module")
def result() -> dict:
    return run_bench(
        "random-tiny-mock", seconds=1.5, configs=[(-5, 1), (0, 1), (2, 3)],
        latencies=LATENCIES, warmup_seconds=0.2, grid_seconds=1.2, settle_seconds=0.3,
        route="eager",  # the compiled route has its own tests (tests/model/test_decode_step.py)
    )


def test_synthetic_music_is_seeded():
    a, b = synthetic_music(1.0, 16000, seed=3), synthetic_music(1.0, 16000, seed=3)
    assert a.dtype == np.float32 and a.shape == (16000,)
    np.testing.assert_array_equal(a, b)
    assert 0.1 < np.abs(a).max() <= 0.6 + 1e-6
    assert not np.array_equal(a, synthetic_music(1.0, 16000, seed=4))


def test_run_bench_reports_documented_keys(result):
    for key in ("rtf", "rtf_compute", "p99_frame_ms", "frame_ms", "chunk_ms",
                "split_ms_per_frame", "memory", "kv_window", "feasibility", "grid",
                "best_future_frames", "future_frames", "chunk_frames"):
        assert key in result, key
    assert set(result["split_ms_per_frame"]) == {"codec_in", "model", "codec_out"}
    assert result["memory"]["peak_rss_mb"] > 0 and result["memory"]["params"] > 0
    assert result["kv_window"] == 256  # the tiny preset's context
    json.dumps(result)  # JSON-safe


def test_run_bench_values_are_sane(result):
    assert result["rtf"] > 0 and result["rtf_compute"] > 0
    assert result["rtf"] >= result["rtf_compute"] * 0.99  # wall time covers clocked work
    for key in ("frame_ms", "chunk_ms"):
        p = result[key]
        assert 0 < p["p50"] <= p["p95"] <= p["p99"]
    assert result["p99_frame_ms"] == result["frame_ms"]["p99"]
    assert all(v >= 0 for v in result["split_ms_per_frame"].values())
    assert [(r["future_frames"], r["chunk_frames"]) for r in result["grid"]] == [
        (-5, 1), (0, 1), (2, 3)
    ]


def test_feasibility_is_monotone_in_latency(result):
    for row in [*result["grid"], result["feasibility"]]:
        rates = [row["miss_rate"][f"{L:g}"] for L in LATENCIES]
        assert all(0.0 <= r <= 1.0 for r in rates)
        assert rates == sorted(rates, reverse=True)  # never more misses at a larger L
        effective = row["effective_latency_s"]
        for L, rate in zip(LATENCIES, rates, strict=True):
            assert (rate == 0.0) == (L >= effective)


def test_budget_follows_future_visibility(result):
    """At k = 1, L >= (t_f + K - 1) frames + compute: more look-ahead costs more latency."""
    rows = {(r["future_frames"], r["chunk_frames"]): r for r in result["grid"]}
    frame_s, num_k = result["frame_seconds"], result["num_codebooks"]
    for tf in (-5, 0):
        assert rows[(tf, 1)]["effective_latency_s"] >= (tf + num_k - 1) * frame_s - 1e-9
    assert rows[(0, 1)]["effective_latency_s"] > rows[(-5, 1)]["effective_latency_s"]


def test_best_future_frames_picks_largest_feasible():
    grid = [
        {"future_frames": -5, "chunk_frames": 1, "miss_rate": {"0": 0.0, "0.1": 0.0}},
        {"future_frames": 0, "chunk_frames": 1, "miss_rate": {"0": 0.5, "0.1": 0.0}},
        {"future_frames": 0, "chunk_frames": 4, "miss_rate": {"0": 1.0, "0.1": 0.2}},
    ]
    assert best_future_frames(grid, (0.0, 0.1)) == {
        "1": {"0": -5, "0.1": 0}, "4": {"0": None, "0.1": None}
    }


def test_cli_bench_json_has_rtf_and_p99():
    out = CliRunner().invoke(
        cli, ["bench", "--model", "random-tiny-mock", "--seconds", "0.5", "--no-grid", "--json",
              "--route", "eager"]
    )
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["rtf"] > 0 and result["p99_frame_ms"] > 0
    assert result["grid"] == []


def test_cli_bench_prints_tables():
    out = CliRunner().invoke(
        cli, ["bench", "--model", "random-tiny-mock", "--seconds", "0.5", "--grid-seconds", "0.6",
              "--route", "eager"]
    )
    assert out.exit_code == 0, out.output
    assert "real-time factor" in out.output and "feasibility" in out.output


def test_cli_bench_unknown_model_is_one_line_error():
    out = CliRunner().invoke(cli, ["bench", "--model", "nope.safetensors", "--no-grid"])
    assert out.exit_code == 1
    assert "error:" in out.output and "Traceback" not in out.output


@pytest.mark.parametrize("t_f", [-3, 0, 5])
def test_full_window_model_ms_runs_with_the_conv_input_encoder(t_f):
    """The steady-state probe keeps the input frames the encoder's window reaches."""
    import torch

    from stemstream.model.streaming import StreamingDecoder, StreamingDecoderConfig
    from stemstream.model.transformer import TransformerConfig
    from stemstream.stream.bench import full_window_model_ms

    torch.manual_seed(0)
    model = StreamingDecoder(StreamingDecoderConfig(
        backbone=TransformerConfig.preset("tiny"), codebook_size=32, input_dim=16,
        future_frames=t_f, input_encoder="conv")).eval()
    assert model.input_context == max(14, t_f - 1)
    result = full_window_model_ms(model, window=32, frames=8)
    assert all(v is None or v > 0 for v in result.values())
