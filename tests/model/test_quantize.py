"""int8 weights for CPU inference: the direct-kernel Linear equals torch.ao's dynamic Linear,
and an int8 streaming decoder generates (close to fp32, with a working KV cache)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from stemstream.model.quantize import Int8Linear, convert_weights, num_weights, quantize_int8
from stemstream.model.sampling import SamplingConfig
from stemstream.model.streaming import StreamingDecoder, StreamingDecoderConfig
from stemstream.model.transformer import TransformerConfig


def _decoder(encoder: str = "frame") -> StreamingDecoder:
    torch.manual_seed(0)
    config = StreamingDecoderConfig(backbone=TransformerConfig.preset("tiny"), num_codebooks=4,
                                    codebook_size=32, input_dim=16, future_frames=3,
                                    input_encoder=encoder)
    model = StreamingDecoder(config).eval()
    with torch.no_grad():
        for param in [] if model.input_encoder is None else model.input_encoder.parameters():
            param.normal_(0.0, 0.1)  # its taps start at zero: make them matter
    return model


def test_int8_linear_equals_the_dynamic_quantised_module():
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear},
                                                           dtype=torch.qint8)[0]
    mine = quantize_int8(linear)
    assert isinstance(mine, Int8Linear)
    x = torch.randn(3, 5, 64)
    assert torch.equal(mine(x), reference(x))
    assert mine(x).dtype == torch.float32
    # int8 is an approximation of the float layer, a close one
    torch.testing.assert_close(mine(x), linear(x), atol=0.05, rtol=0.05)
    assert mine.weight.shape == linear.weight.shape


@pytest.mark.parametrize("encoder", ["frame", "conv"])
def test_int8_decoder_replaces_every_linear_and_generates_like_fp32(encoder):
    model = _decoder(encoder)
    int8 = convert_weights(model, "int8")
    assert convert_weights(model, "fp32") is model
    assert not any(type(m) is nn.Linear for m in int8.modules())
    assert sum(isinstance(m, Int8Linear) for m in int8.modules()) == sum(
        type(m) is nn.Linear for m in model.modules())
    assert num_weights(int8) == num_weights(model) == sum(p.numel() for p in model.parameters())
    latents = torch.randn(1, 16, 40)
    inst = torch.tensor([3])
    states = [m.new_state(inst, window=16) for m in (model, int8)]  # ring caches
    greedy = SamplingConfig(temperature=0.0)
    with torch.no_grad():
        for _ in range(30):
            fp32, q8 = (m._forward_positions(s, latents, [s.step], [s.step + 2])
                        for m, s in zip((model, int8), states, strict=True))
            torch.testing.assert_close(q8, fp32, atol=0.1, rtol=0.1)
            for m, s in zip((model, int8), states, strict=True):
                m.generate_chunk(s, latents, greedy)
    with pytest.raises(ValueError, match="unknown weight mode"):
        convert_weights(model, "int4")
