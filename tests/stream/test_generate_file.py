"""`stemstream generate` for every model family, on a tiny MockCodec dump."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from stemstream.cli import cli
from stemstream.codec.dump import dump_corpus
from stemstream.codec.mock import MockCodec
from stemstream.config import load_config
from stemstream.data.windows import WindowConfig
from stemstream.train import ModelTrainConfig, ModelTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from slakh_fixture import write_fake_slakh  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml"


@pytest.fixture(scope="module")
def dump(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gen")
    dump_corpus(
        write_fake_slakh(root / "slakh"),
        MockCodec().eval(),
        root / "dump",
        WindowConfig(window_seconds=1.0, future_seconds=0.2),
        splits=("train", "validation"),
        windows_per_track=2,
        progress=False,
    )
    return root / "dump"


def _export(dump: Path, out: Path, *overrides: str) -> Path:
    config = load_config(
        ModelTrainConfig, TINY, [f"dump_dir={dump}", f"out_dir={out}", "steps=3", *overrides]
    )
    trainer = ModelTrainer(config)
    trainer.run(progress=False)
    return trainer.export(out / "model.safetensors")


@pytest.mark.parametrize(
    "overrides",
    [
        ("family=streaming", "model.chunk_frames=1", "model.future_frames=0"),
        ("family=streaming", "model.chunk_frames=4", "model.future_frames=-2"),
        ("family=prefix",),
        ("family=stemgen",),
    ],
)
def test_generate_writes_a_stem_of_the_input_length(dump, tmp_path, overrides):
    ckpt = _export(dump, tmp_path / "run", *overrides)
    t = np.arange(int(1.3 * 44100)) / 44100
    sf.write(str(tmp_path / "in.wav"), np.stack([0.3 * np.sin(2 * np.pi * 220 * t)] * 2, 1), 44100)
    result = CliRunner().invoke(
        cli,
        [
            "generate",
            "--checkpoint",
            str(ckpt),
            "--input",
            str(tmp_path / "in.wav"),
            "--instrument",
            "bass",
            "-o",
            str(tmp_path / "stem.wav"),
            "--mix",
            str(tmp_path / "mix.wav"),
            "--top-k",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    stem, sr = sf.read(str(tmp_path / "stem.wav"))
    mix, _ = sf.read(str(tmp_path / "mix.wav"))
    assert sr == 44100  # the input's rate (the model runs at the codec's, 16 kHz)
    assert len(stem) == len(t) and mix.shape == (len(stem), 2)  # the input's channels
    assert np.all(np.isfinite(stem)) and np.abs(stem).max() > 0


def test_generate_errors(dump, tmp_path):
    ckpt = _export(dump, tmp_path / "run", "family=streaming")
    sf.write(str(tmp_path / "in.wav"), np.zeros(16000), 16000)
    runner = CliRunner()
    bad_inst = runner.invoke(
        cli,
        [
            "generate",
            "--checkpoint",
            str(ckpt),
            "--input",
            str(tmp_path / "in.wav"),
            "--instrument",
            "kazoo",
            "-o",
            str(tmp_path / "o.wav"),
        ],
    )
    assert bad_inst.exit_code == 1 and "unknown instrument 'kazoo'" in bad_inst.output
    wrong_codec = runner.invoke(
        cli,
        [
            "generate",
            "--checkpoint",
            str(ckpt),
            "--input",
            str(tmp_path / "in.wav"),
            "--instrument",
            "bass",
            "-o",
            str(tmp_path / "o.wav"),
            "--codec",
            "default",
        ],
    )
    assert wrong_codec.exit_code == 1 and "trained with codec MockCodec" in wrong_codec.output
    not_model = runner.invoke(
        cli,
        [
            "generate",
            "--checkpoint",
            str(tmp_path / "in.wav"),
            "--input",
            str(tmp_path / "in.wav"),
            "--instrument",
            "bass",
            "-o",
            str(tmp_path / "o.wav"),
        ],
    )
    assert not_model.exit_code == 1 and not_model.output.startswith("error: ")


def test_generate_at_another_tf_or_k_warns_and_invalid_values_fail(dump, tmp_path, caplog):
    ckpt = _export(dump, tmp_path / "run", "family=streaming")
    sf.write(str(tmp_path / "in.wav"), 0.1 * np.random.default_rng(0).standard_normal(8000), 16000)
    base = ["generate", "--checkpoint", str(ckpt), "--input", str(tmp_path / "in.wav"),
            "--instrument", "bass", "-o", str(tmp_path / "o.wav")]
    runner = CliRunner()
    import warnings

    # The warning reaches the log (the CLI captures warnings) or, when another test already
    # installed that capture, the warnings recorder: accept either channel.
    with caplog.at_level("WARNING"), warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")  # an earlier test may have shown it once already
        other = runner.invoke(cli, [*base, "--tf", "0.04", "--chunk", "2"])
    assert other.exit_code == 0, other.output
    said = caplog.text + "".join(str(w.message) for w in recorded)
    assert "not trained for that visibility" in said and "t_f=2, k=2" in said
    bad_k = runner.invoke(cli, [*base, "--chunk", "0"])
    assert bad_k.exit_code == 1 and "chunk size k must be an integer >= 1" in bad_k.output
    prefix = _export(dump, tmp_path / "prefix", "family=prefix")
    refused = runner.invoke(cli, [*base[:2], str(prefix), *base[3:], "--tf", "0.1"])
    assert refused.exit_code == 1 and "apply to streaming models" in refused.output


def test_export_turns_a_training_checkpoint_into_a_model(dump, tmp_path):
    _export(dump, tmp_path / "run", "family=streaming")
    training = sorted((tmp_path / "run" / "checkpoints").glob("*.safetensors"))[-1]
    runner = CliRunner()
    out = runner.invoke(cli, ["export", str(training), "-o", str(tmp_path / "m.safetensors")])
    assert out.exit_code == 0, out.output
    from stemstream import checkpoint

    tensors, meta = checkpoint.load(tmp_path / "m.safetensors")
    assert meta["kind"] == "model" and meta["family"] == "streaming"
    assert not any(k.startswith(("optim/", "rng/")) for k in tensors)
    again = runner.invoke(cli, ["export", str(tmp_path / "m.safetensors"), "-o",
                                str(tmp_path / "m2.safetensors")])
    assert again.exit_code == 1 and "already an exported model" in again.output


def _greedy_stems(runner, tmp_path, cases) -> dict[str, np.ndarray]:
    """``generate`` (greedy) on a 0.8 s sine for each ``(name, model, extra options)``."""
    t = np.arange(int(0.8 * 16000)) / 16000
    sf.write(str(tmp_path / "in.wav"), 0.3 * np.sin(2 * np.pi * 110 * t), 16000)
    stems = {}
    for name, model, extra in cases:
        result = runner.invoke(cli, ["generate", "--model", str(model), "--input",
                                     str(tmp_path / "in.wav"), "--instrument", "bass", "-o",
                                     str(tmp_path / f"{name}.wav"), "--temperature", "0",
                                     *extra])
        assert result.exit_code == 0, result.output
        stems[name] = sf.read(str(tmp_path / f"{name}.wav"))[0]
    return stems


def test_a_stored_guidance_is_the_default_and_an_option_overrides_it(dump, tmp_path):
    """`export --guidance W` stores the input guidance the model is meant to be sampled with;
    generate uses it unless --guidance says otherwise."""
    from stemstream.model.checkpoints import load_model

    ckpt = _export(dump, tmp_path / "run", "family=streaming", "model.future_frames=1")
    guided = tmp_path / "guided.safetensors"
    runner = CliRunner()
    out = runner.invoke(cli, ["export", str(ckpt), "-o", str(guided), "--guidance", "2.5"])
    assert out.exit_code == 0, out.output
    assert load_model(guided).guidance == 2.5 and load_model(ckpt).guidance == 1.0
    stems = _greedy_stems(runner, tmp_path, [("stored", guided, []),
                                             ("explicit", ckpt, ["--guidance", "2.5"]),
                                             ("plain", guided, ["--guidance", "1"])])
    assert np.array_equal(stems["stored"], stems["explicit"])
    assert not np.array_equal(stems["stored"], stems["plain"])
    bad = runner.invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "x.safetensors"),
                              "--guidance", "-1"])
    assert bad.exit_code != 0


def test_guidance_per_codebook_is_stored_and_used_like_one_weight(dump, tmp_path):
    """`--guidance 6,2,2,2`: one weight per codebook, stored at export and used by generate;
    a count other than the model's codebooks is a one-line error."""
    from stemstream.model.checkpoints import load_model

    ckpt = _export(dump, tmp_path / "run", "family=streaming", "model.future_frames=1")
    per = tmp_path / "per.safetensors"
    runner = CliRunner()
    out = runner.invoke(cli, ["export", str(ckpt), "-o", str(per), "--guidance", "6,2,2,2"])
    assert out.exit_code == 0, out.output
    assert load_model(per).guidance == (6.0, 2.0, 2.0, 2.0)
    stems = _greedy_stems(runner, tmp_path, [("stored", per, []),
                                             ("explicit", ckpt, ["--guidance", "6,2,2,2"]),
                                             ("one", ckpt, ["--guidance", "6"])])
    assert np.array_equal(stems["stored"], stems["explicit"])
    assert not np.array_equal(stems["stored"], stems["one"])
    for bad, message in [("6,2", "2 weights for a model of 4 codebooks"),
                         ("6,x,2,2", "one number per codebook")]:
        result = runner.invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "x.safetensors"),
                                     "--guidance", bad])
        assert result.exit_code != 0 and message in result.output, result.output
