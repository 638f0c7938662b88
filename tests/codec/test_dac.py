"""Our DAC: config validation, presets, init, training pass, quantizer dropout."""

from __future__ import annotations

import pytest
import torch
from codec_helpers import make_audio, tiny_dac

from stemstream.codec import DAC, DAC_PRESETS, DACConfig
from stemstream.codec.layers import WNConv1d, WNConvTranspose1d
from stemstream.errors import ConfigError

PRESET_SHAPES = {
    # name: (sample_rate, hop, frame rate, K, codebook size, latent dim, causal)
    "tiny": (16000, 10, 1600.0, 4, 32, 16, True),
    "dac_16khz": (16000, 320, 50.0, 12, 1024, 1024, False),
    "dac_24khz": (24000, 320, 75.0, 32, 1024, 1024, False),
    "dac_44khz": (44100, 512, 44100 / 512, 9, 1024, 1024, False),
    "causal_32khz": (32000, 640, 50.0, 9, 4096, 1024, True),
}


@pytest.mark.parametrize("name", PRESET_SHAPES)
def test_presets(name: str) -> None:
    rate, hop, frame_rate, levels, size, latent, causal = PRESET_SHAPES[name]
    config = DACConfig.preset(name)
    assert config == DAC_PRESETS[name]
    with torch.device("meta"):  # full-size models without allocating them
        model = DAC(config)
    assert (model.sample_rate, model.hop_length, model.num_codebooks) == (rate, hop, levels)
    assert (model.codebook_size, model.latent_dim) == (size, latent)
    assert model.frame_rate == pytest.approx(frame_rate)
    assert config.causal_encoder is config.causal_decoder is causal


def test_official_44khz_parameter_count() -> None:
    """descript-audio-codec's 44 kHz generator has about 76.7M parameters."""
    with torch.device("meta"):
        model = DAC(DACConfig.preset("dac_44khz"))
    count = sum(p.numel() for p in model.parameters())
    assert 70e6 < count < 80e6


def test_preset_overrides_and_unknown() -> None:
    assert DACConfig.preset("tiny", n_codebooks=2).n_codebooks == 2
    with pytest.raises(ConfigError, match="unknown DAC preset"):
        DACConfig.preset("huge")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"decoder_rates": (5, 4)}, "same product"),
        ({"decoder_dim": 6}, "divisible"),
        ({"codebook_dim": (4, 4)}, "one value per codebook"),
        ({"quantizer_dropout": 1.5}, "quantizer_dropout"),
        ({"codebook_size": 1}, "codebook_size"),
        ({"encoder_rates": ()}, "encoder_rates"),
    ],
)
def test_config_validation(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DACConfig.preset("tiny", **changes)


def test_config_roundtrip_and_derived_units() -> None:
    config = DACConfig.preset("tiny")
    assert DACConfig.from_dict(config.to_dict()) == config
    assert DACConfig(encoder_dim=8, encoder_rates=(2, 2), decoder_rates=(4,)).latent_dim == 32
    assert config.hop_length == 10 and config.output_offset == 9
    assert DACConfig.preset("tiny", ignore_left_crop=True).output_offset == 0
    with pytest.raises(ConfigError, match="unknown config key"):
        DACConfig.from_dict({"n_q": 3})


def test_init_has_zero_biases_and_unit_alphas() -> None:
    model = DAC(DACConfig.preset("tiny"))
    convs = [m for m in model.modules() if isinstance(m, (WNConv1d, WNConvTranspose1d))]
    assert convs and all(torch.all(m.bias == 0) for m in convs)
    for conv in convs:  # g = ||v||: the effective weight starts as the raw init
        assert torch.allclose(conv.weight, conv.weight_v, atol=1e-6)
    # Even untrained, the output depends on the input.
    a, b = make_audio(samples=400, seed=1), make_audio(samples=400, seed=2)
    with torch.no_grad():
        assert not torch.allclose(model(a).audio, model(b).audio)


def test_state_dict_uses_legacy_weight_norm_names() -> None:
    keys = list(
        DAC(DACConfig.preset("tiny", causal_encoder=False, causal_decoder=False)).state_dict()
    )
    assert "encoder.block.0.weight_g" in keys and "encoder.block.0.weight_v" in keys
    assert "quantizer.quantizers.0.in_proj.weight_g" in keys
    assert "quantizer.quantizers.3.codebook.weight" in keys
    assert "decoder.model.1.block.1.weight_v" in keys  # first transposed conv
    assert not any(key.endswith(".weight") and "codebook" not in key for key in keys)


def test_training_forward_and_gradients() -> None:
    model = tiny_dac(causal=True).train()
    wave = make_audio(batch=4, samples=203)
    out = model(wave)
    assert out.audio.shape == wave.shape
    assert out.codes.shape == (4, 4, 21) and out.z.shape == (4, 16, 21)
    assert out.latents.shape == (4, 4 * 4, 21)
    loss = (out.audio - wave).abs().mean() + out.commitment_loss + out.codebook_loss
    loss.backward()
    first_conv = model.encoder.block[1]
    assert first_conv.weight_v.grad is not None and first_conv.weight_v.grad.abs().sum() > 0
    assert model.quantizer.quantizers[0].codebook.weight.grad.abs().sum() > 0


def test_quantizer_dropout_uses_fewer_levels_in_training() -> None:
    model = tiny_dac(causal=True, quantizer_dropout=1.0).train()
    z = model.encoder(make_audio(batch=64, samples=100))
    torch.manual_seed(0)
    dropped = model.quantizer(z).z_q
    model.eval()
    full = model.quantizer(z).z_q
    differs = (dropped - full).flatten(1).abs().amax(1) > 1e-6
    assert 0 < int(differs.sum()) < 64  # levels drawn from 1..K, so some keep all K


def test_eval_forward_matches_encode_decode() -> None:
    model = tiny_dac(causal=True)
    wave = make_audio(samples=200)
    with torch.no_grad():
        out = model(wave)
        assert torch.equal(out.codes, model.encode(wave))
        assert (out.audio - model.decode(out.codes)).abs().max() < 1e-6
        assert (out.z - model.embed(out.codes)).abs().max() < 1e-5
