"""``stemstream eval plot``: the paper's figures from evaluation runs.

Each metric gets one PNG: the metric against ``t_f`` (seconds) with one line per chunk size
``k`` for the streaming systems (bootstrap 95% intervals as error bars), and a horizontal line
per anchor (ground truth, codec reconstruction, random pairing) and per offline baseline
(prefix decoder, StemGen). The numbers behind every plot are written beside it as CSV.
"""

from __future__ import annotations

import csv
import json
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stemstream.errors import ConfigError
from stemstream.outputs import open_atomic

ANCHOR_STYLE = {"ground_truth": "black", "codec_reconstruction": "tab:gray",
                "random_pairing": "tab:red"}
# streaming lines and offline baselines use disjoint colours, none of them an anchor's
LINE_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:cyan")
OFFLINE_COLORS = ("tab:pink", "tab:olive", "tab:brown")
LOWER_IS_BETTER = ("fad_",)


def collect(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per (run, system, metric): system description, value and interval."""
    rows = []
    for run in map(Path, run_dirs):
        try:
            metrics = json.loads((run / "metrics.json").read_text())
            info = json.loads((run / "run.json").read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"{run}: not a finished eval run ({err.filename} missing)") from None
        ci_path = run / "metrics_ci.json"
        ci = json.loads(ci_path.read_text()) if ci_path.exists() else {}
        systems = info.get("systems", {})
        for name, values in metrics.items():
            desc = systems.get(name, {"family": "anchor"})
            for metric, value in values.items():
                low, high = ci.get(name, {}).get(metric, [float("nan")] * 2)
                rows.append({"run": str(run), "system": name, "family": desc["family"],
                             "future_seconds": desc.get("future_seconds"),
                             "chunk_frames": desc.get("chunk_frames"),
                             "backbone": desc.get("backbone"),
                             "variant": desc.get("variant", ""), "metric": metric,
                             "value": value, "ci_low": low, "ci_high": high})
    return rows


def plot_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """Write ``<metric>.png`` and ``<metric>.csv`` for every metric found; return the PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = collect(run_dirs)
    if not rows:
        raise ConfigError("no metrics found in the given runs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in sorted({r["metric"] for r in rows}):
        selected = [r for r in rows if r["metric"] == metric]
        with open_atomic(out / f"{metric}.csv", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(selected[0]))
            writer.writeheader()
            writer.writerows(selected)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        # One line per (k, backbone size, training variant): models of different sizes or
        # variants are not joined.
        lines: dict[tuple[int, str, str], list[dict]] = defaultdict(list)
        for row in selected:
            if row["family"] == "streaming":
                lines[row["chunk_frames"], row["backbone"] or "", row["variant"]].append(row)
        sizes = {size for _, size, _ in lines}
        line_colors = iter(LINE_COLORS)
        for k, size, variant in sorted(lines):
            points = sorted(lines[k, size, variant], key=lambda r: r["future_seconds"])
            x = np.array([p["future_seconds"] for p in points])
            y = np.array([p["value"] for p in points])
            low = np.array([p["ci_low"] for p in points])
            high = np.array([p["ci_high"] for p in points])
            err = np.vstack([y - low, high - y])
            err = np.where(np.isfinite(err), err, 0.0)
            label = (f"streaming k={k}" + (f", backbone {size}" if len(sizes) > 1 else "")
                     + (f", {variant}" if variant else ""))
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=textwrap.fill(label, 70),
                        color=next(line_colors, None))
        offline_colors = iter(OFFLINE_COLORS)
        for row in selected:
            if row["family"] == "streaming":
                continue
            color = ANCHOR_STYLE.get(row["system"]) or next(offline_colors, None)
            style = ":" if row["family"] == "anchor" else "--"
            ax.axhline(row["value"], color=color, linestyle=style, lw=1.2,
                       label=f"{row['system']} ({row['family']})")
        better = "lower" if metric.startswith(LOWER_IS_BETTER) else "higher"
        ax.set_xlabel("future visibility t_f (s)")
        ax.set_ylabel(f"{metric} ({better} is better)")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        # below the axes: a variant's description is long and would cover the lines
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1,
                  frameon=False)
        path = out / f"{metric}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
