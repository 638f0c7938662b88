"""Our COCOLA: features, modes, training (resumable), export/loading, and metric validity on
a planted task (each track has its own tempo and key; positives share both)."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stemstream.config import load_config
from stemstream.errors import ConfigError, StemstreamError
from stemstream.eval.cocola import (
    MODES,
    OFFICIAL_CONFIG,
    CocolaConfig,
    CocolaModel,
    EfficientNetB0,
    cocola_score,
    features,
    load_cocola,
    mask_mode,
    save_cocola,
    windows,
)
from stemstream.eval.cocola_train import (
    CocolaTrainConfig,
    CocolaTrainer,
    calibrate_norms,
    pair_accuracy,
    with_mode_norm,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from slakh_fixture import stem_meta, write_track  # noqa: E402

SR = 16000
TINY = Path(__file__).resolve().parents[2] / "configs" / "cocola" / "tiny.yaml"


def band(seconds: float, bpm: float, root_hz: float, seed: int) -> dict:
    """Drums (clicks at ``bpm``) + a bass line on ``root_hz`` + chords, all on the beat."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    beat = (t % (60 / bpm)) < 0.05
    # the planted cue: every stem carries the track's tempo and a tone at 4x its root
    cue = 0.1 * np.sin(2 * np.pi * root_hz * 4 * t)
    drums = (rng.standard_normal(n) * 0.4 * beat + cue).astype(np.float32)
    bass = (0.3 * np.sin(2 * np.pi * root_hz * t) * (0.5 + 0.5 * beat) + cue).astype(np.float32)
    chord = sum(np.sin(2 * np.pi * root_hz * r * 2 * t) for r in (1.0, 1.26, 1.5))
    keys = (0.1 * chord * ((t % (120 / bpm)) < 60 / bpm) + cue).astype(np.float32)
    return {"S00": (stem_meta("Drums", 128, is_drum=True), drums),
            "S01": (stem_meta("Bass", 33), bass),
            "S02": (stem_meta("Piano", 0), keys)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cocola") / "corpus"
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("validation", 8)):
        for i in range(count):
            bpm = float(rng.uniform(70, 180))
            root_hz = float(rng.uniform(50, 200))
            write_track(root, split, f"Track{split[:1]}{i:03d}", band(7.0, bpm, root_hz, i))
    return root


def test_features_shapes_modes_and_windows():
    config = CocolaConfig()
    wave = torch.randn(2, 80000) * 0.1
    feats = features(wave, config)
    assert feats.shape == (2, 2, 64, 313)
    assert torch.equal(feats, features(wave, config))  # deterministic
    harmonic = mask_mode(feats, "harmonic")
    assert torch.equal(harmonic[:, 0], feats[:, 0]) and torch.unique(harmonic[:, 1]).numel() == 1
    with pytest.raises(ConfigError, match="unknown COCOLA mode"):
        mask_mode(feats, "vocal")
    assert windows(np.zeros(int(SR * 12.5)), SR).shape == (4, 80000)  # 5 s windows, 2.5 s hop
    assert windows(np.zeros(SR * 2), SR).shape == (1, 80000)  # padded
    assert windows(np.zeros(44100 * 6), 44100).shape == (1, 80000)  # resampled


def test_training_resumes_exports_and_learns_the_planted_task(corpus, tmp_path):
    out = tmp_path / "run"
    overrides = [f"corpus={corpus}", f"out_dir={out}", "train_pairs=64", "valid_pairs=24",
                 "batch_size=16", "steps=60", "lr=2e-3", "warmup_steps=5",
                 "checkpoint_every=20", "valid_every=30", "model.channels=[16,32]",
                 "model.embedding_dim=32"]
    torch.manual_seed(0)
    config = load_config(CocolaTrainConfig, TINY, overrides)
    trainer = CocolaTrainer(config)
    trainer.run(progress=False, stop_after=20)
    valid = torch.load(out / "cache_validation.pt", weights_only=False)["features"]
    untrained = pair_accuracy(CocolaModel(config.model), valid)
    assert trainer.step == 20
    resumed = CocolaTrainer(config)
    accuracy = resumed.run(progress=False)
    assert resumed.step == 60
    path = resumed.export(tmp_path / "cocola.safetensors")
    model = load_cocola(path)
    # Held-out windows: the real partner beats a random other window's submix.
    assert accuracy["both"] >= 0.75 and accuracy["both"] > untrained["both"], (
        accuracy, untrained)
    # single-channel modes are in distribution (channel dropout in training)
    assert min(accuracy["harmonic"], accuracy["percussive"]) >= 0.65, accuracy
    assert pair_accuracy(model, valid) == pytest.approx(accuracy)
    # Scoring whole clips: a stem scores higher against its own mix than against another's.
    own = band(7.0, 100.0, 80.0, 1)
    other = band(7.0, 160.0, 170.0, 2)
    stem = own["S01"][1]
    mix_own = own["S00"][1] + own["S02"][1]
    mix_other = other["S00"][1] + other["S02"][1]
    assert cocola_score(model, stem, mix_own, SR) > cocola_score(model, stem, mix_other, SR)


