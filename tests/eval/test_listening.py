"""Listening-study statistics on synthetic preferences with a planted order."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest

from stemstream.errors import ConfigError
from stemstream.eval.listening import Judgement, analyse, read_judgements, write_study

SYSTEMS = ["truth", "stemgen", "prefix", "tf_pos", "tf_zero", "tf_neg", "random"]


QUALITY = {"truth": 2.0, "stemgen": 1.2, "prefix": 1.1, "tf_pos": 1.0, "tf_zero": 0.9,
           "tf_neg": -1.0, "random": -1.0}


def planted(raters: int = 24, per_pair: int = 3, seed: int = 0,
            quality: dict[str, float] = QUALITY) -> list[Judgement]:
    """System i beats system j with probability sigmoid(2.5 * (quality_i - quality_j))."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(raters):
        for a, b in itertools.combinations(SYSTEMS, 2):
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


def test_significant_pairs_are_the_planted_ones():
    """Planted groups {truth} > {stemgen, prefix, tf_pos, tf_zero} > {tf_neg, random}:
    exactly the pairs across groups differ."""
    groups = [{"truth"}, {"stemgen", "prefix", "tf_pos", "tf_zero"}, {"tf_neg", "random"}]
    quality = {s: 2.0 - 2.0 * i for i, g in enumerate(groups) for s in g}
    result = analyse(planted(quality=quality))
    expected = {frozenset((a, b)) for a, b in itertools.combinations(SYSTEMS, 2)
                if quality[a] != quality[b]}
    found = {frozenset(pair) for pair in result.pair_p if result.significant(*pair)}
    assert found == expected


def test_bonferroni_is_applied():
    result = analyse(planted(raters=6, per_pair=1, seed=3))
    pair = next(iter(result.pair_p))
    result.pair_p[pair] = 0.01  # < alpha, > alpha / 21
    assert not result.significant(*pair)
    result.pair_p[pair] = 0.001
    assert result.significant(*pair)
    assert analyse(planted(raters=6, per_pair=1), alpha=0.1).threshold == pytest.approx(0.1 / 21)


def test_win_rates_and_p_values_match_scipy():
    from scipy import stats

    judgements = planted(raters=10, per_pair=2, seed=5)
    result = analyse(judgements, order=SYSTEMS)
    rater, truth, rnd = "r3", SYSTEMS.index("truth"), SYSTEMS.index("random")
    mine = [j for j in judgements if j.rater == rater and "truth" in (j.system_a, j.system_b)]
    rate = sum(j.preferred == "truth" for j in mine) / len(mine)
    assert result.win_rates[result.raters.index(rater), truth] == pytest.approx(rate)
    p = stats.wilcoxon(result.win_rates[:, truth], result.win_rates[:, rnd]).pvalue
    assert result.pair_p["truth", "random"] == pytest.approx(p)
    assert result.kruskal_p == pytest.approx(stats.kruskal(*result.win_rates.T).pvalue)


def test_unit_can_be_the_example():
    result = analyse(planted(raters=4, per_pair=8), by="example")
    assert result.unit == "example" and len(result.raters) == 8
    assert result.systems[0] == "truth"
    with pytest.raises(ConfigError, match="unknown unit"):
        analyse(planted(raters=2, per_pair=1), by="song")


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
    with open(tmp_path / "out" / "pairwise.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 21


def test_csv_quirks_are_accepted(tmp_path):
    """A spreadsheet BOM, padded headers and quoted names (as the A/B page writes them)."""
    body = ("\ufeffRater , example,system_a,system_b,preferred\n"
            '"r,1",ex1,"a ""x""",b,"a ""x"""\n'
            '"r,1",ex1,b,c,c\n')
    (tmp_path / "p.csv").write_text(body, encoding="utf-8")
    rows = read_judgements(tmp_path / "p.csv")
    assert rows[0] == Judgement("r,1", "ex1", 'a "x"', "b", 'a "x"') and len(rows) == 2


@pytest.mark.parametrize("body,match", [
    ("rater,example,system_a\n", "missing columns"),
    ("rater,example,system_a,system_b,preferred\nr1,e1,a,b,c\n", "neither"),
    ("rater,example,system_a,system_b,preferred\nr1,e1,a,a,a\n", "compared with itself"),
    ("rater,example,system_a,system_b,preferred\n", "no judgements"),
    ("", "missing columns"),
    ("rater,example,system_a,system_b,preferred\nr1,e1,a,b\n", ":2: empty field"),
    ("rater,example,system_a,system_b,preferred\nr1,e1,a,b,a,x\n", "more fields"),
])
def test_malformed_csv_is_a_clear_error(tmp_path, body, match):
    (tmp_path / "p.csv").write_text(body)
    with pytest.raises(ConfigError, match=match):
        read_judgements(tmp_path / "p.csv")


def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such preferences file"):
        read_judgements(tmp_path / "none.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ConfigError, match="not a readable CSV"):
        read_judgements(tmp_path / "bin.csv")
