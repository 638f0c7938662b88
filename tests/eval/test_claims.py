"""The paper's claims as paired tests on an eval run with planted effects."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats

from stemstream.errors import ConfigError
from stemstream.eval.claims import (
    PAIRED_METRICS,
    compare,
    compare_markdown,
    evaluate_claims,
    paired,
    write_claims,
)

SYSTEMS = {
    "k1_tf-50": {"family": "streaming", "future_frames": -50, "chunk_frames": 1},
    "k1_tf0": {"family": "streaming", "future_frames": 0, "chunk_frames": 1},
    "k1_tf50": {"family": "streaming", "future_frames": 50, "chunk_frames": 1},
    "k50_tf0": {"family": "streaming", "future_frames": 0, "chunk_frames": 50},
    "prefix": {"family": "prefix"},
}
# planted mean offsets over random pairing (per-window noise 0.1)
OFFSET = {"ground_truth": 0.6, "random_pairing": 0.0, "k1_tf-50": 0.0, "k1_tf0": 0.2,
          "k1_tf50": 0.4, "k50_tf0": 0.05, "prefix": 0.4}


def _run(tmp_path, offsets=OFFSET, n=64, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(0.5, 0.2, (n, len(PAIRED_METRICS)))  # window difficulty, shared
    with (tmp_path / "per_example.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["example", "system", "track", *PAIRED_METRICS])
        writer.writeheader()
        for system, offset in offsets.items():
            noise = rng.normal(0, 0.1, base.shape)
            for i in range(n):
                writer.writerow({"example": i, "system": system, "track": f"T{i}",
                                 **dict(zip(PAIRED_METRICS, base[i] + offset + noise[i],
                                            strict=True))})
    (tmp_path / "run.json").write_text(json.dumps({"systems": SYSTEMS}))
    return tmp_path


def _verdicts(comparisons):
    return {(c.claim, c.better, c.worse): {x.verdict for x in comparisons
                                           if (x.claim, x.better, x.worse)
                                           == (c.claim, c.better, c.worse)}
            for c in comparisons}


def test_planted_effects_are_recovered(tmp_path):
    comparisons = evaluate_claims(_run(tmp_path))
    verdicts = _verdicts(comparisons)
    assert verdicts[("beats random pairing", "k1_tf0", "random_pairing")] == {"holds"}
    assert verdicts[("beats random pairing", "prefix", "random_pairing")] == {"holds"}
    assert verdicts[("coherence rises with t_f", "k1_tf50", "k1_tf0")] == {"holds"}
    assert verdicts[("coherence rises with t_f", "k1_tf0", "k1_tf-50")] == {"holds"}
    assert verdicts[("coherence rises with t_f (largest vs smallest)", "k1_tf50",
                     "k1_tf-50")] == {"holds"}
    assert verdicts[("larger k hurts", "k1_tf0", "k50_tf0")] == {"holds"}
    assert verdicts[("t_f < 0 is no better than random pairing", "k1_tf-50",
                     "random_pairing")] == {"consistent"}
    # a t_f < 0 model is not expected to beat random pairing, so that claim is not made
    assert ("beats random pairing", "k1_tf-50", "random_pairing") not in verdicts
    assert len(comparisons) == len(verdicts) * len(PAIRED_METRICS)
    assert all(c.p_adjusted == min(1.0, c.p_value * len(comparisons)) for c in comparisons)


def test_a_reversed_finding_is_reported_as_reversed(tmp_path):
    offsets = OFFSET | {"k50_tf0": 0.5}  # larger k *helps* here
    verdicts = _verdicts(evaluate_claims(_run(tmp_path, offsets)))
    assert verdicts[("larger k hurts", "k1_tf0", "k50_tf0")] == {"reversed"}


def test_a_t_f_below_0_model_that_beats_random_pairing_refutes_the_paper(tmp_path):
    offsets = OFFSET | {"k1_tf-50": 0.5}  # the live streamer accompanies
    verdicts = _verdicts(evaluate_claims(_run(tmp_path, offsets)))
    assert verdicts[("t_f < 0 is no better than random pairing", "k1_tf-50",
                     "random_pairing")] == {"refuted"}


def test_two_systems_with_the_same_t_f_and_k_are_not_a_t_f_or_k_claim(tmp_path):
    """The same model sampled two ways (e.g. two guidance weights) shares its t_f and k."""
    twin = SYSTEMS | {"k1_tf0_b": SYSTEMS["k1_tf0"]}
    run = _run(tmp_path, OFFSET | {"k1_tf0_b": 0.3})
    (run / "run.json").write_text(json.dumps({"systems": twin}))
    verdicts = _verdicts(evaluate_claims(run))
    pairs = {frozenset(key[1:]) for key in verdicts if key[0] != "beats random pairing"}
    assert frozenset({"k1_tf0", "k1_tf0_b"}) not in pairs
    assert ("beats random pairing", "k1_tf0_b", "random_pairing") in verdicts


def test_three_models_with_one_t_f_make_no_t_f_claim(tmp_path):
    """Three checkpoints of one design (say, a default and two fine-tunings) share t_f and k:
    none of them is the run's "largest t_f" against its "smallest"."""
    same = {name: {"family": "streaming", "future_frames": 5, "chunk_frames": 1}
            for name in ("a", "b", "c")}
    run = _run(tmp_path, {"random_pairing": 0.0, "a": 0.2, "b": 0.3, "c": 0.1})
    (run / "run.json").write_text(json.dumps({"systems": same}))
    claims = {key[0] for key in _verdicts(evaluate_claims(run))}
    assert claims == {"beats random pairing"}


