"""Our COCOLA: features, modes, training (resumable), export/loading, and metric validity on
a planted task (each track has its own tempo and key; positives share both)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stemstream.config import load_config
from stemstream.errors import ConfigError, StemstreamError
from stemstream.eval.cocola import (
    CocolaConfig,
    CocolaModel,
    cocola_score,
    features,
    load_cocola,
    mask_mode,
    windows,
)
from stemstream.eval.cocola_train import CocolaTrainConfig, CocolaTrainer, pair_accuracy

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
    assert pair_accuracy(model, valid) == pytest.approx(accuracy)
    # Scoring whole clips: a stem scores higher against its own mix than against another's.
    own = band(7.0, 100.0, 80.0, 1)
    other = band(7.0, 160.0, 170.0, 2)
    stem = own["S01"][1]
    mix_own = own["S00"][1] + own["S02"][1]
    mix_other = other["S00"][1] + other["S02"][1]
    assert cocola_score(model, stem, mix_own, SR) > cocola_score(model, stem, mix_other, SR)


def test_loading_errors(tmp_path):
    with pytest.raises(ConfigError, match="EfficientNet"):
        load_cocola(tmp_path / "official.ckpt")
    with pytest.raises(StemstreamError, match="no COCOLA checkpoint"):
        load_cocola(tmp_path / "missing.safetensors")
    from stemstream import checkpoint

    checkpoint.save(tmp_path / "codec.safetensors", {"x": torch.zeros(1)}, {"kind": "codec"})
    with pytest.raises(ConfigError, match="not a COCOLA checkpoint"):
        load_cocola(tmp_path / "codec.safetensors")
    assert CocolaModel().config == CocolaConfig()
