"""Input guidance: the unconditional half of a guided stream is the model hearing no input,
generation samples from ``u + w (c - u)`` of the teacher-forced logits, ``w = 1`` is plain
sampling, and ``input_dropout`` trains the unconditional half (training only)."""

from __future__ import annotations

import pytest
import torch

import stemstream.model.streaming as streaming
from stemstream.errors import ConfigError
from stemstream.guidance import format_guidance, parse_guidance
from stemstream.model.sampling import SamplingConfig, guided_logits
from stemstream.model.streaming import StreamingDecoder, StreamingDecoderConfig
from stemstream.model.transformer import TransformerConfig

K, V, D_IN, T = 4, 32, 16, 12


def _model(t_f: int, k: int, input_dropout: float = 0.0) -> StreamingDecoder:
    torch.manual_seed(0)
    cfg = StreamingDecoderConfig(
        backbone=TransformerConfig.preset("tiny"), num_codebooks=K, codebook_size=V,
        input_dim=D_IN, future_frames=t_f, chunk_frames=k, input_encoder="conv",
        input_window=4, input_dropout=input_dropout,
    )
    model = StreamingDecoder(cfg).eval()
    with torch.no_grad():
        model.gate.fill_(0.7)
        model.no_input.normal_(0.0, 1.0)  # zero at init: make "no input" a distinct vector
        for param in model.input_encoder.parameters():
            param.normal_(0.0, 0.3)
    return model


def _batch(t_f: int):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, D_IN, T + max(t_f, 0), generator=gen)
    y = torch.randint(0, V, (2, K, T), generator=gen)
    return x, y, torch.tensor([3, 14])


def _sampled_logits(model, x, forced, inst, guidance, monkeypatch, temperature=1.0):
    """The logits generation samples from, per generated position ``[B, S, K, V]``, with
    the tokens forced to ``forced`` (delayed ``[B, K, S]``)."""
    seen = []
    original = streaming.sample_tokens

    def spy(logits, *args, **kwargs):
        seen.append(logits)
        return original(logits, *args, **kwargs)

    monkeypatch.setattr(streaming, "sample_tokens", spy)
    k = model.config.chunk_frames
    sampling = SamplingConfig(temperature=temperature, guidance=guidance)
    state = model.new_state(inst, max_steps=64, guided=sampling.guided)
    with torch.no_grad():
        for c in range(0, forced.shape[-1] - k + 1, k):
            model.generate_chunk(state, x, sampling, forced=forced[:, :, c: c + k],
                                 input_complete=True)
    monkeypatch.undo()
    return torch.stack(seen, dim=1)


def _teacher_forced(t_f: int, k: int):
    """A model, its input, delayed true tokens and instruments, and its teacher-forced logits
    hearing the input (``c``) and hearing nothing (``u``)."""
    model = _model(t_f, k)
    x, y, inst = _batch(t_f)
    with torch.no_grad():
        c = model(x, y, inst).logits
        u = model(x, y, inst, hide_input=True).logits
    return model, x, model.delay.apply(y), inst, c, u


@pytest.mark.parametrize("t_f", [-3, 0, 3])
@pytest.mark.parametrize("k", [1, 3])
def test_guided_generation_samples_from_guided_teacher_forced_logits(t_f, k, monkeypatch):
    model, x, delayed, inst, conditional, unconditional = _teacher_forced(t_f, k)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)  # the input matters
    sampled = _sampled_logits(model, x, delayed, inst, 2.5, monkeypatch)
    expected = guided_logits(conditional, unconditional, 2.5)[:, : sampled.shape[1]]
    torch.testing.assert_close(sampled, expected, atol=1e-4, rtol=0)
    # w = 0 is the model without its input: the input is not heard at all
    other = torch.randn_like(x)
    deaf = _sampled_logits(model, x, delayed, inst, 0.0, monkeypatch)
    deaf_other = _sampled_logits(model, other, delayed, inst, 0.0, monkeypatch)
    torch.testing.assert_close(deaf, deaf_other, atol=1e-5, rtol=0)


