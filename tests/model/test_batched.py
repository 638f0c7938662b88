"""Batched streams: many streams advanced in one forward yield exactly what each yields alone
(greedy and sampled with per-stream generators), across joins, leaves, skipped steps and ring
wraps; a released stream keeps going alone."""

from __future__ import annotations

import pytest
import torch

from stemstream.errors import ConfigError
from stemstream.model.batched import StreamPool, StreamStep
from stemstream.model.sampling import SamplingConfig
from stemstream.model.streaming import StreamingDecoder, StreamingDecoderConfig
from stemstream.model.transformer import TransformerConfig

K, V, D_IN, WINDOW = 4, 32, 16, 12


def _model(t_f: int, encoder: str = "conv", k: int = 1) -> StreamingDecoder:
    torch.manual_seed(0)
    cfg = StreamingDecoderConfig(
        backbone=TransformerConfig.preset("tiny"), num_codebooks=K, codebook_size=V,
        input_dim=D_IN, future_frames=t_f, chunk_frames=k, input_encoder=encoder,
        input_window=4,
    )
    model = StreamingDecoder(cfg).eval()
    with torch.no_grad():
        model.gate.fill_(0.7)
        model.no_input.normal_(0.0, 1.0)
        if model.input_encoder is not None:
            for param in model.input_encoder.parameters():
                param.normal_(0.0, 0.3)
    return model


def _alone(model, x, inst, steps, temperature, seed):
    state = model.new_state(torch.tensor([inst]), window=WINDOW)
    generator = torch.Generator().manual_seed(seed)
    sampling = SamplingConfig(temperature=temperature)
    with torch.no_grad():
        return torch.cat([model.generate_chunk(state, x, sampling, generator,
                                               input_complete=True) for _ in range(steps)], -1)


@pytest.mark.parametrize("encoder", ["frame", "conv"])
@pytest.mark.parametrize("t_f", [-3, 0, 2])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_streams_equal_each_stream_alone(t_f, encoder, temperature):
    model = _model(t_f, encoder)
    gen = torch.Generator().manual_seed(3)
    steps = 30  # > WINDOW: every ring wraps
    inputs = [torch.randn(1, D_IN, steps + 4, generator=gen) for _ in range(4)]
    insts = [3, 14, 0, 7]
    # (joins at tick, leaves after tick, skips these ticks): streams at different positions
    plan = [(0, 99, ()), (5, 99, (9, 10)), (2, 10, ()), (12, 99, (13,))]
    expected = [_alone(model, x, i, steps, temperature, seed)
                for seed, (x, i) in enumerate(zip(inputs, insts, strict=True))]
    pool = StreamPool(model, rows=3, window=WINDOW)
    states = [None] * 4
    produced = [[] for _ in range(4)]
    generators = [torch.Generator().manual_seed(seed) for seed in range(4)]
    sampling = SamplingConfig(temperature=temperature)
    for tick in range(60):
        batch, owners = [], []
        for n, (join, leave, skips) in enumerate(plan):
            if tick == join:
                states[n] = model.new_state(torch.tensor([insts[n]]), window=WINDOW)
                pool.adopt(states[n])
            state = states[n]
            if state is None or pool_has_left(states, n) or tick in skips:
                continue
            if tick > leave:
                pool.release(state)
                states[n] = "left"
                continue
            if state.step < steps:
                batch.append(StreamStep(state, inputs[n], 0, True, sampling, generators[n]))
                owners.append(n)
        for n, chunk in zip(owners, pool.step(batch), strict=True):
            produced[n].append(chunk[..., None])
    for n in range(4):
        got = torch.cat(produced[n], dim=-1)
        assert got.shape[-1] == (steps if plan[n][1] == 99 else plan[n][1] - plan[n][0] + 1)
        assert torch.equal(got, expected[n][..., : got.shape[-1]]), n
    assert pool.free_rows == 0  # the leaver's row was reused by the late joiner


def pool_has_left(states, n):
    return states[n] == "left"


def test_a_released_stream_continues_alone_and_its_row_is_zeroed():
    model = _model(2)
    x = torch.randn(1, D_IN, 24, generator=torch.Generator().manual_seed(1))
    expected = _alone(model, x, 5, 20, 0.0, 0)
    state = model.new_state(torch.tensor([5]), window=WINDOW)
    pool = StreamPool(model, rows=2, window=WINDOW)
    row = pool.adopt(state)
    sampling = SamplingConfig(temperature=0.0)
    head = [pool.step([StreamStep(state, x, 0, True, sampling)])[0][..., None]
            for _ in range(8)]
    pool.release(state)
    assert float(pool.kv[:, :, row].abs().sum()) == 0.0 and pool.free_rows == 2
    with torch.no_grad():
        tail = [model.generate_chunk(state, x, sampling, input_complete=True)
                for _ in range(12)]
    assert torch.equal(torch.cat(head + tail, dim=-1), expected)


def test_pool_refuses_what_it_cannot_batch():
    with pytest.raises(ConfigError, match="k = 1"):
        StreamPool(_model(0, k=2), rows=2, window=WINDOW)
    model = _model(0)
    pool = StreamPool(model, rows=1, window=WINDOW)
    with pytest.raises(ConfigError, match="ring"):
        pool.adopt(model.new_state(torch.tensor([1]), window=WINDOW + 1))
    with pytest.raises(ConfigError, match="takes two"):  # one row: no room for a guided one
        pool.adopt(model.new_state(torch.tensor([1]), window=WINDOW, guided=True))
    with pytest.raises(ConfigError, match="batch 1"):
        pool.adopt(model.new_state(torch.tensor([1, 2]), window=WINDOW))
    pool.adopt(model.new_state(torch.tensor([1]), window=WINDOW))
    with pytest.raises(ConfigError, match="full"):
        pool.adopt(model.new_state(torch.tensor([1]), window=WINDOW))


@pytest.mark.parametrize("guidance", [1.0, 2.0])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_offline_generation_of_many_inputs_equals_each_alone(guidance, temperature):
    """``generate_codes_many`` (the evaluation's batched generation) gives every input what
    ``generate_codes`` gives it alone: batched for k = 1, one after another otherwise."""
    from stemstream.stream.offline import generate_codes, generate_codes_many

    sampling = SamplingConfig(temperature=temperature, guidance=guidance)
    gen = torch.Generator().manual_seed(5)
    frames = [20, 20, 14]  # streams of different lengths finish at different steps
    inputs = [torch.randn(1, D_IN, n + 3, generator=gen) for n in frames]
    insts = [2, 9, 2]
    for k in (1, 3):
        model = _model(2, k=k)
        alone = [generate_codes(model, x, torch.tensor([i]), sampling,
                                torch.Generator().manual_seed(seed), num_frames=n)
                 for seed, (x, i, n) in enumerate(zip(inputs, insts, frames, strict=True))]
        many = generate_codes_many(model, inputs, insts, sampling,
                                   [torch.Generator().manual_seed(s) for s in range(3)], frames)
        for got, want, n in zip(many, alone, frames, strict=True):
            assert got.shape == (1, K, n)
            assert torch.equal(got, want)