def test_loading_errors(tmp_path):
    with pytest.raises(StemstreamError, match="no COCOLA checkpoint"):
        load_cocola(tmp_path / "missing.safetensors")
    from stemstream import checkpoint

    checkpoint.save(tmp_path / "codec.safetensors", {"x": torch.zeros(1)}, {"kind": "codec"})
    with pytest.raises(ConfigError, match="not a COCOLA checkpoint"):
        load_cocola(tmp_path / "codec.safetensors")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        load_cocola(tmp_path / "garbage.ckpt")
    # an official-style checkpoint of another variant (single-channel mel input)
    state = _official_state_dict(CocolaModel(OFFICIAL_CONFIG))
    state["encoder.encoder.model.0._conv_stem.weight"] = torch.zeros(32, 1, 3, 3)
    torch.save({"state_dict": state}, tmp_path / "mel.ckpt")
    with pytest.raises(ConfigError, match="harmonic/percussive input"):
        load_cocola(tmp_path / "mel.ckpt")
    assert CocolaModel().config == CocolaConfig()
    with pytest.raises(ConfigError, match="encoder must be one of"):
        CocolaConfig(encoder="resnet")


def _official_state_dict(model: CocolaModel) -> dict[str, torch.Tensor]:
    """Our EfficientNet variant's weights under the official ``CoCola`` module names."""
    names = {"encoder.": "encoder.encoder.model.0.", "project.": "encoder.projection.",
             "bilinear": "similarity.w"}
    state = {}
    for key, value in model.state_dict().items():
        for ours, theirs in names.items():
            if key.startswith(ours):
                state[theirs + key[len(ours):]] = value
    return state


def test_official_lightning_checkpoint_loads_without_its_code(tmp_path, monkeypatch):
    """A Lightning-style ``.ckpt`` pickling classes of modules we do not have (the
    official hyper-parameter enums) loads; its EfficientNet-B0 weights are mapped."""
    import enum
    import types

    module = types.ModuleType("contrastive_model.constants")

    class EmbeddingMode(enum.Enum):
        RANDOM = "random"

    class AttributeDict(dict):
        pass

    for cls in (EmbeddingMode, AttributeDict):
        cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "contrastive_model", types.ModuleType("contrastive_model"))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    torch.manual_seed(0)
    reference = CocolaModel(OFFICIAL_CONFIG).eval()
    with torch.no_grad():
        reference.bilinear.normal_(0, 0.05)
    ckpt = {"epoch": 87, "state_dict": _official_state_dict(reference)
            | {"layer_norm.weight": torch.ones(512), "layer_norm.bias": torch.zeros(512)},
            "hyper_parameters": AttributeDict(embedding_mode=EmbeddingMode.RANDOM)}
    torch.save(ckpt, tmp_path / "COCOLA_HP_v1.ckpt")
    monkeypatch.delitem(sys.modules, module.__name__)
    monkeypatch.delitem(sys.modules, "contrastive_model")

    model = load_cocola(tmp_path / "COCOLA_HP_v1.ckpt")
    assert model.config == OFFICIAL_CONFIG
    feats = torch.randn(2, 2, 64, 501)
    with torch.no_grad():
        for mode in ("both", "percussive"):
            assert torch.equal(model.encode(feats, mode), reference.encode(feats, mode))
    audio = np.random.default_rng(0).standard_normal(SR * 5).astype(np.float32) * 0.1
    official = features(torch.from_numpy(audio)[None], OFFICIAL_CONFIG)
    assert official.shape == (1, 2, 64, 501) and float(official.max()) == 0.0  # dB re max
    assert model.embed(audio, SR, "harmonic").shape == (1, 512)


