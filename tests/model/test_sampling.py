import math

import pytest
import torch

from stemstream.errors import ConfigError
from stemstream.model.sampling import (
    SamplingConfig,
    cosine_mask_ratio,
    cosine_schedule,
    masked_logits,
    num_to_mask,
    sample_streams,
    sample_tokens,
    stemgen_confidence,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _chi_square(samples: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=probs.numel()).double()
    expected = probs.double() * samples.numel()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_special_tokens_never_sampled(temperature):
    vocab = 16
    logits = torch.randn(2000, 4, vocab + 2, generator=_gen(0))
    logits[..., vocab:] = 1000.0  # specials dominate every row
    tokens = sample_tokens(logits, temperature, top_k=200, generator=_gen(1), valid_vocab=vocab)
    assert tokens.shape == (2000, 4)
    assert tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < vocab
    # Even if every codec logit is -inf a special id is not produced.
    logits[..., :vocab] = float("-inf")
    greedy = sample_tokens(logits, 0.0, valid_vocab=vocab)
    assert int(greedy.max()) < vocab


def test_top_k_restricts_support():
    vocab, top_k = 50, 5
    base = torch.randn(vocab, generator=_gen(2))
    top_ids = torch.randperm(vocab, generator=_gen(3))[:top_k]
    base[top_ids] = 4.0 + 0.1 * torch.arange(top_k, dtype=torch.float)
    # Outside the top-k the ids are only a little less likely, so without top-k they would
    # show up often in 4000 draws.
    base[base < 4.0] = 3.5
    logits = base.expand(4000, 1, vocab)
    tokens = sample_tokens(logits, 1.0, top_k, generator=_gen(4), valid_vocab=vocab)
    assert set(tokens.unique().tolist()) == set(top_ids.tolist())


def test_top_k_larger_than_vocab_clamps():
    logits = torch.randn(8, 2, 10, generator=_gen(5))
    tokens = sample_tokens(logits, 1.0, top_k=10_000, generator=_gen(6), valid_vocab=7)
    assert tokens.shape == (8, 2) and int(tokens.max()) < 7


def test_temperature_zero_is_argmax():
    logits = torch.randn(16, 4, 1030, generator=_gen(7))
    logits[..., 1024:] += 50.0
    expected = logits[..., :1024].argmax(dim=-1)
    assert torch.equal(sample_tokens(logits, 0.0, valid_vocab=1024), expected)
    assert torch.equal(sample_tokens(logits, 0.0, top_k=1, valid_vocab=1024), expected)
    # top_k = 1 at any temperature is also the argmax.
    assert torch.equal(sample_tokens(logits, 3.0, top_k=1, valid_vocab=1024), expected)


def test_same_seed_same_samples_different_seed_differs():
    logits = torch.randn(32, 4, 1025, generator=_gen(8))
    first = sample_tokens(logits, generator=_gen(123), valid_vocab=1024)
    again = sample_tokens(logits, generator=_gen(123), valid_vocab=1024)
    other = sample_tokens(logits, generator=_gen(124), valid_vocab=1024)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_distribution_matches_softmax(temperature):
    vocab, draws = 8, 40_000
    base = torch.randn(vocab, generator=_gen(9))
    logits = torch.cat([base, torch.full((1,), 30.0)]).expand(draws, 1, vocab + 1)
    tokens = sample_tokens(logits, temperature, vocab, generator=_gen(10), valid_vocab=vocab)
    probs = torch.softmax(base.double() / temperature, dim=0)
    # 7 degrees of freedom: P(chi2 > 24.3) = 0.001.
    assert _chi_square(tokens.flatten(), probs) < 24.3
    # The test can fail: the same samples are far from the softmax at another temperature.
    wrong = torch.softmax(base.double() / (temperature * 2), dim=0)
    assert _chi_square(tokens.flatten(), wrong) > 100


def test_masked_logits():
    logits = torch.randn(2, 3, 6, generator=_gen(11))
    original = logits.clone()
    out = masked_logits(logits, 4)
    assert torch.equal(out[..., :4], original[..., :4])
    assert torch.all(out[..., 4:] == float("-inf"))
    assert torch.equal(logits, original)  # input untouched


def test_sample_tokens_errors():
    logits = torch.randn(2, 4, 10)
    with pytest.raises(ConfigError, match="shape"):
        sample_tokens(torch.randn(4, 10), valid_vocab=8)
    with pytest.raises(ConfigError, match="valid_vocab"):
        sample_tokens(logits, valid_vocab=11)
    with pytest.raises(ConfigError, match="valid_vocab"):
        sample_tokens(logits, valid_vocab=0)
    with pytest.raises(ConfigError, match="floating"):
        sample_tokens(torch.zeros(2, 4, 10, dtype=torch.long), valid_vocab=8)
    with pytest.raises(ConfigError, match="temperature"):
        sample_tokens(logits, -0.1, valid_vocab=8)
    with pytest.raises(ConfigError, match="top_k"):
        sample_tokens(logits, 1.0, 0, valid_vocab=8)


def test_sampling_config():
    config = SamplingConfig()
    assert (config.temperature, config.top_k) == (1.0, 200)
    assert not config.greedy
    assert SamplingConfig(temperature=0.0).greedy
    logits = torch.randn(4, 4, 1025, generator=_gen(12))
    assert torch.equal(
        config.sample(logits, valid_vocab=1024, generator=_gen(13)),
        sample_tokens(logits, 1.0, 200, _gen(13), valid_vocab=1024),
    )
    with pytest.raises(ConfigError, match="temperature"):
        SamplingConfig(temperature=-1.0)
    with pytest.raises(ConfigError, match="temperature"):
        SamplingConfig(temperature=float("nan"))
    with pytest.raises(ConfigError, match="top_k"):
        SamplingConfig(top_k=0)


def test_stemgen_confidence_follows_eq4_schedule():
    log_probs = -torch.rand(2, 5, generator=_gen(14)) * 3
    # temp_start = 8 over 4 iterations, annealed linearly to 0 at the last one.
    expected_temps = [6.0, 4.0, 2.0, 0.0]
    for step, temp in enumerate(expected_temps):
        conf = stemgen_confidence(log_probs, step, 4, 8.0, generator=_gen(100 + step))
        uniform = torch.rand(2, 5, generator=_gen(100 + step)).double()
        gumbel = -torch.log(-torch.log(uniform))
        expected = log_probs.double() + temp * gumbel
        torch.testing.assert_close(conf.double(), expected, rtol=1e-6, atol=1e-5)
    last = stemgen_confidence(log_probs, 3, 4, 8.0, generator=_gen(0))
    assert torch.equal(last, log_probs)


def test_stemgen_noise_is_standard_gumbel():
    # temp = 2 * (1 - 1/2) = 1, so conf - log p is the raw noise.
    noise = stemgen_confidence(torch.zeros(200_000), 0, 2, 2.0, generator=_gen(15)).double()
    euler_gamma = 0.5772156649
    assert abs(float(noise.mean()) - euler_gamma) < 0.01
    assert abs(float(noise.var()) - math.pi**2 / 6) < 0.03
    same = stemgen_confidence(torch.zeros(200_000), 0, 2, 2.0, generator=_gen(15)).double()
    assert torch.equal(noise, same)


def test_stemgen_confidence_errors():
    with pytest.raises(ConfigError, match="step"):
        stemgen_confidence(torch.zeros(2, 3), 4, 4, 8.0)
    with pytest.raises(ConfigError, match="temp_start"):
        stemgen_confidence(torch.zeros(2, 3), 0, 4, -1.0)
    with pytest.raises(ConfigError, match="floating"):
        stemgen_confidence(torch.zeros(2, 3, dtype=torch.long), 0, 4, 1.0)


def test_cosine_schedule():
    assert cosine_mask_ratio(0.0) == 1.0
    assert cosine_mask_ratio(1.0) == 0.0
    assert cosine_schedule(0, 1) == 0.0
    assert cosine_schedule(31, 32) == 0.0
    assert cosine_schedule(0, 2) == pytest.approx(math.sqrt(0.5))
    assert cosine_schedule(0, 3) == pytest.approx(math.sqrt(3) / 2)  # cos(pi/6)
    values = [cosine_schedule(s, 32) for s in range(32)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert values[0] < 1.0
    with pytest.raises(ConfigError):
        cosine_schedule(32, 32)
    with pytest.raises(ConfigError):
        cosine_mask_ratio(1.5)


def test_num_to_mask():
    # floor(100 * cos(pi/2 * r)) for r = 1/4, 2/4, 3/4, then everything unmasked.
    assert [num_to_mask(100, s, 4) for s in range(4)] == [92, 70, 38, 0]
    # At least one token is unmasked and at least one kept per iteration before the last.
    assert num_to_mask(3, 8, 10) == 1
    assert num_to_mask(3, 0, 10, num_masked=2) == 1
    assert num_to_mask(3, 0, 10, num_masked=1) == 1
    assert num_to_mask(3, 0, 10, num_masked=0) == 0
    assert num_to_mask(0, 0, 10) == 0
    with pytest.raises(ConfigError, match="num_masked"):
        num_to_mask(3, 0, 10, num_masked=4)
    with pytest.raises(ConfigError, match="num_tokens"):
        num_to_mask(-1, 0, 10)


def test_streams_sampled_together_draw_exactly_what_each_draws_alone():
    """An engine samples all sessions with one top-k (`sample_streams`): each stream's tokens
    equal `sample_tokens` on its logits alone with a generator in the same state, whatever
    mix of settings (greedy, top-k 1 to all ids) the streams have."""
    torch.manual_seed(0)
    settings = [(1.0, 200), (0.0, 200), (0.7, 5), (1.0, 200), (1.3, 1), (1.0, 5000), (0.7, 5)]
    logits = [torch.randn(1, 4, 1030) * 3 for _ in settings]
    together = sample_streams(logits, settings,
                              [torch.Generator().manual_seed(i) for i in range(len(settings))],
                              valid_vocab=1024)
    for i, ((temperature, top_k), row) in enumerate(zip(settings, logits, strict=True)):
        alone = sample_tokens(row, temperature, top_k, torch.Generator().manual_seed(i),
                              valid_vocab=1024)
        assert together[i].shape == (1, 4) and torch.equal(together[i], alone), i
        assert int(together[i].max()) < 1024
    with pytest.raises(ConfigError):
        sample_streams(logits[:1], [(-1.0, 5)], [None], valid_vocab=1024)
