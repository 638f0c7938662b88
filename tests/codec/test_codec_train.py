"""Codec training: the loss falls, kill-and-resume is bit-identical (GAN on and off),
checkpoint rotation and refusal, codebook statistics, validation metrics, and the
evaluation module (metrics, baselines, report, spectrogram figure)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from test_framecodec import tiny_frame_codec

from stemstream.checkpoint import CheckpointError
from stemstream.codec.evaluate import (
    Clip,
    clip_metrics,
    collect_clips,
    evaluate_codec,
    mu_law,
    noise_like,
    spectrogram_figure,
)
from stemstream.codec.train import CodecTrainConfig, CodecTrainer, codebook_stats
from stemstream.config import load_config
from stemstream.data.slakh import SlakhCorpus
from stemstream.data.synth import SynthConfig, synthesize_corpus
from stemstream.errors import ConfigError

TINY_YAML = Path(__file__).resolve().parents[2] / "configs" / "codec" / "tiny.yaml"
SR = 16000
# A tiny discriminator: two periods and one STFT band stack of 4 channels.
TINY_GAN = ["gan.enabled=true", "gan.channels=4", "gan.periods=[2, 3]", "gan.fft_sizes=[256]"]


class Corpus(NamedTuple):
    root: Path
    split: str  # a split holding tracks (used for training and validation alike)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Three rendered chorales (a few seconds to build); splits are assigned by chorale."""
    root = tmp_path_factory.mktemp("codec_corpus")
    config = SynthConfig(num_tracks=3, seed=1, sources=("chorales",), song_seconds=10)
    synthesize_corpus(root, config, jobs=1, progress=False)
    corpus = SlakhCorpus(root)
    split = next(name for name in corpus.splits if corpus.tracks(name))
    return Corpus(root, split)


def train_config(corpus: Corpus, out_dir: Path, *overrides: str) -> CodecTrainConfig:
    """``configs/codec/tiny.yaml`` on the test corpus: batches of 2 half-second crops."""
    base = [
        f"corpus={corpus.root}",
        f"out_dir={out_dir}",
        f"train_split={corpus.split}",
        f"valid_split={corpus.split}",
        "device=cpu",
        "batch_size=2",
    ]
    return load_config(CodecTrainConfig, TINY_YAML, [*base, *overrides])