def test_efficientnet_matches_the_reference_implementation():
    efficientnet = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    reference = efficientnet.EfficientNet.from_name("efficientnet-b0", include_top=False,
                                                    in_channels=2).eval()
    ours = EfficientNetB0(in_channels=2).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 2, 64, 501)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x).flatten(1))


def _mode_norm_model() -> CocolaModel:
    torch.manual_seed(0)
    return CocolaModel(CocolaConfig(channels=(8, 16), embedding_dim=16, mode_norm=True))


def _pairs(count: int = 12) -> torch.Tensor:
    """Feature pairs whose two channels have very different statistics (as h/p do)."""
    feats = torch.randn(count, 2, 2, 64, 40)
    feats[:, :, 1] = feats[:, :, 1] * 3.0 - 6.0
    return feats


def test_mode_norm_evaluates_each_mode_with_its_own_training_statistics():
    model = _mode_norm_model()
    feats = _pairs()
    calibrate_norms(model, feats, count=len(feats), batch=len(feats))
    batch = torch.cat([feats[:, 0], feats[:, 1]])
    for mode in MODES:
        trained = copy.deepcopy(model).train().encode(batch, mode)  # batch statistics
        assert torch.allclose(model.encode(batch, mode), trained, atol=2e-3), mode
    norm = model.mode_norms()[0]
    assert not torch.allclose(norm.statistics("harmonic")[0], norm.statistics("percussive")[0])
    # One shared set of statistics (plain batch norm) cannot match every mode: the failure
    # that per-mode statistics fix.
    plain = CocolaModel(dataclasses.replace(model.config, mode_norm=False))
    plain.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.endswith(("_harmonic", "_percussive"))})
    plain.train()
    with torch.no_grad():
        for mode in MODES:
            plain.encode(batch, mode)
    plain.eval()
    worst = max((plain.encode(batch, mode) - copy.deepcopy(model).train().encode(batch, mode))
                .abs().max().item() for mode in MODES)
    assert worst > 0.05


def test_mode_norm_conversion_and_checkpoints(tmp_path):
    torch.manual_seed(1)
    plain = CocolaModel(CocolaConfig(channels=(8, 16), embedding_dim=16)).eval()
    feats = _pairs(4)[:, 0]
    converted = with_mode_norm(plain)
    assert converted.config.mode_norm and len(converted.mode_norms()) == 2
    for mode in MODES:  # before calibration: the shared statistics, the same scores
        assert torch.allclose(converted.encode(feats, mode), plain.encode(feats, mode))
    calibrate_norms(converted, _pairs())
    path = save_cocola(converted, tmp_path / "c.safetensors")
    loaded = load_cocola(path)
    for mode in MODES:
        assert torch.equal(loaded.encode(feats, mode), converted.encode(feats, mode))
    with pytest.raises(ConfigError, match="mode_norm"):
        calibrate_norms(plain, _pairs())
    with pytest.raises(ConfigError, match="mode_norm needs encoder=cnn"):
        CocolaConfig(encoder="efficientnet_b0", mode_norm=True)


def test_mode_norm_training_exports_calibrated_statistics(corpus, tmp_path):
    overrides = [f"corpus={corpus}", f"out_dir={tmp_path / 'run'}", "train_pairs=32",
                 "valid_pairs=8", "batch_size=8", "steps=4", "valid_every=2",
                 "model.channels=[8,16]", "model.embedding_dim=16", "model.mode_norm=true"]
    trainer = CocolaTrainer(load_config(CocolaTrainConfig, TINY, overrides))
    accuracy = trainer.run(progress=False)
    assert set(accuracy) == set(MODES)
    exported = load_cocola(trainer.export(tmp_path / "c.safetensors"))
    train = torch.load(tmp_path / "run" / "cache_train.pt", weights_only=False)["features"]
    expected = calibrate_norms(copy.deepcopy(trainer.model), train)
    for mode in MODES:
        got = exported.mode_norms()[1].statistics(mode)
        want = expected.mode_norms()[1].statistics(mode)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
