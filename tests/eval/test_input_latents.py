"""Every front end feeds a model the same input latents for the same audio: `generate`,
`accompany` (the real-time session), and `eval run` give exactly
``codec.input_latents(wave, K)`` — the embedding of the model's ``K`` levels, not of all the
codec's levels (which `generate` once did) — followed, for a model that hears input features,
by :func:`stemstream.features.features` of the same audio."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemstream.codec.dump import dump_corpus
from stemstream.codec.mock import MockCodec
from stemstream.codec.track_dump import dump_tracks
from stemstream.config import load_config
from stemstream.data.windows import WindowConfig
from stemstream.eval.run import EvalConfig, run_eval
from stemstream.features import features
from stemstream.model.streaming import StreamingDecoder
from stemstream.stream.accompany import accompany_file
from stemstream.stream.offline import generate_file
from stemstream.train import ModelTrainConfig, ModelTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from slakh_fixture import write_fake_slakh  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml"
LEVELS = 2  # of the mock codec's 4


FEATURES = ("onset", "chroma", "beat")


@pytest.fixture(scope="module", params=["latents", "features"])
def setup(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("latents")
    corpus = write_fake_slakh(root / "slakh")
    extra = []
    if request.param == "latents":
        dump_corpus(corpus, MockCodec().eval(), root / "dump", WindowConfig(window_seconds=1.0),
                    splits=("train", "validation"), windows_per_track=2, progress=False)
    else:  # features need a whole-track dump
        dump_tracks(corpus, MockCodec().eval(), root / "dump", splits=("train", "validation"),
                    progress=False)
        extra = ["crop_seconds=1.0", f"model.input_features=[{','.join(FEATURES)}]"]
    config = load_config(ModelTrainConfig, TINY, [
        f"dump_dir={root / 'dump'}", f"out_dir={root / 'run'}", "steps=1",
        f"model.num_codebooks={LEVELS}", "model.input_encoder=conv", *extra])
    trainer = ModelTrainer(config)
    trainer.run(progress=False)
    return corpus, trainer.export(root / "model.safetensors"), tuple(
        trainer.model_config.input_features)


@pytest.fixture()
def heard(monkeypatch):
    """Every ``(input_offset, input_latents)`` a streaming decoder is handed."""
    calls: list[tuple[int, torch.Tensor]] = []
    original = StreamingDecoder.generate_chunk

    def spy(self, state, input_latents, *args, input_offset=0, **kwargs):
        calls.append((input_offset, input_latents.detach().clone()))
        return original(self, state, input_latents, *args, input_offset=input_offset, **kwargs)

    monkeypatch.setattr(StreamingDecoder, "generate_chunk", spy)
    return calls


def _reference(path: Path, names: tuple[str, ...]) -> torch.Tensor:
    codec = MockCodec().eval()
    wave, rate = sf.read(path, dtype="float32")
    assert rate == codec.sample_rate
    with torch.no_grad():
        latents = codec.input_latents(torch.from_numpy(wave)[None, None], LEVELS)[0]
    if not names:
        return latents
    extra = features(wave, rate, codec.hop_length, names)[:, : latents.shape[-1]]
    return torch.cat([latents, torch.from_numpy(extra)])


def _check(calls, reference: torch.Tensor, atol: float = 0.0,
           feature_atol: float | None = None) -> None:
    """Every call's input equals the reference's frames (the features, channels after the
    latent width, within ``feature_atol`` when given)."""
    assert calls
    frames = 0
    split = MockCodec().latent_dim if feature_atol is not None else reference.shape[0]
    for offset, latents in calls:
        got = latents[0]
        frames = max(frames, offset + got.shape[-1])
        want = reference[:, offset : offset + got.shape[-1]]
        torch.testing.assert_close(got[:split], want[:split], atol=atol, rtol=0)
        if feature_atol is not None:
            torch.testing.assert_close(got[split:], want[split:], atol=feature_atol, rtol=0)
    assert frames >= reference.shape[-1] - 1


def test_generate_and_accompany_hear_the_models_levels(setup, heard, tmp_path):
    _, model, names = setup
    path = tmp_path / "in.wav"
    rng = np.random.default_rng(0)
    sf.write(path, (0.2 * rng.standard_normal(16000)).astype(np.float32), 16000)
    reference = _reference(path, names)
    all_levels = MockCodec().eval().input_latents(
        torch.from_numpy(sf.read(path, dtype="float32")[0])[None, None], 4)[0]
    # the bug this guards against is visible
    assert not torch.allclose(reference[: all_levels.shape[0]], all_levels)

    generate_file(model, path, "Bass", tmp_path / "gen.wav")
    _check(heard, reference)
    heard.clear()
    accompany_file(path, "Bass", tmp_path / "acc.wav", model=model)
    _check(heard, reference, atol=1e-5)  # the session encodes block by block


def test_eval_run_hears_the_models_levels(setup, fake_metrics, heard, tmp_path):
    corpus, model, names = setup
    config = EvalConfig(corpus=corpus, out=tmp_path / "run", systems={"m": str(model)},
                        split="train", num_examples=1, seconds=1.0, fad_embedding="codec",
                        look_ahead_seconds=0.0)
    run_eval(config, progress=False)
    (folder,) = [p for p in (tmp_path / "run").rglob("input.wav")]
    # input.wav is 16-bit PCM: the codes survive the rounding, continuous features move by
    # ~1e-4 (the model heard the unrounded audio)
    _check(heard, _reference(folder, names), feature_atol=2e-3 if names else None)
