"""Listening-study statistics on synthetic preferences with a planted order."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from stemstream.errors import ConfigError
from stemstream.eval.listening import Judgement, analyse, read_judgements, write_study

SYSTEMS = ["truth", "stemgen", "prefix", "tf_pos", "tf_zero", "tf_neg", "random"]


def planted(raters: int = 24, per_pair: int = 3, seed: int = 0) -> list[Judgement]:
    """System i beats system j with probability sigmoid(2.5 * (quality_i - quality_j))."""
    quality = {"truth": 2.0, "stemgen": 1.2, "prefix": 1.1, "tf_pos": 1.0, "tf_zero": 0.9,
               "tf_neg": -1.0, "random": -1.0}
    rng = np.random.default_rng(seed)
    out = []
    for r in range(raters):
        for a, b in __import__("itertools").combinations(SYSTEMS, 2):
            for e in range(per_pair):
                p = 1 / (1 + np.exp(-2.5 * (quality[a] - quality[b])))
                first, second = (a, b) if rng.random() < 0.5 else (b, a)
                out.append(Judgement(f"r{r}", f"ex{e}", first, second,
                                     a if rng.random() < p else b))
    return out


def test_planted_order_is_recovered_with_bonferroni():
    result = analyse(planted())
    assert result.systems[0] == "truth" and set(result.systems[-2:]) == {"tf_neg", "random"}
    assert len(result.pair_p) == 21 and result.threshold == pytest.approx(0.05 / 21)
    assert result.kruskal_p < 1e-6
    assert result.significant("truth", "random") and result.significant("tf_zero", "tf_neg")
    assert not result.significant("tf_neg", "random")  # planted equal
    assert not result.significant("prefix", "tf_pos")  # planted nearly equal


def test_bonferroni_is_applied(monkeypatch):
    result = analyse(planted(raters=6, per_pair=1, seed=3))
    pair = next(iter(result.pair_p))
    result.pair_p[pair] = 0.01  # < alpha, > alpha / 21
    assert not result.significant(*pair)
    result.pair_p[pair] = 0.001
    assert result.significant(*pair)


def test_csv_round_trip_and_outputs(tmp_path):
    path = tmp_path / "prefs.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rater", "example", "system_a", "system_b", "preferred"])
        for j in planted(raters=8, per_pair=1):
            writer.writerow([j.rater, j.example, j.system_a, j.system_b, j.preferred])
    result = write_study(path, tmp_path / "out")
    md = (tmp_path / "out" / "table.md").read_text()
    assert md.count("N/A") == 7 and "Kruskal-Wallis" in md
    assert "\\begin{tabular}" in (tmp_path / "out" / "table.tex").read_text()
    assert (tmp_path / "out" / "preferences.png").stat().st_size > 1000
    assert len(result.raters) == 8


@pytest.mark.parametrize("body,match", [
    ("rater,example,system_a\n", "missing columns"),
    ("rater,example,system_a,system_b,preferred\nr1,e1,a,b,c\n", "neither"),
    ("rater,example,system_a,system_b,preferred\nr1,e1,a,a,a\n", "compared with itself"),
    ("rater,example,system_a,system_b,preferred\n", "no judgements"),
])
def test_malformed_csv_is_a_clear_error(tmp_path, body, match):
    (tmp_path / "p.csv").write_text(body)
    with pytest.raises(ConfigError, match=match):
        read_judgements(tmp_path / "p.csv")