def test_bonferroni_can_turn_a_nominal_result_into_not_shown(tmp_path):
    offsets = OFFSET | {"k1_tf0": 0.025}  # a small effect over 64 windows
    comparisons = [c for c in evaluate_claims(_run(tmp_path, offsets, seed=3))
                   if c.better == "k1_tf0" and c.worse == "random_pairing"]
    nominal = [c for c in comparisons if c.p_value < 0.05]
    assert nominal, "the planted effect should be nominally significant somewhere"
    assert any(c.p_adjusted >= 0.05 and c.verdict == "not shown" for c in nominal)


def test_paired_statistics_match_direct_formulas():
    rng = np.random.default_rng(1)
    a = {i: float(v) for i, v in enumerate(rng.normal(1, 1, 40))}
    b = {i: float(v) for i, v in enumerate(rng.normal(0.5, 1, 40))}
    b[99] = 5.0  # only in one system: not paired
    got = paired(a, b, np.random.default_rng(0))
    x = np.array([a[i] for i in range(40)]) - np.array([b[i] for i in range(40)])
    assert got.n == 40 and got.diff == pytest.approx(x.mean())
    assert got.mean_better - got.mean_worse == pytest.approx(got.diff)
    assert got.p_value == pytest.approx(stats.wilcoxon(x).pvalue)
    assert got.ci_low < got.diff < got.ci_high


def test_models_of_another_size_are_not_compared_on_t_f_or_k(tmp_path):
    live = {"family": "streaming", "future_frames": -6, "chunk_frames": 1, "backbone": "3x256"}
    systems = {name: desc | {"backbone": "6x256"} if desc["family"] == "streaming" else desc
               for name, desc in SYSTEMS.items()} | {"live": live}
    run = _run(tmp_path, OFFSET | {"live": 0.1})
    (run / "run.json").write_text(json.dumps({"systems": systems}))
    verdicts = _verdicts(evaluate_claims(run))
    assert ("coherence rises with t_f", "k1_tf0", "k1_tf-50") in verdicts  # same size: chained
    assert not any("live" in key[1:] for key in verdicts if key[0] != "t_f < 0 is no better "
                   "than random pairing")
    assert ("t_f < 0 is no better than random pairing", "live", "random_pairing") in verdicts


def test_training_variants_form_their_own_t_f_chain(tmp_path):
    variant = {"variant": "history dropout 0.5"}
    systems = SYSTEMS | {"k1_tf0_hd": SYSTEMS["k1_tf0"] | variant,
                         "k1_tf50_hd": SYSTEMS["k1_tf50"] | variant}
    run = _run(tmp_path, OFFSET | {"k1_tf0_hd": 0.3, "k1_tf50_hd": 0.5})
    (run / "run.json").write_text(json.dumps({"systems": systems}))
    verdicts = _verdicts(evaluate_claims(run))
    assert ("coherence rises with t_f", "k1_tf50_hd", "k1_tf0_hd") in verdicts
    assert ("coherence rises with t_f", "k1_tf50", "k1_tf0") in verdicts
    mixed = [key for key in verdicts if key[0].startswith("coherence")
             and ("_hd" in key[1]) != ("_hd" in key[2])]
    assert not mixed


def test_write_claims_and_errors(tmp_path):
    md, js = write_claims(_run(tmp_path), tmp_path / "out")
    assert "| larger k hurts | k1_tf0 | k50_tf0 |" in md.read_text()
    assert len(json.loads(js.read_text())) > 0
    with pytest.raises(ConfigError, match="run.json"):
        evaluate_claims(tmp_path / "out")


def test_any_two_systems_compare_per_window_in_both_directions(tmp_path):
    run = _run(tmp_path)
    rows = compare(run, [("k1_tf50", "k1_tf0"), ("k1_tf0", "k1_tf50"), ("prefix", "k1_tf50")])
    assert [(c.better, c.worse) for c in rows[::len(PAIRED_METRICS)]] == [
        ("k1_tf50", "k1_tf0"), ("k1_tf0", "k1_tf50"), ("prefix", "k1_tf50")]
    forward, backward, equal = (rows[i:i + len(PAIRED_METRICS)]
                                for i in range(0, len(rows), len(PAIRED_METRICS)))
    for f, b in zip(forward, backward, strict=True):
        assert f.diff == pytest.approx(0.2, abs=0.05) and f.ci_low > 0 and f.p_value < 1e-6
        assert b.diff == pytest.approx(-f.diff) and b.ci_high < 0
        assert f.p_adjusted == f.p_value  # uncorrected: the caller picked the pairs
    assert all(c.p_value > 1e-3 for c in equal)  # the same planted offset
    table = compare_markdown(rows)
    assert "| k1_tf50 | k1_tf0 | beat_f | 64 |" in table and f"({len(rows)} tests)" in table
    with pytest.raises(ConfigError, match="no system 'nope'"):
        compare(run, [("nope", "k1_tf0")])


def test_eval_compare_command(tmp_path):
    from click.testing import CliRunner

    from stemstream.cli import cli

    run = _run(tmp_path)
    result = CliRunner().invoke(cli, ["eval", "compare", str(run), "k1_tf50:k1_tf0",
                                       "--out", str(tmp_path / "pairs.md")])
    assert result.exit_code == 0, result.output
    assert "| k1_tf50 | k1_tf0 | cocola_both |" in (tmp_path / "pairs.md").read_text()
    bad = CliRunner().invoke(cli, ["eval", "compare", str(run), "k1_tf50"])
    assert bad.exit_code != 0 and "A:B" in bad.output
