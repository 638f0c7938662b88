"""Codec files: safetensors save/load, descript-audio-codec ``.pth`` loading and its safety."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from codec_helpers import make_audio, tiny_dac, tiny_mock

from stemstream.codec import CodecError, DACConfig, load_codec, load_dac_checkpoint, save_codec
from stemstream.codec.checkpoint import dac_config_from_kwargs


def dac_kwargs(config: DACConfig) -> dict:
    """``DAC.save``-style kwargs: lists, DAC's own names."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}


def write_dac_pth(path: Path, model, kwargs: dict | None = None) -> Path:
    kwargs = dac_kwargs(model.config) if kwargs is None else kwargs
    torch.save({"state_dict": model.state_dict(), "metadata": {"kwargs": kwargs}}, path)
    return path


@pytest.mark.parametrize("make", [tiny_mock, tiny_dac])
def test_safetensors_roundtrip(tmp_path: Path, make) -> None:
    codec = make()
    path = save_codec(codec, tmp_path / "codec.safetensors")
    loaded = load_codec(path)
    assert type(loaded) is type(codec) and not loaded.training
    assert loaded.codec_identity() == codec.codec_identity()
    wave = make_audio(samples=300)
    codes = codec.encode(wave)
    assert torch.equal(loaded.encode(wave), codes)
    assert torch.equal(loaded.decode(codes), codec.decode(codes))
    assert not (tmp_path / "codec.safetensors.tmp").exists()


def test_safetensors_errors(tmp_path: Path) -> None:
    path = save_codec(tiny_dac(), tmp_path / "codec.safetensors")
    data = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(os.urandom(256))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF  # one weight byte: the file still parses, its hash does not match
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    cases = {
        "missing.safetensors": "not found",
        "truncated.safetensors": "not a readable safetensors",
        "garbage.safetensors": "not a readable safetensors",
        "foreign.safetensors": "not a stemstream codec",
        "flipped.safetensors": "hash",
    }
    for name, message in cases.items():
        with pytest.raises(CodecError, match=message):
            load_codec(tmp_path / name)


def test_load_dac_checkpoint_roundtrip(tmp_path: Path) -> None:
    model = tiny_dac(causal=True)
    loaded = load_dac_checkpoint(write_dac_pth(tmp_path / "w.pth", model))
    assert loaded.config == model.config and not loaded.training
    wave = make_audio(samples=300)
    assert torch.equal(loaded.encode(wave), model.encode(wave))


def test_dac_checkpoint_with_numpy_scalars_loads(tmp_path: Path) -> None:
    """Allow-listed numpy scalars (plain numbers) in the kwargs are fine."""
    model = tiny_dac(causal=False)
    kwargs = dac_kwargs(model.config)
    kwargs["sample_rate"] = np.int64(16000)
    kwargs["encoder_rates"] = [np.int64(r) for r in kwargs["encoder_rates"]]
    kwargs["quantizer_dropout"] = np.float64(0.5)
    loaded = load_dac_checkpoint(write_dac_pth(tmp_path / "w.pth", model, kwargs))
    assert loaded.config.sample_rate == 16000 and loaded.config.quantizer_dropout == 0.5


def test_load_non_causal_checkpoint_as_causal(tmp_path: Path) -> None:
    model = tiny_dac(causal=False)
    loaded = load_dac_checkpoint(write_dac_pth(tmp_path / "w.pth", model), causal=True)
    assert loaded.config.causal_encoder and loaded.config.causal_decoder
    ours = [p for _, p in sorted(loaded.named_parameters(), key=lambda kv: kv[0])]
    assert sum(p.numel() for p in ours) == sum(p.numel() for p in model.parameters())
    assert torch.equal(loaded.encoder.block[1].weight_v, model.encoder.block[0].weight_v)
    loaded.streaming_encoder()  # causal now, so it streams


class Exploit:
    """Unpickling this would run a command; weights_only must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_dac_checkpoint_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = tiny_dac(causal=True)
    good = write_dac_pth(tmp_path / "good.pth", model)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pth")
    torch.save({"state_dict": {}, "metadata": {}}, tmp_path / "nokwargs.pth")
    with open(tmp_path / "exploit.pth", "wb") as handle:
        pickle.dump({"state_dict": {}, "metadata": {"kwargs": Exploit()}}, handle, protocol=2)
    torch.save(
        {"state_dict": model.state_dict(), "metadata": {"kwargs": Exploit()}},
        tmp_path / "exploit_zip.pth",
    )
    kwargs = dac_kwargs(model.config)
    write_dac_pth(tmp_path / "unknown.pth", model, {**kwargs, "n_q": 3, "wibble": 1})
    write_dac_pth(tmp_path / "s4.pth", model, {**kwargs, "use_s4": True})
    write_dac_pth(tmp_path / "shape.pth", model, {**kwargs, "codebook_size": 64})
    write_dac_pth(tmp_path / "layout.pth", model, {**kwargs, "causal_encoder": False})
    cases = {
        "missing.pth": "not found",
        "truncated.pth": "not a readable torch checkpoint",
        "garbage.pth": "not a readable torch checkpoint",
        "foreign.pth": "needs 'state_dict' and 'metadata'",
        "nokwargs.pth": "no metadata.kwargs",
        "exploit.pth": "refusing to unpickle",
        "exploit_zip.pth": "refusing to unpickle.*system",
        "unknown.pth": "unknown descript-audio-codec kwargs: n_q, wibble",
        "s4.pth": "unsupported DAC variant: use_s4=True",
        "shape.pth": "wrong shape",
        "layout.pth": "missing",
    }
    for name, message in cases.items():
        with pytest.raises(CodecError, match=message):
            load_dac_checkpoint(tmp_path / name)
    assert not (tmp_path / "pwned").exists()


def test_dac_config_from_kwargs() -> None:
    config = dac_config_from_kwargs({"latent_dim": None, "quantizer_dropout": False})
    assert config == DACConfig()
    accepted = dac_config_from_kwargs({"use_s4": False, "frame_indep_encoder": False})
    assert accepted == DACConfig()
    with pytest.raises(CodecError, match="invalid DAC kwargs"):
        dac_config_from_kwargs({"encoder_rates": [2, 4], "decoder_rates": [3]})


def test_register_codec_class(tmp_path: Path) -> None:
    from stemstream.codec import MockCodec, MockCodecConfig
    from stemstream.codec.checkpoint import CODEC_CLASSES, register_codec_class

    class OtherMock(MockCodec):
        pass

    with pytest.raises(CodecError, match="cannot save codec class OtherMock"):
        save_codec(OtherMock(), tmp_path / "x.safetensors")
    register_codec_class(OtherMock, MockCodecConfig)
    try:
        loaded = load_codec(save_codec(OtherMock(), tmp_path / "x.safetensors"))
        assert type(loaded) is OtherMock
    finally:
        CODEC_CLASSES.pop("OtherMock")