def test_guidance_one_is_plain_sampling(monkeypatch):
    model = _model(2, 1)
    x, y, inst = _batch(2)
    steps = model.delay.num_steps(T)
    outputs = []
    for guided in (False, True):
        state = model.new_state(inst, max_steps=64, guided=guided)
        generator = torch.Generator().manual_seed(5)
        with torch.no_grad():
            chunks = [model.generate_chunk(state, x, SamplingConfig(), generator,
                                           input_complete=True) for _ in range(steps)]
        outputs.append(torch.cat(chunks, dim=-1))
    assert torch.equal(outputs[0], outputs[1])


def test_guidance_needs_a_guided_state():
    model = _model(0, 1)
    x, _, inst = _batch(0)
    state = model.new_state(inst, max_steps=8)
    with pytest.raises(ConfigError, match="guided=True"):
        model.generate_chunk(state, x, SamplingConfig(guidance=3.0), input_complete=True)


@pytest.mark.parametrize(("t_f", "k"), [(-3, 1), (3, 3)])
def test_per_codebook_guidance_mixes_each_codebook_by_its_own_weight(t_f, k, monkeypatch):
    model, x, delayed, inst, c, u = _teacher_forced(t_f, k)
    weights = (4.0, 1.0, 0.0, 2.5)
    sampled = _sampled_logits(model, x, delayed, inst, weights, monkeypatch)
    for q, w in enumerate(weights):
        expected = (u + w * (c - u))[:, : sampled.shape[1], q]
        torch.testing.assert_close(sampled[:, :, q], expected, atol=1e-4, rtol=0)
    # one weight repeated per codebook is that weight
    same = _sampled_logits(model, x, delayed, inst, (2.5,) * K, monkeypatch)
    assert torch.equal(same, _sampled_logits(model, x, delayed, inst, 2.5, monkeypatch))
    state = model.new_state(inst, max_steps=8, guided=True)
    with pytest.raises(ConfigError, match="3 guidance weights for 4 codebooks"):
        model.generate_chunk(state, x, SamplingConfig(guidance=(2.0, 1.0, 1.0)),
                             input_complete=True)


@pytest.mark.parametrize(("given", "parsed"), [
    (2, 2.0), ("2", 2.0), ("6,2,2,2", (6.0, 2.0, 2.0, 2.0)), ([6, 2.5], (6.0, 2.5)),
    ((3.0,), 3.0), (" 1.5 , 0 ", (1.5, 0.0)),
])
def test_guidance_is_a_number_or_one_per_codebook(given, parsed):
    assert parse_guidance(given) == parsed
    if not isinstance(given, str):  # text is for front ends to parse
        assert SamplingConfig(guidance=given).guidance == parsed
    assert format_guidance(parsed) == "/".join(f"{w:g}" for w in
                                               (parsed if isinstance(parsed, tuple) else [parsed]))
    assert SamplingConfig(guidance=[1, 1]).guided is False
    assert SamplingConfig(guidance=[1, 2]).guided is True


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "2", True, [], (2.0, -1.0),
                                 [2, "3"]])
def test_bad_guidance_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="guidance"):
        SamplingConfig(guidance=bad)


@pytest.mark.parametrize("bad", ["x", "2,,1", "", "6,-2", "nan"])
def test_bad_guidance_text_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="guidance"):
        parse_guidance(bad)


def test_input_dropout_hides_the_input_in_training_only():
    model = _model(2, 1, input_dropout=1.0)
    x, y, inst = _batch(2)
    x.requires_grad_(True)
    model.train()
    (grad,) = torch.autograd.grad(model(x, y, inst).loss, x)
    assert float(grad.abs().sum()) == 0.0
    model.eval()
    (grad,) = torch.autograd.grad(model(x, y, inst).loss, x)
    assert float(grad.abs().sum()) > 0.0
    with pytest.raises(ConfigError, match="input_dropout"):
        StreamingDecoderConfig(input_dropout=1.5)
