"""Listening-study statistics (appendix A.6): pairwise preferences -> Kruskal-Wallis H test ->
pairwise Wilcoxon signed-rank tests with Bonferroni correction -> the appendix Table 1.

Input: a CSV with one row per judgement and the columns ``rater, example, system_a,
system_b, preferred`` (``preferred`` is the name of the system the rater chose). Each
system's score per rater is its win rate over the pairs it appeared in; the H test compares
the systems' distributions of per-rater win rates, and each pair of systems is compared with
a Wilcoxon signed-rank test on those rates paired by rater, significant when
``p < alpha / (number of pairs)`` (``0.05 / 21`` for 7 systems, as in the paper).

A.6 does not say what the unit of the tests is; it reports 24 participants, so the default
unit is the rater (``by="rater"``). ``by="example"`` pools all raters' judgements of one
input instead (useful when each rater heard few pairs).
"""

from __future__ import annotations

import csv
import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stemstream.errors import ConfigError
from stemstream.outputs import open_atomic, write_text

COLUMNS = ("rater", "example", "system_a", "system_b", "preferred")
UNITS = ("rater", "example")


@dataclass(frozen=True)
class Judgement:
    rater: str
    example: str
    system_a: str
    system_b: str
    preferred: str


@dataclass
class StudyResult:
    """Systems ranked by mean win rate, per-unit win rates, H test and pairwise tests.

    ``pair_p`` holds the uncorrected Wilcoxon p-value of every unordered pair of systems;
    :meth:`significant` applies the Bonferroni threshold ``alpha / len(pair_p)``.
    """

    systems: list[str]
    raters: list[str]  # the units of analysis: raters, or examples when unit == "example"
    win_rates: np.ndarray  # [units, systems], NaN where a unit never heard a system
    kruskal_h: float
    kruskal_p: float
    pair_p: dict[tuple[str, str], float]
    alpha: float
    unit: str = "rater"

    @property
    def threshold(self) -> float:
        return self.alpha / max(1, len(self.pair_p))

    def significant(self, a: str, b: str) -> bool:
        key = (a, b) if (a, b) in self.pair_p else (b, a)
        return self.pair_p[key] < self.threshold

    def mean_win_rates(self) -> dict[str, float]:
        return {s: float(np.nanmean(self.win_rates[:, i])) for i, s in enumerate(self.systems)}

    def table_markdown(self) -> str:
        head = "| | " + " | ".join(self.systems) + " |"
        lines = [head, "|---" * (len(self.systems) + 1) + "|"]
        for a in self.systems:
            cells = ["N/A" if a == b else ("*" if self.significant(a, b) else "!")
                     for b in self.systems]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"`*` significant (p < {self.alpha:g}/{len(self.pair_p)} = "
                     f"{self.threshold:.2e}), `!` not significant. Kruskal-Wallis H = "
                     f"{self.kruskal_h:.2f}, p = {self.kruskal_p:.2e}.")
        return "\n".join(lines) + "\n"

    def table_latex(self) -> str:
        cols = "l" + "c" * len(self.systems)
        rows = [f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
                " & " + " & ".join(_tex(s) for s in self.systems) + " \\\\", "\\midrule"]
        for a in self.systems:
            cells = ["N/A" if a == b else ("*" if self.significant(a, b) else "!")
                     for b in self.systems]
            rows.append(_tex(a) + " & " + " & ".join(cells) + " \\\\")
        rows += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(rows) + "\n"


def _tex(text: str) -> str:
    return text.replace("_", "\\_").replace("&", "\\&")