def read_metrics(out_dir: Path) -> list[dict[str, float]]:
    """The rows of ``out_dir/metrics.jsonl``."""
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def assert_state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same keys and bit-identical tensors."""
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"tensors differ: {different[:5]}"


# ------------------------------------------------------------------------------ training


def test_config_file_and_overrides(corpus: Corpus, tmp_path: Path) -> None:
    config = train_config(corpus, tmp_path, "codec.latent_dim=8", "gan.channels=4")
    assert config.codec == {"arch": "frame", "preset": "tiny", "latent_dim": 8}
    assert config.crops.crop_seconds == 0.5 and config.gan.channels == 4
    with pytest.raises(ConfigError, match="unknown config key"):
        train_config(corpus, tmp_path, "bogus=1")


def test_overfitting_one_batch_reduces_the_loss(corpus: Corpus, tmp_path: Path) -> None:
    config = train_config(
        corpus, tmp_path, "lr=3e-3", "warmup_steps=1", "steps=60", "codec.quantizer_dropout=0.0"
    )
    trainer = CodecTrainer(config)
    wave = trainer.train_data.batch(2, np.random.default_rng(0))
    mel = []
    for _ in range(60):
        metrics = trainer.train_step(wave)
        trainer.step += 1
        mel.append(metrics["loss/mel"])
    assert all(math.isfinite(value) for value in mel)
    assert np.mean(mel[-5:]) < 0.6 * np.mean(mel[:5])
    assert {"loss/mel", "loss/stft", "loss/commitment", "loss/total", "grad_norm"} <= set(metrics)


def test_tiny_training_run_logs_and_its_loss_falls(corpus: Corpus, tmp_path: Path) -> None:
    """``tiny.yaml`` as shipped (40 steps, batch 4): fresh crops every step, logged every
    step; the training mel loss and the fixed-validation mel loss both fall."""
    trainer = CodecTrainer(train_config(corpus, tmp_path, "log_every=1", "batch_size=4"))
    before = trainer.validate()["valid/mel_k4"]
    result = trainer.run(progress=False)
    rows = read_metrics(tmp_path)
    mel = [row["loss/mel"] for row in rows if "loss/mel" in row]
    assert len(mel) == 40
    assert np.mean(mel[-10:]) < 0.95 * np.mean(mel[:10])
    assert result["valid/mel_k4"] < 0.9 * before
    assert all(row["speed/x_realtime"] > 0 for row in rows if "loss/mel" in row)
    assert (tmp_path / "config.yaml").is_file()
    names = [path.name for path in trainer.checkpoint_paths()]
    assert names == ["step_0000020.safetensors", "step_0000040.safetensors"]


@pytest.mark.parametrize("gan_start", [None, 2, 4], ids=["no-gan", "gan", "gan-after-resume"])
def test_kill_and_resume_is_bit_identical(
    corpus: Corpus, tmp_path: Path, gan_start: int | None
) -> None:
    """Six steps straight == three steps, a fresh trainer, three more (dead-code restarts
    every two steps; the discriminator joining before or after the interruption)."""
    gan = gan_start is not None
    steps = [
        "steps=6",
        "log_every=1",
        "valid_every=1000",
        "checkpoint_every=1000",
        "dead_code_every=2",
    ]
    if gan:
        steps += [*TINY_GAN, f"gan.start_step={gan_start}"]
    straight = CodecTrainer(train_config(corpus, tmp_path / "a", *steps))
    straight.run(progress=False)
    first = CodecTrainer(train_config(corpus, tmp_path / "b", *steps))
    first.run(progress=False, stop_after=3)
    assert first.step == 3
    resumed = CodecTrainer(train_config(corpus, tmp_path / "b", *steps))
    resumed.run(progress=False)
    assert resumed.step == 6

    assert_state_dicts_equal(straight.codec.state_dict(), resumed.codec.state_dict())
    assert_state_dicts_equal(
        straight.optimizer.state_dict()["state"][0], resumed.optimizer.state_dict()["state"][0]
    )
    if gan:
        assert_state_dicts_equal(straight.disc.state_dict(), resumed.disc.state_dict())

    def losses(out_dir: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["loss/total"]) for r in read_metrics(out_dir) if "loss/total" in r]

    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    if gan:
        assert "loss/discriminator" in read_metrics(tmp_path / "a")[-2]


def test_checkpoint_rotation_validation_metrics_and_refusal(corpus: Corpus, tmp_path: Path) -> None:
    overrides = ["steps=5", "checkpoint_every=1", "keep_checkpoints=2", "codec.num_codebooks=6"]
    trainer = CodecTrainer(train_config(corpus, tmp_path, *overrides))
    valid = trainer.run(progress=False)
    names = [path.name for path in trainer.checkpoint_paths()]
    assert names == ["step_0000004.safetensors", "step_0000005.safetensors"]

    for key in ("valid/mel_k4", "valid/mel_k6", "valid/si_sdr_k4", "valid/si_sdr_k6"):
        assert math.isfinite(valid[key])
    for k in range(6):
        assert 1.0 <= valid[f"codebook/perplexity_{k}"] <= 64
        assert 0 < valid[f"codebook/usage_{k}"] <= 1
    assert "codebook/collapsed" in valid

    other = train_config(corpus, tmp_path, *overrides[:-1], "codec.num_codebooks=4")
    with pytest.raises(CheckpointError, match="was trained with codec .*num_codebooks.: 6"):
        CodecTrainer(other).run(progress=False)


def test_freeze_tokens_trains_the_decoder_and_keeps_every_code(
    corpus: Corpus, tmp_path: Path
) -> None:
    """Decoder-only fine-tuning: encoder, quantizer and codebooks bit-identical, codes of
    any audio unchanged, decoder weights moved, frame-magnitude loss logged and falling;
    and it resumes bit-identically like full training."""
    first = CodecTrainer(train_config(corpus, tmp_path / "init", "steps=3"))
    first.run(progress=False)
    init = first.checkpoint_paths()[-1]
    steps = [
        f"init_from={init}",
        "freeze_tokens=true",
        "decoder_codebooks=[2, 4]",
        "losses.frame_magnitude=5",
        "lr=3e-3",
        "steps=30",
        "log_every=1",
        "valid_every=1000",
        "checkpoint_every=1000",
        "dead_code_every=2",
    ]
    trainer = CodecTrainer(train_config(corpus, tmp_path / "a", *steps))
    trainer.run(progress=False)
    before, after = first.codec.state_dict(), trainer.codec.state_dict()
    frozen = [k for k in before if k.startswith(("enc_", "quantizer"))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["dec_out.weight"], after["dec_out.weight"])
    wave = trainer.train_data.batch(2, np.random.default_rng(7))
    with torch.no_grad():
        assert torch.equal(first.codec.encode(wave), trainer.codec.encode(wave))
    rows = [r["loss/frame_magnitude"] for r in read_metrics(tmp_path / "a") if "loss/total" in r]
    assert len(rows) == 30 and np.mean(rows[-5:]) < np.mean(rows[:5])

    part = CodecTrainer(train_config(corpus, tmp_path / "b", *steps[:5], "steps=6", *steps[6:]))
    part.run(progress=False, stop_after=3)
    resumed = CodecTrainer(train_config(corpus, tmp_path / "b", *steps[:5], "steps=6", *steps[6:]))
    resumed.run(progress=False)
    straight = CodecTrainer(train_config(corpus, tmp_path / "c", *steps[:5], "steps=6", *steps[6:]))
    straight.run(progress=False)
    assert_state_dicts_equal(straight.codec.state_dict(), resumed.codec.state_dict())


def test_decoder_only_options_are_validated(corpus: Corpus, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only used with freeze_tokens"):
        train_config(corpus, tmp_path, "decoder_codebooks=[4]")
    with pytest.raises(ConfigError, match="need codec.arch: frame"):
        train_config(corpus, tmp_path, "codec={arch: dac, preset: tiny}", "freeze_tokens=true")


def test_codebook_stats_on_known_codes() -> None:
    # [B=2, K=3, T=2] with codebooks of 4: level 0 uses {0, 1} evenly, level 1 all four
    # once, level 2 only entry 3.
    codes = torch.tensor([[[0, 0], [0, 1], [3, 3]], [[1, 1], [2, 3], [3, 3]]])
    usage, perplexity = codebook_stats(codes, codebook_size=4)
    assert usage == pytest.approx([0.5, 1.0, 0.25])
    assert perplexity == pytest.approx([2.0, 4.0, 1.0])
    skewed = torch.tensor([[[0, 0, 0, 1]]])
    _, (value,) = codebook_stats(skewed, codebook_size=8)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert value == pytest.approx(math.exp(entropy))


# ---------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def clips(corpus: Corpus) -> list[Clip]:
    """Two one-second clips of one track: the mixture and a stem."""
    found = collect_clips(corpus.root, corpus.split, SR, num_tracks=1, seconds=1.0)
    assert [clip.kind for clip in found] == ["mix", "stem"]
    assert all(clip.audio.shape == (SR,) and clip.audio.dtype == np.float32 for clip in found)
    return found


def test_metrics_of_identity_and_baselines(clips: list[Clip]) -> None:
    audio = clips[0].audio
    same = clip_metrics(audio, audio, SR)
    assert same["mel_l1"] == pytest.approx(0.0, abs=1e-6)
    assert same["chroma"] == pytest.approx(1.0, abs=1e-4)
    assert same["onset_f"] == 1.0 and same["beat_f"] == 1.0
    assert same["mr_stft"] == pytest.approx(0.0, abs=1e-4)
    assert same["si_sdr"] > 60
    law, noise = clip_metrics(audio, mu_law(audio), SR), clip_metrics(audio, noise_like(audio), SR)
    assert law["mel_l1"] < 0.3 and noise["mel_l1"] > law["mel_l1"] + 0.5
    assert noise["chroma"] < law["chroma"] - 0.1
    assert noise["beat_f"] < law["beat_f"] - 0.3
    assert noise["si_sdr"] < law["si_sdr"] - 10


def test_evaluate_codec_reports_codec_and_baselines(clips: list[Clip], tmp_path: Path) -> None:
    codec = tiny_frame_codec()
    report = evaluate_codec(codec, clips, codebooks=[2, 4], progress=False)
    systems = {"codec k=2", "codec k=4", "mu-law 8 bit", "low-pass 4 kHz", "low-pass 2 kHz"}
    assert set(report.rows) == systems | {"white noise"}
    for kinds in report.rows.values():
        assert set(kinds) == {"mix", "stem"}
        assert set(kinds["mix"]) == {"mel_l1", "chroma", "onset_f", "beat_f", "mr_stft", "si_sdr"}
    assert report.num_clips == {"mix": 1, "stem": 1}
    assert len(report.usage) == codec.num_codebooks
    mix = {system: kinds["mix"] for system, kinds in report.rows.items()}
    assert mix["mu-law 8 bit"]["mel_l1"] < mix["white noise"]["mel_l1"]
    table = report.markdown()
    assert "| codec k=4 | mix (1) |" in table and "per-codebook usage" in table

    figure = spectrogram_figure(codec, clips, tmp_path / "figs" / "spec.png", num_codebooks=4)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
