"""`stemstream eval run`: audio for every system, anchors, resumability, metric tables, plots.

The metric functions are replaced by cheap deterministic fakes here (their own tests live in
test_cocola.py, test_beats.py and test_fad.py), so this file checks the orchestration only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stemstream.codec.dump import dump_corpus
from stemstream.codec.mock import MockCodec
from stemstream.config import load_config
from stemstream.data.windows import WindowConfig
from stemstream.errors import ConfigError
from stemstream.eval.plots import plot_runs
from stemstream.eval.run import EvalConfig, parse_systems, run_eval, run_stems
from stemstream.train import ModelTrainConfig, ModelTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from slakh_fixture import write_fake_slakh  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    corpus = write_fake_slakh(root / "slakh")
    dump_corpus(corpus, MockCodec().eval(), root / "dump",
                WindowConfig(window_seconds=1.0, future_seconds=0.1),
                splits=("train", "validation"), windows_per_track=2, progress=False)
    models = {}
    for name, overrides in {"stream_tf2": ("model.future_frames=2",),
                            "prefix": ("family=prefix",)}.items():
        config = load_config(ModelTrainConfig, TINY, [f"dump_dir={root / 'dump'}",
                                                      f"out_dir={root / name}", "steps=2",
                                                      *overrides])
        trainer = ModelTrainer(config)
        trainer.run(progress=False)
        models[name] = str(trainer.export(root / name / "model.safetensors"))
    return corpus, models


def test_run_writes_every_system_and_anchor_and_resumes(setup, fake_metrics, tmp_path):
    corpus, models = setup
    mock = MockCodec()
    config = EvalConfig(corpus=corpus, out=tmp_path / "run", systems=models, split="train",
                        num_examples=2, seconds=1.0, fad_embedding="codec",
                        look_ahead_seconds=2 * mock.hop_length / mock.sample_rate)
    result = run_eval(config, progress=False)
    names = ["ground_truth", "codec_reconstruction", "random_pairing", "stream_tf2", "prefix"]
    assert list(result["metrics"]) == names
    examples = sorted((tmp_path / "run" / "examples").iterdir())
    assert len(examples) == result["examples"] == 2
    for folder in examples:
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["random_pairing"]["track"] != meta["track"]
        length = None
        for name in names:
            stem, sr = sf.read(str(folder / f"{name}.wav"))
            mix, _ = sf.read(str(folder / f"{name}_mix.wav"))
            assert sr == MockCodec().sample_rate and len(mix) == len(stem)
            assert length in (None, len(stem))
            length = len(stem)
            assert np.abs(mix).max() <= 1.0
        assert length == sr  # 1 s windows
        inp, _ = sf.read(str(folder / "input.wav"))
        assert len(inp) == sr + 2 * MockCodec().hop_length  # t_f = 2 frames of look-ahead
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["prefix"]) == {"cocola_harmonic", "cocola_percussive", "cocola_both",
                                      "beat_f", "fad_codec"}
    assert metrics["ground_truth"]["fad_codec"] == 0.0
    assert metrics["prefix"]["cocola_percussive"] == pytest.approx(
        metrics["prefix"]["cocola_harmonic"] + 1.0)
    assert (tmp_path / "run" / "summary.md").read_text().count("\n") == 2 + len(names)
    ci = json.loads((tmp_path / "run" / "metrics_ci.json").read_text())
    low, high = ci["prefix"]["beat_f"]
    assert low <= metrics["prefix"]["beat_f"] <= high

    # Resume: nothing is regenerated or rescored, the numbers are identical.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*.wav")}
    calls = dict(fake_metrics)
    again = run_eval(config, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["metrics"] == result["metrics"]
    assert fake_metrics == calls

    # A system added later is the only one generated and scored; a stem whose audio changed
    # is scored again.
    changed = tmp_path / "run" / "examples" / "0000" / "random_pairing.wav"
    samples, rate = sf.read(str(changed), dtype="float32")
    sf.write(str(changed), samples * 0.5, rate, subtype="FLOAT")
    wider = EvalConfig(**{**config.__dict__, "systems": {**models, "again": models["prefix"]}})
    more = run_eval(wider, progress=False)
    assert fake_metrics["beat"] - calls["beat"] == 2 + 1  # 2 windows of "again" + 1 redo
    assert fake_metrics["cocola"] - calls["cocola"] == 3 * (2 + 1)
    assert more["metrics"]["prefix"] == result["metrics"]["prefix"]
    assert set(more["metrics"]["again"]) == set(more["metrics"]["prefix"])
    assert more["metrics"]["random_pairing"]["beat_f"] != result["metrics"]["random_pairing"][
        "beat_f"]

    # Another window selection in the same folder is refused, not scored against stale audio.
    moved = EvalConfig(**{**config.__dict__, "seed": 1})
    with pytest.raises(ConfigError, match="holds another window"):
        run_eval(moved, progress=False)
    # A system that needs more future input than the run keeps is refused.
    short = EvalConfig(**{**config.__dict__, "look_ahead_seconds": 0.0})
    with pytest.raises(ConfigError, match="future input"):
        run_eval(short, progress=False)

    run_info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_info["systems"]["stream_tf2"]["future_frames"] == 2
    assert run_info["beat_tracker"] == "fake"  # what `auto` resolved to
    pngs = plot_runs([tmp_path / "run"], tmp_path / "figures")
    assert {p.stem for p in pngs} == set(metrics["prefix"])
    assert all(p.stat().st_size > 1000 and p.with_suffix(".csv").exists() for p in pngs)


def test_windows_generated_in_batches_equal_windows_alone_and_resume_exactly(
        setup, fake_metrics, tmp_path):
    """``batch``: a k = 1 streaming model generates a group of windows in one batched forward
    per position; each window gets what it gets alone (its own seed), and a run resumed
    after an interruption gets the same audio."""
    corpus, models = setup
    mock = MockCodec()
    common = dict(corpus=corpus, systems={"stream": models["stream_tf2"]}, split="train",
                  num_examples=2, seconds=1.0, fad_embedding="codec",
                  look_ahead_seconds=2 * mock.hop_length / mock.sample_rate)
    alone = EvalConfig(out=tmp_path / "alone", batch=1, **common)
    grouped = EvalConfig(out=tmp_path / "grouped", batch=2, **common)
    run_eval(alone, progress=False)
    run_eval(grouped, progress=False)

    def stems(run):
        return [sf.read(str(run / "examples" / f"{n:04d}" / "stream.wav"))[0] for n in range(2)]

    first = stems(tmp_path / "grouped")
    for a, b in zip(stems(tmp_path / "alone"), first, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len({a.tobytes() for a in first}) == 2  # two windows, two different stems
    (tmp_path / "grouped" / "examples" / "0001" / "stream.wav").unlink()  # interrupted
    run_eval(grouped, progress=False)
    for a, b in zip(stems(tmp_path / "grouped"), first, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="batch must be >= 1"):
        EvalConfig(out=tmp_path / "x", batch=0, **common)


def test_bad_configs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown metrics"):
        EvalConfig(corpus=tmp_path, out=tmp_path, metrics=("bleu",))
    with pytest.raises(ConfigError, match="reserved"):
        EvalConfig(corpus=tmp_path, out=tmp_path, systems={"ground_truth": "x"})
    with pytest.raises(ConfigError, match="NAME=CHECKPOINT"):
        parse_systems(None, ["oops"])
    assert parse_systems("a.safetensors", ["b=b.safetensors"]) == {
        "model": "a.safetensors", "b": "b.safetensors"}
    with pytest.raises(ConfigError, match="not a finished eval run"):
        plot_runs([tmp_path], tmp_path / "fig")


def test_grid_trains_evaluates_and_plots(setup, fake_metrics, tmp_path):
    import yaml

    from stemstream.eval.grid import load_grid, run_grid

    corpus, _ = setup
    dump = Path(corpus).parent / "dump"
    tf0 = str(tmp_path / "grid/models/tf0/model.safetensors")  # trained first, then reused
    grid = {
        "train_config": str(TINY),
        "out_dir": str(tmp_path / "grid"),
        "models": {"tf0": [f"dump_dir={dump}", "steps=2"],
                   "tf2": [f"dump_dir={dump}", "steps=2", "model.future_frames=2"],
                   "tf0_again": {"checkpoint": f"{tf0},guidance=3"}},
        "eval": {"corpus": str(corpus), "split": "train", "num_examples": 2, "seconds": 1.0,
                 "fad_embedding": "codec"},
        "guidance": 2,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    result = run_grid(path, progress=False)
    assert set(result["eval"]["metrics"]) >= {"tf0", "tf2", "tf0_again", "ground_truth"}
    described = json.loads((tmp_path / "grid/eval/run.json").read_text())["systems"]
    assert described["tf0_again"]["checkpoint"] == grid["models"]["tf0_again"]["checkpoint"]
    # the grid's guidance for the models it trained; a checkpoint entry's own
    assert [described[n].get("guidance") for n in ("tf0", "tf2", "tf0_again")] == [2, 2, 3]
    assert all(Path(p).exists() for p in result["figures"])
    again = run_grid(path, progress=False, train=False)  # everything reused
    assert again["eval"]["metrics"] == result["eval"]["metrics"]
    path.write_text(yaml.safe_dump({**grid, "guidance": "strong"}))
    with pytest.raises(ConfigError, match="guidance must be a number"):
        load_grid(path)
    path.write_text(yaml.safe_dump({**grid, "extra": 1}))
    with pytest.raises(ConfigError, match="unknown keys"):
        load_grid(path)
    path.write_text(yaml.safe_dump({**grid, "models": {"x": {"checkpoint": "a", "steps": 2}}}))
    with pytest.raises(ConfigError, match="takes only 'checkpoint'"):
        load_grid(path)
    assert set(load_grid("configs/experiments/cpu_grid.yaml")["models"]) == {
        "k1_tf-50", "k1_tf0", "k1_tf50", "k50_tf0", "prefix", "stemgen", "k1_tf0_hd50",
        "k1_tf50_hd50", "k1_tf-50_hd50"}


def test_plots_draw_one_line_per_chunk_size_and_backbone(tmp_path, monkeypatch):
    import matplotlib.axes

    systems = {
        "a": {"family": "streaming", "future_seconds": -1, "chunk_frames": 1, "backbone": "6x256"},
        "b": {"family": "streaming", "future_seconds": 1, "chunk_frames": 1, "backbone": "6x256"},
        "live": {"family": "streaming", "future_seconds": -0.12, "chunk_frames": 1,
                 "backbone": "3x256"},
        "a_hd": {"family": "streaming", "future_seconds": -1, "chunk_frames": 1,
                 "backbone": "6x256", "variant": "history dropout 0.5"},
        "b_hd": {"family": "streaming", "future_seconds": 1, "chunk_frames": 1,
                 "backbone": "6x256", "variant": "history dropout 0.5"},
    }
    metrics = {name: {"beat_f": 0.3} for name in [*systems, "ground_truth"]}
    (tmp_path / "run.json").write_text(json.dumps({"systems": systems}))
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    drawn = []
    original = matplotlib.axes.Axes.errorbar

    def record(self, x, y, *args, **kwargs):
        drawn.append((kwargs["label"], len(x)))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", record)
    plot_runs([tmp_path], tmp_path / "fig")
    assert sorted(drawn) == [("streaming k=1, backbone 3x256", 1),
                             ("streaming k=1, backbone 6x256", 2),
                             ("streaming k=1, backbone 6x256, history dropout 0.5", 2)]


def test_a_system_name_reused_for_another_model_is_refused(setup, fake_metrics, tmp_path):
    corpus, models = setup
    mock = MockCodec()
    config = EvalConfig(corpus=corpus, out=tmp_path / "run", systems={"a": models["prefix"]},
                        split="train", num_examples=1, seconds=1.0, metrics=("beat",),
                        look_ahead_seconds=2 * mock.hop_length / mock.sample_rate)
    run_eval(config, progress=False)
    swapped = EvalConfig(**{**config.__dict__, "systems": {"a": models["stream_tf2"]}})
    with pytest.raises(ConfigError, match="'a' was generated in"):
        run_eval(swapped, progress=False)


def test_stemgen_steps_override_the_schedule_and_are_recorded(setup, tmp_path):
    from stemstream.eval.run import _load_system

    corpus, _ = setup
    dump = Path(setup[1]["prefix"]).parents[1] / "dump"
    config = load_config(ModelTrainConfig, TINY, [f"dump_dir={dump}", "family=stemgen",
                                                  f"out_dir={tmp_path / 'sg'}", "steps=1"])
    trainer = ModelTrainer(config)
    trainer.run(progress=False)
    path = str(trainer.export(tmp_path / "sg.safetensors"))
    levels = len(trainer.model_config.schedule.steps_per_level)
    steps = tuple(range(levels, 0, -1))
    system = _load_system("sg", path, None, steps)
    assert system.model.config.schedule.steps_per_level == steps
    assert system.describe()["steps_per_level"] == list(steps)
    own = _load_system("sg", path, None).describe()["steps_per_level"]
    assert own == list(trainer.model_config.schedule.steps_per_level) != list(steps)
    with pytest.raises(ConfigError, match="one entry per level"):
        _load_system("sg", path, None, (*steps, 1))
    with pytest.raises(ConfigError, match="stemgen_steps must be ints >= 1"):
        EvalConfig(corpus=corpus, out=tmp_path, stemgen_steps=(4, 0))


def test_unknown_beat_tracker_and_a_single_window_are_refused_before_generating(setup, tmp_path):
    corpus, models = setup
    config = EvalConfig(corpus=corpus, out=tmp_path / "a", systems=models, split="train",
                        num_examples=2, seconds=1.0, beat_tracker="foo")
    with pytest.raises(ConfigError, match="unknown beat tracker 'foo'"):
        run_eval(config, progress=False)
    assert not (tmp_path / "a").exists()
    config = EvalConfig(corpus=corpus, out=tmp_path / "b", systems=models, split="validation",
                        num_examples=2, seconds=1.0, look_ahead_seconds=0.1)
    with pytest.raises(ConfigError, match="random-pairing anchor needs at least two"):
        run_eval(config, progress=False)
    assert not list((tmp_path / "b").rglob("*.wav"))


def test_run_stems_lists_windows_in_order_and_the_systems_with_stems(tmp_path):
    """What the analysis scripts read from a run: window folders in order; systems with a
    stem, not the input or the mixes; an empty or foreign folder is refused in one line."""
    for n in (1, 0):
        folder = tmp_path / "examples" / f"{n:04d}"
        folder.mkdir(parents=True)
        for name in ("input", "ground_truth", "model", "model_mix", "random_pairing"):
            (folder / f"{name}.wav").touch()
    (tmp_path / "examples" / "summary.md").touch()
    windows, systems = run_stems(tmp_path)
    assert [w.name for w in windows] == ["0000", "0001"]
    assert systems == ["ground_truth", "model", "random_pairing"]
    with pytest.raises(ConfigError, match="not an `stemstream eval run` output"):
        run_stems(tmp_path / "examples" / "0000")
    assert run_stems(tmp_path, ["model"])[1] == ["model"]
