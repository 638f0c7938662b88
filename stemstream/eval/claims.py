"""``stemstream eval claims``: the paper's findings as paired tests on one evaluation run.

Every system of an eval run is scored on the *same* test windows, so two systems are compared
per window: the mean of the per-window differences, a paired bootstrap 95% interval of it, and
a two-sided Wilcoxon signed-rank test. A claim "A > B on metric m" then reads:

- **holds**: the interval lies above 0 and the Bonferroni-adjusted p-value is below alpha;
- **reversed**: the interval lies below 0 and the adjusted p-value is below alpha;
- **not shown**: anything else (the data cannot tell the two apart).

The claims are derived from the systems the run holds (``run.json``: family, ``t_f``, ``k``):

1. every model with ``t_f >= 0`` beats random pairing;
2. coherence rises with ``t_f`` (same ``k``, backbone and training variant, each larger
   ``t_f`` against the next smaller, and with three or more values of ``t_f``, the largest
   against the smallest);
3. larger ``k`` hurts (same ``t_f``, backbone and variant, smaller ``k`` against larger);
4. ``t_f < 0`` is no better than random pairing (:data:`NO_BETTER`), a claim that A does
   *not* beat B. Its verdicts read in the claim's direction: **refuted** when A beats B as
   above, **consistent** otherwise (the data show no gain; absence of a difference is not
   proof of none).

Only per-window metrics take part (COCOLA, beat F); FAD is a set statistic with no per-window
value, so it is reported by ``eval run`` with its own intervals and is not tested here.
Bonferroni counts every (claim, metric) test in the report.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from stemstream.errors import ConfigError
from stemstream.outputs import write_text

PAIRED_METRICS = ("cocola_harmonic", "cocola_percussive", "cocola_both", "beat_f")
NO_BETTER = "t_f < 0 is no better than random pairing"
"""The one claim that A does not beat B (the paper's finding for its ``t_f < 0`` streamers)."""


@dataclass(frozen=True)
class Comparison:
    """``better`` against ``worse`` on ``metric`` over ``n`` shared windows."""

    claim: str
    better: str
    worse: str
    metric: str
    n: int
    mean_better: float
    mean_worse: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float = float("nan")
    verdict: str = ""


def per_example(run: str | Path) -> dict[str, dict[str, dict[int, float]]]:
    """``system -> metric -> {example: value}`` from ``RUN/per_example.csv``."""
    path = Path(run) / "per_example.csv"
    if not path.is_file():
        raise ConfigError(f"{run}: no per_example.csv (run `stemstream eval run` first)")
    table: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            for metric in PAIRED_METRICS:
                value = row.get(metric, "")
                if value not in ("", "nan", None):
                    table[row["system"]][metric][int(row["example"])] = float(value)
    return table


class PairedStats(NamedTuple):
    """Paired statistics of two systems over the windows both have (field order follows
    :class:`Comparison`)."""

    n: int
    mean_better: float
    mean_worse: float
    diff: float  # mean per-window difference better - worse
    ci_low: float  # its paired bootstrap 95% interval
    ci_high: float
    p_value: float  # two-sided Wilcoxon signed-rank


def paired(better: dict[int, float], worse: dict[int, float], rng: np.random.Generator,
           draws: int = 5000) -> PairedStats:
    """:class:`PairedStats` of ``better`` against ``worse`` (``{window: value}`` each)."""
    from scipy import stats

    shared = sorted(set(better) & set(worse))
    if len(shared) < 2:
        raise ConfigError(f"need at least 2 shared windows to compare, got {len(shared)}")
    a = np.array([better[i] for i in shared])
    b = np.array([worse[i] for i in shared])
    diff = a - b
    index = rng.integers(0, len(diff), (draws, len(diff)))
    low, high = np.percentile(diff[index].mean(axis=1), [2.5, 97.5])
    p = 1.0 if np.all(diff == 0) else float(stats.wilcoxon(diff).pvalue)
    return PairedStats(len(diff), float(a.mean()), float(b.mean()), float(diff.mean()),
                       float(low), float(high), p)


def _claims(systems: dict[str, dict[str, Any]], present: set[str]) -> list[tuple[str, str, str]]:
    """``(claim, better, worse)`` for the systems a run holds (see the module docstring)."""
    streaming = {name: desc for name, desc in systems.items()
                 if name in present and desc.get("family") == "streaming"}
    claims = []
    if "random_pairing" in present:
        for name, desc in sorted(systems.items()):
            if name in present and desc.get("family") != "anchor":
                if desc.get("family") != "streaming" or desc.get("future_frames", 0) >= 0:
                    claims.append(("beats random pairing", name, "random_pairing"))
    # Models of different sizes (``backbone``; absent in older runs) or training variants
    # (``variant``, e.g. history dropout) are not compared on t_f or k.
    by_k: dict[tuple[int, Any, str], list[tuple[int, str]]] = defaultdict(list)
    by_tf: dict[tuple[int, Any, str], list[tuple[int, str]]] = defaultdict(list)
    for name, desc in streaming.items():
        kind = desc.get("backbone"), desc.get("variant", "")
        by_k[desc["chunk_frames"], *kind].append((desc["future_frames"], name))
        by_tf[desc["future_frames"], *kind].append((desc["chunk_frames"], name))
    for group in by_k.values():
        group.sort()
        claims += [("coherence rises with t_f", high, low)
                   for (tf_low, low), (tf_high, high) in zip(group, group[1:], strict=False)
                   if tf_low < tf_high]  # one model sampled two ways shares its t_f
        if len({tf for tf, _ in group}) > 2:  # three or more t_f, not three models
            claims.append(("coherence rises with t_f (largest vs smallest)", group[-1][1],
                           group[0][1]))
    for group in by_tf.values():
        group.sort()
        claims += [("larger k hurts", small, large)
                   for (k_small, small), (k_large, large) in zip(group, group[1:], strict=False)
                   if k_small < k_large]
    if "random_pairing" in present:
        claims += [(NO_BETTER, name, "random_pairing")
                   for name, desc in sorted(streaming.items()) if desc["future_frames"] < 0]
    return claims


def evaluate_claims(run: str | Path, alpha: float = 0.05, seed: int = 0
                    ) -> list[Comparison]:
    """Every claim the run's systems allow, on every paired metric (see the module docstring)."""
    info_path = Path(run) / "run.json"
    if not info_path.is_file():
        raise ConfigError(f"{run}: no run.json (not a finished eval run)")
    systems = json.loads(info_path.read_text()).get("systems", {})
    table = per_example(run)
    rng = np.random.default_rng(seed)
    out = []
    for claim, better, worse in _claims(systems, set(table)):
        for metric in PAIRED_METRICS:
            if metric in table[better] and metric in table[worse]:
                stats_ = paired(table[better][metric], table[worse][metric], rng)
                out.append(Comparison(claim, better, worse, metric, *stats_))
    tests = len(out)
    return [_judge(c, alpha, tests) for c in out]


def _judge(c: Comparison, alpha: float, tests: int) -> Comparison:
    adjusted = min(1.0, c.p_value * tests)
    if adjusted < alpha and c.ci_low > 0:
        verdict = "holds"
    elif adjusted < alpha and c.ci_high < 0:
        verdict = "reversed"
    else:
        verdict = "not shown"
    if c.claim == NO_BETTER:
        verdict = "refuted" if verdict == "holds" else "consistent"
    values = asdict(c) | {"p_adjusted": adjusted, "verdict": verdict}
    return Comparison(**values)


def claims_markdown(comparisons: list[Comparison], alpha: float = 0.05) -> str:
    """A markdown table of :func:`evaluate_claims` results."""
    return _table(
        f"Paired over the same test windows: mean difference (better - worse) with a paired "
        f"bootstrap 95% interval, two-sided Wilcoxon signed-rank p, Bonferroni-adjusted over "
        f"{len(comparisons)} tests (alpha {alpha}).",
        ["claim", *_COLUMNS, "p (adj.)", "verdict"],
        [f"| {c.claim} {_cells(c)} | {c.p_adjusted:.2g} | {c.verdict} |" for c in comparisons])


_COLUMNS = ["A", "B", "metric", "n", "mean A", "mean B", "A - B [95% CI]"]


def _cells(c: Comparison) -> str:
    """The :data:`_COLUMNS` cells of a row, ``| A | B | ... | A - B [95% CI]``."""
    return (f"| {c.better} | {c.worse} | {c.metric} | {c.n} | {c.mean_better:.3f} "
            f"| {c.mean_worse:.3f} | {c.diff:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}]")


def _table(intro: str, columns: list[str], rows: list[str]) -> str:
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "---|" * len(columns)
    return "\n".join([intro, "", header, rule, *rows]) + "\n"


def write_claims(run: str | Path, out: str | Path | None = None, alpha: float = 0.05
                 ) -> tuple[Path, Path]:
    """Write ``claims.md`` and ``claims.json`` (into ``out``, default the run directory)."""
    comparisons = evaluate_claims(run, alpha)
    if not comparisons:
        raise ConfigError(f"{run}: no claim to test (the run needs a model and random pairing)")
    folder = Path(out) if out is not None else Path(run)
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / "claims.md", folder / "claims.json"
    write_text(md, claims_markdown(comparisons, alpha))
    write_text(js, json.dumps([asdict(c) for c in comparisons], indent=1))
    return md, js


def compare(run: str | Path, pairs: list[tuple[str, str]], seed: int = 0) -> list[Comparison]:
    """Any systems of one run against each other (``pairs`` of ``(A, B)``), on every
    per-window metric: A - B with its paired interval and Wilcoxon p, **uncorrected** (the
    caller chose the pairs; say how many were tested). For comparisons the paper's claims do
    not cover: two guidance weights of one model, a model against its predecessor."""
    table = per_example(run)
    rng = np.random.default_rng(seed)
    out = []
    for a, b in pairs:
        for name in (a, b):
            if name not in table:
                raise ConfigError(f"{run}: no system {name!r} (it has {', '.join(sorted(table))})")
        for metric in PAIRED_METRICS:
            if metric in table[a] and metric in table[b]:
                stats_ = paired(table[a][metric], table[b][metric], rng)
                out.append(Comparison(f"{a} vs {b}", a, b, metric, *stats_,
                                      p_adjusted=stats_.p_value))
    return out


def compare_markdown(comparisons: list[Comparison]) -> str:
    """A markdown table of :func:`compare` results."""
    return _table(
        "Paired over the same test windows: mean per-window difference A - B with a paired "
        f"bootstrap 95% interval and a two-sided Wilcoxon signed-rank p, uncorrected "
        f"({len(comparisons)} tests).",
        [*_COLUMNS, "p"], [f"{_cells(c)} | {c.p_value:.2g} |" for c in comparisons])
