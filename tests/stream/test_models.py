"""`--model` resolution for the streaming front ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stemstream.aot import RouteError
from stemstream.errors import ConfigError
from stemstream.stream.engine import Engine
from stemstream.stream.models import load_stream_model
from stemstream.stream.session import Session, SessionConfig, run_blocks, with_stream_args


def test_random_specs_build_untrained_models_shaped_for_their_codec():
    loaded = load_stream_model("random-tiny-mock", future_frames=-2, chunk_frames=3)
    cfg = loaded.model.config
    assert not loaded.trained
    assert (cfg.future_frames, cfg.chunk_frames) == (-2, 3)
    assert cfg.codebook_size == loaded.codec.codebook_size
    assert cfg.input_dim == loaded.codec.latent_dim


def test_unknown_spec_and_weight_mode_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_stream_model(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="weights must be one of"):
        load_stream_model("random-tiny-mock", weights="fp8")


def test_int8_weights_run_a_session_and_snapshot(tmp_path, monkeypatch):
    monkeypatch.setenv("STEMSTREAM_CACHE_DIR", str(tmp_path / "cache"))
    fp32 = load_stream_model("random-tiny-mock")
    int8 = load_stream_model("random-tiny-mock", weights="int8")
    assert int8.source.endswith("(int8)")
    assert int8.route.name == "onnx" and "int8" in int8.route.engine
    assert int8.model.step_route is not None and fp32.model.step_route is None
    audio = 0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    config = SessionConfig(instrument="bass", temperature=0.0)
    outs = []
    for loaded in (fp32, int8):
        session = Session(loaded.model, loaded.codec, config)
        outs.append(run_blocks(session, audio, 320))
    assert outs[0].shape == outs[1].shape and np.all(np.isfinite(outs[1]))
    session = Session(int8.model, int8.codec, config)
    session.push(audio[:3000])
    session.save(tmp_path / "s.safetensors")  # hashing quantised weights works
    session.load(tmp_path / "s.safetensors")
    # a batched engine over the int8 model runs int8 too, not silently float32
    engine = Engine(int8.model, int8.codec, 2, route=int8.route.name, weights=int8.weights)
    assert int8.weights == "int8" and "int8" in engine.route.engine
    batched = engine.open(config)
    assert np.all(np.isfinite(np.concatenate([batched.push(audio[i : i + 320])
                                              for i in range(0, 4000, 320)])))
    with pytest.raises(RouteError, match="int8 weights run on the onnx route"):
        Engine(int8.model, int8.codec, 2, route="eager", weights="int8")


def test_running_at_another_visibility_warns_and_shares_weights():
    loaded = load_stream_model("random-tiny-mock")
    with pytest.warns(UserWarning, match="not trained for that visibility"):
        other = with_stream_args(loaded.model, 2, 4)
    assert other.config.future_frames == 2 and other.config.chunk_frames == 4
    assert other.heads.weight is loaded.model.heads.weight
    assert loaded.model.config.future_frames == 0  # the original is untouched
    assert with_stream_args(loaded.model, 0, 1) is loaded.model
    with pytest.raises(ConfigError, match="chunk size"):
        with_stream_args(loaded.model, 0, 0)


def _save_streaming(model, codec, path):
    from stemstream import checkpoint
    from stemstream.config import to_dict
    from stemstream.train.loop import MODEL_KIND

    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta = {"kind": MODEL_KIND, "family": "streaming", "model": to_dict(model.config),
            "codec": codec.codec_identity()}
    return checkpoint.save(path, tensors, meta)


def test_default_live_is_the_shipped_live_model_or_warns(monkeypatch, tmp_path):
    from stemstream.stream import models

    ahead = load_stream_model("random-tiny-mock", future_frames=-4)
    path = _save_streaming(ahead.model, ahead.codec, tmp_path / "live.safetensors")
    monkeypatch.setattr(models, "LIVE_MODEL", path)
    live = load_stream_model("default-live")
    assert live.trained and live.source == str(path)
    assert live.model.config.future_frames == -4
    monkeypatch.setattr(models, "LIVE_MODEL", tmp_path / "absent.safetensors")
    monkeypatch.setattr(models, "DEFAULT_MODEL", path)  # "default" stands in for it
    with pytest.warns(UserWarning, match="no live model is shipped"):
        fallback = load_stream_model("default-live")
    assert fallback.source == str(path)


def test_shipped_live_models_are_what_the_docs_say():
    """`default-live` plays ahead (t_f < 0) hearing the beat phase of the frame it decides, in
    one pass (its guidance distilled into its weights); `default-live-v2` is the same network
    sampled with input guidance 3; `default-live-v1` is the earlier live model."""
    live = load_stream_model("default-live")
    config = live.model.config
    assert live.trained and live.source.endswith("streaming-live-distill.safetensors")
    assert config.future_frames == -6 and config.chunk_frames == 1
    assert "beat" in config.input_features
    assert config.beat_lead_seconds == pytest.approx((1 - config.future_frames) / 50)
    assert live.guidance == 1
    guided = load_stream_model("default-live-v2")
    assert guided.source.endswith("streaming-live-beat.safetensors") and guided.guidance == 3
    same = ("backbone", "future_frames", "input_features", "beat_lead_seconds", "input_encoder")
    assert all(getattr(guided.model.config, f) == getattr(config, f) for f in same)
    earlier = load_stream_model("default-live-v1")
    assert earlier.source.endswith("streaming-live.safetensors")
    assert earlier.model.config.future_frames < 0 and not earlier.model.config.input_features


def test_shipped_file_models_are_what_the_docs_say():
    """`default` is the self-distilled listener (one pass, t_f = +100 ms); `default-v4`, the
    GPU-distilled model it replaced, and `default-v3`, the guided model both learned from,
    share its network; a name that is not shipped lists the ones that are."""
    default = load_stream_model("default")
    config = default.model.config
    assert default.trained and default.source.endswith("streaming-listen-self-distill.safetensors")
    assert config.future_frames == 5 and config.chunk_frames == 1 and default.guidance == 1
    fourth = load_stream_model("default-v4")
    assert fourth.source.endswith("streaming-listen-gpu-distill.safetensors")
    third = load_stream_model("default-v3")
    assert third.source.endswith("streaming-listen-more.safetensors") and third.guidance == 2
    assert fourth.guidance == 1
    same = ("backbone", "num_codebooks", "future_frames", "input_encoder", "input_window")
    for earlier in (fourth, third):
        assert all(getattr(earlier.model.config, f) == getattr(config, f) for f in same)
    differ = [not torch.equal(a, b) for a, b in zip(default.model.state_dict().values(),
                                                    fourth.model.state_dict().values(),
                                                    strict=True)]
    assert any(differ)
    with pytest.raises(ConfigError, match="default-v4, random-cpu"):
        load_stream_model("default-v9")
