"""Latency reports of a session: a JSON-safe summary and a PNG timeline of slack per chunk."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stemstream.outputs import atomic_output

if TYPE_CHECKING:
    from stemstream.stream.session import Session


def percentiles(values: list[float] | np.ndarray, qs=(50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` in the values' unit (``None`` when empty)."""
    values = np.asarray(values, dtype=np.float64)
    return {
        f"p{q}": (float(np.percentile(values, q)) if values.size else None) for q in qs
    }


def session_report(session: Session) -> dict[str, Any]:
    """Configuration, totals, time split, latency percentiles and per-chunk records."""
    cfg = session.model.config
    stats = session.stats
    records = list(session.records)  # built once from the session's record table
    frames_per_chunk = cfg.chunk_frames
    model_ms = [r.model_s * 1e3 for r in records]
    out_ms = [r.codec_out_s * 1e3 for r in records]
    chunk_ms = [(r.end - r.start) * 1e3 for r in records]
    enc_ms_per_frame = [
        (end - start) * 1e3 / frames for _, start, end, frames in session.pushes if frames
    ]
    slack = [r.slack for r in records if r.slack is not None]
    seconds_in = session.codec_samples_in / session.sample_rate
    compute = stats.codec_in_s + stats.model_s + stats.codec_out_s
    return {
        "format": "stemstream-session-report",
        "clock": "wall" if session.clock.realtime else "virtual",
        "policy": session.policy,
        "instrument": session.instrument,
        "future_frames": cfg.future_frames,
        "chunk_frames": cfg.chunk_frames,
        "num_codebooks": cfg.num_codebooks,
        "frame_seconds": session.frame_seconds,
        "latency_s": session.config.latency,
        "kv_window": session.window,
        "recency_gap_frames": session.plan.recency_gap_frames,
        "input_seconds": seconds_in,
        "compute_seconds": compute,
        "rtf": compute / seconds_in if seconds_in else None,
        "time_split_s": {
            "codec_in": stats.codec_in_s,
            "model": stats.model_s,
            "codec_out": stats.codec_out_s,
        },
        "chunks": stats.chunks,
        "missed_chunks": stats.missed_chunks,
        "missed_frames": stats.missed_frames,
        "late_samples": stats.late_samples,
        "silenced_samples": stats.silenced_samples,
        "chunk_ms": percentiles(chunk_ms),
        "model_ms_per_chunk": percentiles(model_ms),
        "codec_out_ms_per_chunk": percentiles(out_ms),
        "codec_in_ms_per_frame": percentiles(enc_ms_per_frame),
        "frame_ms": percentiles(
            [m / frames_per_chunk for m in chunk_ms]
        ),
        "slack_ms": {
            "min": (min(slack) * 1e3 if slack else None),
            **{k: (v * 1e3 if v is not None else None) for k, v in percentiles(slack).items()},
        },
        "records_kept": len(records),
        "records": [r.to_dict() for r in records],
    }


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as indented JSON."""
    path = Path(path)
    text = json.dumps(report, indent=1, default=_json_default) + "\n"
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def plot_timeline(report: dict[str, Any], path: str | Path) -> Path:
    """PNG: slack per chunk (ms) over stream time, misses in red, plus compute per chunk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in report["records"] if r["deadline"] is not None]
    path = Path(path)
    fig, (ax_slack, ax_cost) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    if records:
        t = np.array([r["deadline"] for r in records])
        slack = np.array([r["slack"] for r in records]) * 1e3
        missed = np.array([r["missed"] for r in records])
        ax_slack.plot(t, slack, lw=0.8, color="tab:blue", label="slack")
        ax_slack.scatter(t[missed], slack[missed], s=8, color="tab:red", zorder=3,
                         label=f"miss ({int(missed.sum())})")
        ax_slack.axhline(0, color="black", lw=0.6)
        model = np.array([r["model_s"] for r in records]) * 1e3
        out = np.array([r["codec_out_s"] for r in records]) * 1e3
        ax_cost.plot(t, model, lw=0.7, label="model")
        ax_cost.plot(t, out, lw=0.7, label="codec out")
        ax_cost.legend(loc="upper right", fontsize=8)
        ax_slack.legend(loc="upper right", fontsize=8)
    ax_slack.set_ylabel("slack (ms)")
    ax_cost.set_ylabel("compute per chunk (ms)")
    ax_cost.set_xlabel("deadline (s on the stream timeline)")
    ax_slack.set_title(
        f"t_f={report['future_frames']} frames, k={report['chunk_frames']}, "
        f"L={report['latency_s'] * 1e3:.0f} ms, {report['clock']} clock, "
        f"RTF {report['rtf'] or 0:.3f}, misses {report['missed_chunks']}/{report['chunks']}"
    )
    fig.tight_layout()
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
