"""The model training loop: learning, bit-exact kill-and-resume, checkpoint rotation and
identity checks, config errors, export/load, the CLI and a 2-process torchrun (gloo) run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from stemstream import checkpoint
from stemstream.cli import cli
from stemstream.codec.dump import dump_corpus
from stemstream.codec.mock import MockCodec
from stemstream.config import load_config
from stemstream.data.windows import WindowConfig
from stemstream.errors import ConfigError
from stemstream.train import ModelTrainConfig, ModelTrainer, load_model
from stemstream.train.loop import export_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from slakh_fixture import write_fake_slakh  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "model" / "tiny.yaml"


@pytest.fixture(scope="module")
def dump(tmp_path_factory) -> Path:
    """12 train / 6 validation windows of 1 s (50 frames) with t_f = 0.2 s, MockCodec."""
    root = tmp_path_factory.mktemp("train")
    out = root / "dump"
    window = WindowConfig(window_seconds=1.0, future_seconds=0.2)
    dump_corpus(
        write_fake_slakh(root / "slakh"),
        MockCodec().eval(),
        out,
        window,
        splits=("train", "validation"),
        windows_per_track=6,
        progress=False,
    )
    return out


def _config(dump: Path, out: Path, *overrides: str) -> ModelTrainConfig:
    return load_config(ModelTrainConfig, TINY, [f"dump_dir={dump}", f"out_dir={out}", *overrides])


def _train(dump: Path, out: Path, *overrides: str, **run) -> ModelTrainer:
    trainer = ModelTrainer(_config(dump, out, *overrides))
    trainer.run(progress=False, **run)
    return trainer


def _assert_resumes_exactly(dump: Path, out: Path, uninterrupted: ModelTrainer,
                            *overrides: str, stop_after: int) -> None:
    """A run killed after ``stop_after`` steps and rerun with the same command ends with
    exactly the weights of ``uninterrupted``."""
    first = _train(dump, out, *overrides, stop_after=stop_after)
    assert first.step == stop_after
    resumed = _train(dump, out, *overrides)
    sa, sb = uninterrupted.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls(dump, tmp_path):
    _train(dump, tmp_path, "steps=40", "log_every=1")
    losses = [m["loss/train"] for m in _metrics(tmp_path) if "loss/train" in m]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    assert any("loss/valid" in m for m in _metrics(tmp_path))


def test_kill_and_resume_is_bit_identical(dump, tmp_path):
    # 3 batches per epoch: 11 steps cross epoch boundaries; dropout exercises the RNG state.
    common = ("steps=11", "checkpoint_every=100", "model.backbone_overrides.dropout=0.1")
    a = _train(dump, tmp_path / "a", *common)
    first = _train(dump, tmp_path / "b", *common, stop_after=4)
    assert first.step == 4 and (first.epoch, first.batch_index) == (1, 1)
    b = _train(dump, tmp_path / "b", *common)
    assert a.step == b.step == 11
    assert (a.epoch, a.batch_index) == (b.epoch, b.batch_index) == (3, 2)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    oa, ob = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for index, entry in oa.items():
        assert all(torch.equal(v, ob[index][name]) for name, v in entry.items())


def test_checkpoint_rotation_and_meta(dump, tmp_path):
    trainer = _train(dump, tmp_path, "steps=8", "checkpoint_every=2", "keep_checkpoints=2")
    paths = trainer.checkpoint_paths()
    assert [p.name for p in paths] == ["step_0000006.safetensors", "step_0000008.safetensors"]
    meta = checkpoint.read_meta(paths[-1])
    assert meta["kind"] == "model-train" and meta["family"] == "streaming"
    assert meta["step"] == 8 and meta["data_position"] == {"epoch": 2, "batch": 2}
    assert meta["codec"] == MockCodec().codec_identity()
    assert meta["config"]["steps"] == 8 and "stemstream_version" in meta
    assert not list(paths[0].parent.glob(".*tmp*"))


def test_export_and_load_model(dump, tmp_path):
    trainer = _train(dump, tmp_path, "steps=3")
    path = trainer.export(tmp_path / "model.safetensors")
    loaded = load_model(path, family="streaming")
    assert loaded.config == trainer.model_config and loaded.codec == trainer.codec_identity
    batch = trainer.valid_batches()[0]
    with torch.no_grad():
        expected = trainer._loss(trainer.model.eval(), batch)
        assert torch.equal(trainer._loss(loaded.model, batch), expected)
    with pytest.raises(checkpoint.CheckpointError, match="'prefix'"):
        load_model(path, family="prefix")
    # float16 storage: half the tensor bytes, loaded back as float32 within half precision
    half = export_checkpoint(path, tmp_path / "half.safetensors", "float16")
    assert checkpoint.load(half)[1]["stored_dtype"] == "float16"
    assert half.stat().st_size < 0.6 * path.stat().st_size
    small = load_model(half, family="streaming")
    for name, value in small.model.state_dict().items():
        want = loaded.model.state_dict()[name]
        assert value.dtype == want.dtype
        torch.testing.assert_close(value, want, rtol=1e-3, atol=1e-4)
    with pytest.raises(checkpoint.CheckpointError, match="already an exported"):
        export_checkpoint(path, tmp_path / "again.safetensors")
    with pytest.raises(ConfigError, match="dtype must be one of"):
        export_checkpoint(path, tmp_path / "x.safetensors", "int4")


def test_resume_refuses_other_family_codec_or_shape(dump, tmp_path):
    trainer = _train(dump, tmp_path, "steps=2")
    path = trainer.checkpoint_paths()[-1]
    tensors, meta = checkpoint.load(path)
    checkpoint.save(path, tensors, meta | {"family": "stemgen"})
    with pytest.raises(checkpoint.CheckpointError, match="stemgen"):
        ModelTrainer(_config(dump, tmp_path, "steps=4")).run(progress=False)
    codec = meta["codec"] | {"weights_hash": "0123456789abcdef", "tokens_hash": "0123456789abcdef"}
    checkpoint.save(path, tensors, meta | {"codec": codec})
    with pytest.raises(ConfigError, match="0123456789abcdef"):
        ModelTrainer(_config(dump, tmp_path, "steps=4")).run(progress=False)
    checkpoint.save(path, tensors, meta)
    with pytest.raises(checkpoint.CheckpointError, match="model config"):
        _train(dump, tmp_path, "steps=4", "model.chunk_frames=2")


def test_warm_start_maps_blocks_and_changes_visibility(dump, tmp_path):
    source = _train(dump, tmp_path / "src", "steps=3", "model.backbone_overrides.num_layers=3")
    path = source.export(tmp_path / "src.safetensors")
    # Blocks 2 and 0 of the source become blocks 0 and 1; t_f differs (it holds no weights).
    student = ModelTrainer(_config(
        dump, tmp_path / "dst", f"init_from={path}", "init_layers=[2, 0]",
        "model.backbone_overrides.num_layers=2", "model.future_frames=-2",
    ))  # fmt: skip
    got, want = student.model.state_dict(), source.model.state_dict()
    for name, value in got.items():
        key = name.replace("layers.0.", "layers.2.") if "layers.0." in name else (
            name.replace("layers.1.", "layers.0.")
        )
        assert torch.equal(value, want[key]), name
    # Without init_from the same seed gives other weights: the test can tell the difference.
    fresh = ModelTrainer(_config(dump, tmp_path / "fresh", "model.backbone_overrides.num_layers=2"))
    assert not torch.equal(fresh.model.state_dict()["heads.weight"], got["heads.weight"])
    # A resumed run loads its own checkpoint, not init_from.
    student.run(progress=False, stop_after=2)
    resumed = ModelTrainer(_config(
        dump, tmp_path / "dst", f"init_from={path}", "init_layers=[2, 0]",
        "model.backbone_overrides.num_layers=2", "model.future_frames=-2", "steps=40",
    ))  # fmt: skip
    resumed.run(progress=False, stop_after=0)
    assert resumed.step == 2
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, student.model.state_dict()[name]), name


def test_warm_start_refusals(dump, tmp_path):
    source = _train(dump, tmp_path / "src", "steps=2")
    path = source.export(tmp_path / "src.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="init_layers names 1 blocks"):
        ModelTrainer(_config(dump, tmp_path / "a", f"init_from={path}", "init_layers=[0]"))
    with pytest.raises(checkpoint.CheckpointError, match="no tensor"):
        ModelTrainer(_config(dump, tmp_path / "b", f"init_from={path}", "init_layers=[0, 5]"))
    with pytest.raises(checkpoint.CheckpointError, match="choose them with init_layers"):
        ModelTrainer(_config(dump, tmp_path / "b2", f"init_from={path}",
                             "model.backbone_overrides.num_layers=1"))
    with pytest.raises(checkpoint.CheckpointError, match="shape"):
        ModelTrainer(_config(dump, tmp_path / "c", f"init_from={path}",
                             "model.backbone_overrides.dim=32"))
    with pytest.raises(checkpoint.CheckpointError, match="'prefix' one"):
        ModelTrainer(_config(dump, tmp_path / "d", f"init_from={path}", "family=prefix"))
    tensors, meta = checkpoint.load(path)
    codec = meta["codec"] | {"weights_hash": "0123456789abcdef", "tokens_hash": "0123456789abcdef"}
    checkpoint.save(tmp_path / "other.safetensors", tensors, meta | {"codec": codec})
    with pytest.raises(ConfigError, match="0123456789abcdef"):
        ModelTrainer(_config(dump, tmp_path / "e", f"init_from={tmp_path / 'other.safetensors'}"))
    with pytest.raises(ConfigError, match="init_layers needs init_from"):
        _config(dump, tmp_path / "f", "init_layers=[0]")


def test_warm_start_across_families_loads_only_shared_tensors(dump, tmp_path):
    source = _train(dump, tmp_path / "src", "steps=2")
    path = source.export(tmp_path / "src.safetensors")
    fresh = ModelTrainer(_config(dump, tmp_path / "fresh", "family=prefix"))
    student = ModelTrainer(_config(dump, tmp_path / "dst", "family=prefix",
                                   f"init_from={path}", "init_shared=true"))
    want, got, init = (m.model.state_dict() for m in (source, student, fresh))
    loaded = [name for name in got if name in want and want[name].shape == got[name].shape]
    assert any("backbone.layers." in name for name in loaded) and "heads.weight" in loaded
    for name in loaded:
        assert torch.equal(got[name], want[name]), name
    # The prefix decoder's own tensors (its start token) keep their fresh initialisation.
    own = [name for name in got if name not in want]
    assert own
    for name in own:
        assert torch.equal(got[name], init[name]), name
    # Another backbone size is still refused: shared tensors must match in shape.
    with pytest.raises(checkpoint.CheckpointError, match="blocks"):
        ModelTrainer(_config(dump, tmp_path / "g", "family=stemgen", f"init_from={path}",
                             "init_shared=true", "model.backbone_overrides.num_layers=1"))
    with pytest.raises(ConfigError, match="init_shared needs init_from"):
        _config(dump, tmp_path / "h", "init_shared=true")


def test_dump_of_another_codec_is_refused(dump, tmp_path):
    other = tmp_path / "dump"
    other.mkdir()
    for split in ("train", "validation"):
        (other / split).symlink_to(dump / split)
    meta = json.loads((dump / "meta.json").read_text())
    meta["codec"]["weights_hash"] = meta["codec"]["tokens_hash"] = "ffffffffffffffff"
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="ffffffffffffffff.*use the dump's codec"):
        ModelTrainer(_config(other, tmp_path / "run"))


def test_config_errors_and_units(dump, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key.*learning_rate"):
        _config(dump, tmp_path, "learning_rate=1")
    with pytest.raises(ConfigError, match="unknown config key.*model.kk"):
        _config(dump, tmp_path, "model.kk=1")
    with pytest.raises(ConfigError, match="unknown model family 'nope'; known: .*streaming"):
        ModelTrainer(_config(dump, tmp_path, "family=nope"))
    with pytest.raises(ConfigError, match="min_lr"):
        _config(dump, tmp_path, "min_lr=1")
    with pytest.raises(ConfigError, match="future input the dump lacks"):
        ModelTrainer(_config(dump, tmp_path, "model.future_frames=11"))
    with pytest.raises(ConfigError, match="whole number of frames"):
        ModelTrainer(
            _config(dump, tmp_path, "model.future_frames=null", "model.future_seconds=0.01")
        )
    seconds = ModelTrainer(
        _config(dump, tmp_path, "model.future_frames=null", "model.future_seconds=0.2")
    )
    assert seconds.model_config.future_frames == 10
    default = ModelTrainer(_config(dump, tmp_path, "model.future_frames=null"))
    assert default.model_config.future_frames == 10  # the dump's t_f
    forced = ModelTrainer(_config(dump, tmp_path / "hd", "model.history_dropout=0.3"))
    assert forced.model_config.history_dropout == 0.3
    with pytest.raises(ConfigError, match="streaming family only"):
        ModelTrainer(_config(dump, tmp_path / "hd2", "family=prefix", "model.history_dropout=0.3"))
    with pytest.raises(ConfigError, match=r"history_dropout must be in \[0, 1\]"):
        _config(dump, tmp_path, "model.history_dropout=2")


def test_cli_train_and_resume(dump, tmp_path):
    args = ["train", "--config", str(TINY), f"dump_dir={dump}", f"out_dir={tmp_path}"]
    result = CliRunner().invoke(cli, [*args, "steps=4", "--stop-after", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "loss/valid" in result.output
    result = CliRunner().invoke(cli, [*args, "steps=4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == [
        "step_0000002.safetensors",
        "step_0000004.safetensors",
    ]
    bad = CliRunner().invoke(cli, [*args, "model.bogus=1", "--no-progress"])
    assert bad.exit_code == 1 and "unknown config key" in bad.output


def test_torchrun_two_processes_gloo(dump, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "stemstream.cli", "train", "--config", str(TINY), f"dump_dir={dump}",
        f"out_dir={tmp_path}", "steps=4", "batch_size=2", "checkpoint_every=2", "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = checkpoint.read_meta(tmp_path / "checkpoints" / "step_0000004.safetensors")
    # 12 rows, 2 processes x 2 windows: 3 global batches per epoch.
    assert meta["step"] == 4 and meta["data_position"] == {"epoch": 1, "batch": 1}
    assert sum("loss/valid" in m for m in _metrics(tmp_path)) == 1  # rank 0 only


@pytest.mark.parametrize("family", ["prefix", "stemgen"])
def test_offline_families_train_export_and_reload(dump, tmp_path, family):
    trainer = _train(dump, tmp_path, f"family={family}", "steps=30", "log_every=1")
    losses = [m["loss/train"] for m in _metrics(tmp_path) if "loss/train" in m]
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    path = trainer.export(tmp_path / "model.safetensors")
    model = load_model(path).model
    assert type(model).__name__ == type(trainer.model).__name__
    for a, b in zip(model.state_dict().values(), trainer.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def track_dump(tmp_path_factory) -> Path:
    """Whole tracks of the fake corpus (3 s each), MockCodec: crops drawn at every step."""
    from stemstream.codec.track_dump import dump_tracks

    root = tmp_path_factory.mktemp("tracks")
    dump_tracks(write_fake_slakh(root / "slakh"), MockCodec().eval(), root / "dump",
                splits=("train", "validation"), progress=False)
    return root / "dump"


def test_track_dump_trains_on_fresh_crops_and_logs_reliance(track_dump, tmp_path):
    common = ("steps=7", "crop_seconds=1.0", "batch_size=2", "valid_every=7",
              "checkpoint_every=100", "model.future_frames=5", "model.input_encoder=conv",
              "model.history_noise=0.2", "model.history_span=0.2", "history_scale_end=0.4",
              "model.history_shift=0.5", "model.history_shift_frames=10",
              "model.onset_loss_weight=0.5", "model.anticipation_frames=3",
              "model.anticipation_loss_weight=0.5", "log_every=1")
    a = _train(track_dump, tmp_path / "a", *common)
    assert a.train_data.input_frames == 55 and a.epoch >= 1
    scales = [m["history_scale"] for m in _metrics(tmp_path / "a") if "history_scale" in m]
    assert scales[0] == 1.0 and scales[-1] == pytest.approx(0.4) and scales == sorted(scales)[::-1]
    onset = [m["loss/onset"] for m in _metrics(tmp_path / "a") if "loss/onset" in m]
    assert len(onset) == 7 and all(0 < v < 2 for v in onset)
    ahead = [m["loss/anticipation"] for m in _metrics(tmp_path / "a") if "loss/anticipation" in m]
    assert len(ahead) == 7 and all(0 < v < 100 for v in ahead)
    valid = [m for m in _metrics(tmp_path / "a") if "loss/valid" in m][-1]
    for key in ("reliance/all", "reliance/hidden", "loss/valid_other_input"):
        assert key in valid
    # killed and resumed with the same command: bit-identical (crops depend on seed, epoch, row)
    _assert_resumes_exactly(track_dump, tmp_path / "b", a, *common, stop_after=3)


def test_prefix_decoder_trains_on_crops_of_a_track_dump(track_dump, tmp_path):
    trainer = _train(track_dump, tmp_path, "family=prefix", "steps=3", "crop_seconds=1.0",
                     "batch_size=2", "valid_every=3", "checkpoint_every=100")
    assert trainer.step == 3 and trainer.train_data.input_frames == 50  # no look-ahead
    valid = [m for m in _metrics(tmp_path) if "loss/valid" in m]
    assert valid and all(torch.isfinite(torch.tensor(m["loss/valid"])) for m in valid)


def test_input_features_train_warm_start_exactly_and_are_required_of_the_dump(
        track_dump, tmp_path):
    """A model hearing input features trains on a dump that stores them; warm-started from a
    model without them it starts as that model's exact function (the new input columns are
    zero); a dump without them is refused in one line."""
    from stemstream.data.tokens import DumpError, TrackCrops, collate
    from stemstream.train.inputs import BatchInputs

    common = ("crop_seconds=1.0", "batch_size=2", "valid_every=4", "checkpoint_every=100",
              "model.future_frames=3", "model.input_encoder=conv")
    plain = _train(track_dump, tmp_path / "plain", "steps=2", *common)
    path = plain.export(tmp_path / "plain.safetensors")
    features = "model.input_features=[onset,chroma,beat]"
    hearing = ModelTrainer(_config(track_dump, tmp_path / "feat", "steps=4", *common, features,
                                   f"init_from={path}"))
    assert hearing.model.in_proj.weight.shape[1] == 16 + 1 + 12 + 4  # MockCodec D = 16
    crops = TrackCrops(track_dump, "validation", 4, 50, 3)
    batch = collate([crops[i] for i in range(2)])
    assert batch.input_features.shape == (2, 18, 53)
    assert batch.input_features.abs().sum() > 0
    with torch.no_grad():
        heard = hearing.inputs(batch, "cpu")
        plain_in = plain.inputs(batch, "cpu")
        assert heard.shape == (2, 16 + 17, 53)
        torch.testing.assert_close(heard[:, :16], plain_in)
        a = hearing.model.eval()(heard, batch.target_codes, batch.inst_class).logits
        b = plain.model.eval()(plain_in, batch.target_codes, batch.inst_class).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    hearing.run(progress=False)
    assert float(hearing.model.in_proj.weight.detach()[:, 16:].abs().sum()) > 0  # they learn
    valid = [m for m in _metrics(tmp_path / "feat") if "reliance/all" in m]
    assert valid
    with pytest.raises(DumpError, match="dump-features"):
        BatchInputs(lambda c: c, ("onset",), (), "DUMP")


def test_reliance_is_zero_for_the_same_input_and_positive_for_a_listening_model():
    from stemstream.data.tokens import TokenBatch
    from stemstream.model.streaming import StreamingDecoder, StreamingDecoderConfig
    from stemstream.model.transformer import TransformerConfig
    from stemstream.train.reliance import measure_reliance

    torch.manual_seed(0)
    model = StreamingDecoder(StreamingDecoderConfig(
        backbone=TransformerConfig.preset("tiny"), codebook_size=16, input_dim=16))

    def embed(codes: torch.Tensor) -> torch.Tensor:  # codebook 0, one-hot: [B, 16, T]
        return torch.nn.functional.one_hot(codes[:, 0], 16).float().transpose(1, 2)

    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (4, 4, 30), generator=gen)
    onsets = torch.zeros(4, 30, dtype=torch.bool)
    onsets[:, ::10] = True
    batch = TokenBatch(codes, codes, torch.tensor([1, 2, 3, 4]), torch.arange(4), onsets)
    other = batch._replace(input_codes=codes.roll(1, dims=0))
    def inputs(batch, device):
        return embed(batch.input_codes.to(device))

    same = measure_reliance(model, inputs, [batch], [batch])
    assert same["reliance/all"] == 0.0 and same["reliance/onsets"] == 0.0
    def copy_task(model, target):  # 60 steps hearing the target's codebook 0
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(60):
            loss = model(embed(codes), target, batch.inst_class).loss
            opt.zero_grad()
            loss.backward()
            opt.step()

    # a few steps of a copy task (target = input): the model learns to listen
    copy_task(model, codes)
    result = measure_reliance(model, inputs, [batch], [other])
    assert model.training  # restored
    assert result["reliance/all"] > 0.5 and result["reliance/hidden"] > 0.5
    assert result["reliance/onsets"] > 0.5
    # per codebook: when the target's codebooks 1-3 are constant, only codebook 0 (the one
    # ``embed`` shows) depends on the input, and the overall figure is a mean of the four
    plain = codes.clone()
    plain[:, 1:] = 0
    flat = StreamingDecoder(StreamingDecoderConfig(
        backbone=TransformerConfig.preset("tiny"), codebook_size=16, input_dim=16))
    copy_task(flat, plain)
    by_q = measure_reliance(flat, inputs, [batch._replace(target_codes=plain)],
                            [other._replace(target_codes=plain)])
    per_q = [by_q[f"reliance/all_q{q}"] for q in range(4)]
    assert per_q[0] > 1.0 and all(abs(r) < 0.1 for r in per_q[1:])
    assert min(per_q) < by_q["reliance/all"] < max(per_q)
    assert by_q["reliance/onsets_q0"] > 1.0
    # guided logits: w = 1 is the model's own, w = 0 the model hearing nothing (no reliance)
    assert measure_reliance(model, inputs, [batch], [other], guidance=1.0) == result
    deaf = measure_reliance(model, inputs, [batch], [other], guidance=0.0)
    assert deaf["reliance/all"] == 0.0 and deaf["reliance/hidden"] == 0.0
    guided = measure_reliance(model, inputs, [batch], [other], guidance=2.0)
    assert guided["reliance/all"] != result["reliance/all"]


def test_guidance_distillation_learns_the_guided_logits_and_resumes_exactly(
        track_dump, tmp_path):
    """A student warm-started from its teacher matches the teacher's plain logits exactly (KL
    0 at w = 1); under w = 3 training lowers the KL to the guided logits on validation, which
    the same steps on the true tokens alone do not; a killed run resumes bit-identically."""
    common = ("crop_seconds=1.0", "batch_size=2", "checkpoint_every=100",
              "model.future_frames=3", "model.input_encoder=conv")
    teacher = _train(track_dump, tmp_path / "teacher", "steps=20", "lr=3e-3", "valid_every=100",
                     "model.input_dropout=0.3", *common)
    path = teacher.export(tmp_path / "teacher.safetensors")
    student = (*common, f"init_from={path}", f"distill_from={path}", "valid_every=100")

    plain = ModelTrainer(_config(track_dump, tmp_path / "plain", *student,
                                 "distill_guidance=1"))
    assert plain.teacher.guidance == (1.0,) * 4
    assert plain._valid_distill(plain.valid_batches()) == pytest.approx(0.0, abs=1e-6)

    run = (*student, "distill_guidance=3", "steps=12", "lr=3e-3", "warmup_steps=1", "log_every=1")
    a = ModelTrainer(_config(track_dump, tmp_path / "a", *run))
    before = a._valid_distill(a.valid_batches())
    assert before > 0.01
    a.run(progress=False)
    after = a.validate()
    # the same steps on the true tokens alone (distill_weight 0) do not teach the guided logits
    control = _train(track_dump, tmp_path / "control", *run, "distill_weight=0")
    unguided = control._valid_distill(control.valid_batches())
    assert after["loss/valid_distill"] < 0.75 * before
    assert after["loss/valid_distill"] < 0.75 * unguided
    logged = [m["loss/distill"] for m in _metrics(tmp_path / "a") if "loss/distill" in m]
    assert len(logged) == 12 and all(v >= 0 for v in logged)
    _assert_resumes_exactly(track_dump, tmp_path / "b", a, *run, stop_after=5)


def test_guidance_distillation_per_codebook_and_weighted_at_onsets(track_dump, tmp_path):
    """One guidance per codebook takes each codebook's logits from the teacher guided at its
    own w; ``distill_onset_weight`` moves the KL towards its value at onset tokens."""
    from stemstream.train.distill import GuidedTeacher, distill_loss

    common = ("crop_seconds=1.0", "batch_size=2", "model.future_frames=3",
              "model.input_encoder=conv")
    path = _train(track_dump, tmp_path / "t", "steps=10", "lr=3e-3", "model.input_dropout=0.3",
                  *common).export(tmp_path / "t.safetensors")
    student = (*common, f"init_from={path}", f"distill_from={path}")
    mixed = ModelTrainer(_config(track_dump, tmp_path / "s", *student,
                                 "distill_guidance=[3, 1, 1, 0.5]"))
    assert mixed.teacher.describe() == "3/1/1/0.5"
    batch = mixed.valid_batches()[0]
    args = (mixed.inputs(batch, "cpu"), batch.target_codes, batch.inst_class)
    got = mixed.teacher.logits(*args)
    for q, w in enumerate((3, 1, 1, 0.5)):
        alone = GuidedTeacher(path, w, mixed.model_config, mixed.codec_identity, "cpu")
        assert torch.equal(got[:, :, q], alone.logits(*args)[:, :, q])
    with pytest.raises(ConfigError, match="3 values for 4 codebooks"):
        GuidedTeacher(path, (3, 1, 1), mixed.model_config, mixed.codec_identity, "cpu")

    # the weighted KL is the weighted mean of the per-token KL
    student_logits, teacher_logits = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 4, 8)
    targets = torch.randint(0, 8, (2, 4, 5))
    targets[:, 3, :2] = 9  # delay pads
    weights = torch.rand(2, 4, 5)
    per_token = torch.nn.functional.kl_div(
        student_logits.log_softmax(-1), teacher_logits.log_softmax(-1), log_target=True,
        reduction="none").sum(-1).transpose(1, 2)  # [B, K, L]
    keep = (targets != 9).float() * weights
    expected = (per_token * keep).sum() / keep.sum()
    assert float(distill_loss(student_logits, teacher_logits, targets, 9, weights)) == \
        pytest.approx(float(expected), rel=1e-5)
    assert float(distill_loss(student_logits, teacher_logits, targets, 9,
                              torch.ones(2, 4, 5))) == pytest.approx(
        float(distill_loss(student_logits, teacher_logits, targets, 9)), rel=1e-6)

    # through the trainer: weight 1 is the plain KL, a huge weight the KL at onsets alone
    guided = ModelTrainer(_config(track_dump, tmp_path / "g", *student, "distill_guidance=3"))
    onsets = torch.zeros_like(batch.onsets)  # the fixture's stub MIDI has no notes
    onsets[:, ::7] = True
    batch = batch._replace(onsets=onsets)
    with torch.no_grad():
        kl = {w: float(guided._forward(guided.model, batch, w)[1]) for w in (1.0, 4.0, 1e6)}
    assert kl[1.0] == pytest.approx(guided._valid_distill([batch]), rel=1e-6)
    assert min(kl[1.0], kl[1e6]) < kl[4.0] < max(kl[1.0], kl[1e6])
    assert abs(kl[1e6] - kl[1.0]) > 1e-3


def test_mismatch_inputs_gives_each_chosen_row_another_rows_input():
    from stemstream.train.distill import mismatch_inputs

    latents = torch.arange(8.0)[:, None, None].expand(8, 3, 5)
    mixed = mismatch_inputs(latents, 0.5)
    assert mixed[:, 0, 0].tolist() == [7, 0, 1, 2, 4, 5, 6, 7]
    assert torch.equal(latents[:, 0, 0], torch.arange(8.0))  # the input is left alone
    assert mismatch_inputs(latents, 0.0) is latents
    # at most B - 1 rows: a share below 1 always leaves a true pair in the batch
    assert mismatch_inputs(latents, 0.99)[:, 0, 0].tolist() == [7, 0, 1, 2, 3, 4, 5, 7]
    assert torch.equal(mismatch_inputs(latents[:1], 0.5), latents[:1])


def test_guidance_distillation_on_mismatched_inputs(track_dump, tmp_path):
    """``distill_mismatch``: the KL of a batch is the KL of the same batch with the chosen
    rows' input codes taken from the row before, for teacher and student alike; validation
    stays on the true pairs."""
    common = ("crop_seconds=1.0", "batch_size=2", "model.future_frames=3",
              "model.input_encoder=conv")
    path = _train(track_dump, tmp_path / "t", "steps=10", "lr=3e-3", "model.input_dropout=0.3",
                  *common).export(tmp_path / "t.safetensors")
    trainer = ModelTrainer(_config(track_dump, tmp_path / "s", *common, "steps=10",
                                   "lr=3e-3", f"init_from={path}", f"distill_from={path}",
                                   "distill_guidance=3", "distill_mismatch=0.5"))
    assert trainer.config.distill_mismatch == 0.5
    batch = trainer.valid_batches()[0]
    assert batch.input_codes.shape[0] == 2 and not torch.equal(*batch.input_codes)
    heard = batch.input_codes.clone()
    heard[0] = batch.input_codes[1]
    with torch.no_grad():
        mixed = float(trainer._forward(trainer.model, batch, 1.0, 0.5)[1])
        swapped = float(trainer._forward(trainer.model, batch._replace(input_codes=heard))[1])
        true = float(trainer._forward(trainer.model, batch)[1])
    assert mixed == pytest.approx(swapped, rel=1e-6)
    assert abs(mixed - true) > 1e-4
    assert trainer._valid_distill([batch]) == pytest.approx(true, rel=1e-6)
    trainer.run(progress=False)  # trains with it
    assert all(math.isfinite(m["loss/distill"]) for m in _metrics(tmp_path / "s")
               if "loss/distill" in m)


def test_guidance_distillation_refusals(track_dump, tmp_path):
    common = ("crop_seconds=1.0", "batch_size=2", "model.future_frames=3",
              "model.input_encoder=conv")
    path = _train(track_dump, tmp_path / "t", "steps=1", *common).export(tmp_path / "t.st")
    with pytest.raises(ConfigError, match="future_frames = 3, the student 2"):
        ModelTrainer(_config(track_dump, tmp_path / "s", "crop_seconds=1.0", "batch_size=2",
                             "model.future_frames=2", "model.input_encoder=conv",
                             f"distill_from={path}"))
    with pytest.raises(ConfigError, match="streaming family"):
        _config(track_dump, tmp_path / "s", "family=prefix", f"distill_from={path}")
    with pytest.raises(ConfigError, match="needs distill_from"):
        _config(track_dump, tmp_path / "s", "distill_guidance=2")
    with pytest.raises(ConfigError, match="distill_weight"):
        _config(track_dump, tmp_path / "s", f"distill_from={path}", "distill_weight=1.5")
    with pytest.raises(ConfigError, match="distill_onset_weight needs distill_from"):
        _config(track_dump, tmp_path / "s", "distill_onset_weight=4")
    with pytest.raises(ConfigError, match="distill_mismatch needs distill_from"):
        _config(track_dump, tmp_path / "s", "distill_mismatch=0.5")
    with pytest.raises(ConfigError, match=r"distill_mismatch must be in \[0, 1\)"):
        _config(track_dump, tmp_path / "s", f"distill_from={path}", "distill_mismatch=1")
    with pytest.raises(ConfigError, match="distill_mismatch needs distill_weight 1"):
        _config(track_dump, tmp_path / "s", f"distill_from={path}", "distill_mismatch=0.5",
                "distill_weight=0.5")
    with pytest.raises(ConfigError, match="distill_onset_weight must be > 0"):
        _config(track_dump, tmp_path / "s", f"distill_from={path}", "distill_onset_weight=0")
    with pytest.raises(ConfigError, match="guidance must be finite"):
        _config(track_dump, tmp_path / "s", f"distill_from={path}", "distill_guidance=[2, -1]")