def read_judgements(path: str | Path) -> list[Judgement]:
    """Parse and validate a preferences CSV (one clear :class:`ConfigError` per problem)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such preferences file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheet BOM
            rows = _parse(csv.DictReader(handle), path)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{path}: not a readable CSV ({err})") from None
    if not rows:
        raise ConfigError(f"{path}: no judgements")
    return rows


def _parse(reader: csv.DictReader, path: Path) -> list[Judgement]:
    reader.fieldnames = [f.strip().lower() for f in reader.fieldnames or []]
    missing = [c for c in COLUMNS if c not in reader.fieldnames]
    if missing:
        raise ConfigError(f"{path}: missing columns {missing}; expected {', '.join(COLUMNS)}")
    rows = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if None in row:
            raise ConfigError(f"{where}: more fields than columns")
        values = {c: (row[c] or "").strip() for c in COLUMNS}
        if not all(values.values()):
            raise ConfigError(f"{where}: empty field")
        if values["system_a"] == values["system_b"]:
            raise ConfigError(f"{where}: a system compared with itself")
        if values["preferred"] not in (values["system_a"], values["system_b"]):
            raise ConfigError(f"{where}: preferred {values['preferred']!r} is neither "
                              f"{values['system_a']!r} nor {values['system_b']!r}")
        rows.append(Judgement(**values))
    return rows


def analyse(judgements: list[Judgement], alpha: float = 0.05,
            order: list[str] | None = None, by: str = "rater") -> StudyResult:
    """Win rates, Kruskal-Wallis and Bonferroni-corrected pairwise Wilcoxon tests.

    Args:
        judgements: from :func:`read_judgements`.
        alpha: family-wise significance level (divided by the number of pairs).
        order: the systems in table order (default: by mean win rate, best first).
        by: the unit whose win rates are compared, ``rater`` (default) or ``example``.
    """
    from scipy import stats

    if by not in UNITS:
        raise ConfigError(f"unknown unit {by!r}; known: {', '.join(UNITS)}")
    wins: dict[tuple[str, str], int] = defaultdict(int)
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for j in judgements:
        unit = j.rater if by == "rater" else j.example
        for system in (j.system_a, j.system_b):
            seen[unit, system] += 1
        wins[unit, j.preferred] += 1
    raters = sorted({j.rater if by == "rater" else j.example for j in judgements})
    systems = sorted({s for j in judgements for s in (j.system_a, j.system_b)})
    if len(systems) < 2:
        raise ConfigError("a listening study needs at least two systems")
    rates = np.full((len(raters), len(systems)), np.nan)
    for r, rater in enumerate(raters):
        for s, system in enumerate(systems):
            if seen[rater, system]:
                rates[r, s] = wins[rater, system] / seen[rater, system]
    means = np.nanmean(rates, axis=0)
    ranked = [systems[i] for i in np.argsort(-means, kind="stable")]
    if order:
        unknown = sorted(set(order) ^ set(systems))
        if unknown:
            raise ConfigError(f"--order must list exactly the systems; mismatch: {unknown}")
        ranked = list(order)
    index = {s: systems.index(s) for s in ranked}
    rates = rates[:, [index[s] for s in ranked]]
    groups = [col[np.isfinite(col)] for col in rates.T]
    try:
        h, p = stats.kruskal(*[g for g in groups if g.size])
    except ValueError:  # every win rate identical: no evidence of any difference
        h, p = 0.0, 1.0
    pair_p = {}
    for i, j in itertools.combinations(range(len(ranked)), 2):
        both = np.isfinite(rates[:, i]) & np.isfinite(rates[:, j])
        diff = rates[both, i] - rates[both, j]
        if diff.size == 0 or np.all(diff == 0):
            pair_p[ranked[i], ranked[j]] = 1.0
        else:
            pair_p[ranked[i], ranked[j]] = float(stats.wilcoxon(rates[both, i],
                                                                rates[both, j]).pvalue)
    return StudyResult(ranked, raters, rates, float(h), float(p), pair_p, alpha, by)


def plot_preferences(result: StudyResult, path: str | Path) -> Path:
    """Mean win rate per system with each rater's rate as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(result.systems) + 2, 4))
    means = result.mean_win_rates()
    x = np.arange(len(result.systems))
    ax.bar(x, [means[s] for s in result.systems], color="tab:blue", alpha=0.6)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, result.win_rates.shape[0])
    for i in range(len(result.systems)):
        col = result.win_rates[:, i]
        ok = np.isfinite(col)
        ax.scatter(x[i] + jitter[ok], col[ok], s=10, color="black", zorder=3)
    ax.set_xticks(x, result.systems, rotation=30, ha="right")
    ax.set_ylabel(f"win rate (per {result.unit})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Kruskal-Wallis H = {result.kruskal_h:.1f}, p = {result.kruskal_p:.1e}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_study(prefs: str | Path, out_dir: str | Path, alpha: float = 0.05,
                order: list[str] | None = None, by: str = "rater") -> StudyResult:
    """Analyse ``prefs`` and write ``table.md``, ``table.tex``, ``win_rates.csv``,
    ``pairwise.csv`` (p-values) and ``preferences.png`` under ``out_dir``."""
    result = analyse(read_judgements(prefs), alpha, order, by)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "table.md", result.table_markdown())
    write_text(out / "table.tex", result.table_latex())
    with open_atomic(out / "win_rates.csv", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([result.unit, *result.systems])
        for rater, row in zip(result.raters, result.win_rates, strict=True):
            writer.writerow([rater, *row])
    with open_atomic(out / "pairwise.csv", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["system_a", "system_b", "p_wilcoxon", "threshold", "significant"])
        for (a, b), p in result.pair_p.items():
            writer.writerow([a, b, p, result.threshold, result.significant(a, b)])
    plot_preferences(result, out / "preferences.png")
    return result
