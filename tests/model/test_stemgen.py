"""StemGen masked LM: training masks follow the cosine schedule, input dropout rate, the
sampler's unmasking schedule, valid tokens, classifier-free guidance, a learnable task."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stemstream.errors import ConfigError
from stemstream.model.sampling import SamplingConfig, num_to_mask
from stemstream.model.stemgen import StemGenConfig, StemGenModel, StemGenSchedule
from stemstream.model.transformer import TransformerConfig

K, V, D_IN, T = 3, 16, 8, 12
SCHEDULE = StemGenSchedule(steps_per_level=(8, 5, 40), noise_temperatures=(8.0, 4.0, 4.0))


def _model(seed: int = 0, **overrides) -> StemGenModel:
    torch.manual_seed(seed)
    cfg = StemGenConfig(
        backbone=TransformerConfig.preset("tiny"),
        num_codebooks=K,
        codebook_size=V,
        input_dim=D_IN,
        schedule=SCHEDULE,
        **overrides,
    )
    return StemGenModel(cfg).eval()


def _batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, D_IN, T, generator=gen)
    y = torch.randint(0, V, (2, K, T), generator=gen)
    return x, y, torch.tensor([3, 14])


def test_training_masks_follow_the_cosine_schedule():
    model = _model()
    num_frames = 16
    plan = model.plan_masks(20000, num_frames, generator=torch.Generator().manual_seed(0))
    q = torch.arange(K)[None, :]
    above = q > plan.level[:, None]
    below = q < plan.level[:, None]
    per_level = plan.mask.sum(-1)  # (B, K)
    assert bool((per_level[above] == num_frames).all())
    assert bool((per_level[below] == 0).all())
    rows = torch.arange(plan.level.shape[0])
    count = per_level[rows, plan.level]
    expected = torch.ceil(plan.ratio * num_frames).long().clamp(1, num_frames)
    assert torch.equal(count, expected)
    # ratio = cos(pi/2 u), u ~ U[0, 1): E[ratio] = 2/pi and acos(ratio) * 2/pi is uniform.
    assert float(plan.ratio.mean()) == pytest.approx(2 / math.pi, abs=0.01)
    progress = torch.acos(plan.ratio) * 2 / math.pi
    for quantile in (0.1, 0.5, 0.9):
        assert float(progress.quantile(quantile)) == pytest.approx(quantile, abs=0.02)
    freq = torch.bincount(plan.level, minlength=K).float() / plan.level.shape[0]
    torch.testing.assert_close(freq, torch.full((K,), 1 / K), atol=0.02, rtol=0)


def test_input_dropout_rate_is_twenty_percent():
    model = _model()
    gen = torch.Generator().manual_seed(0)
    drops = torch.cat([model.plan_masks(500, 4, generator=gen).drop_input for _ in range(20)])
    assert float(drops.float().mean()) == pytest.approx(0.2, abs=0.015)
    assert not bool(_model(input_dropout=0.0).plan_masks(500, 4).drop_input.any())


def test_loss_covers_masked_cells_of_the_drawn_level_only():
    model = _model()
    x, y, inst = _batch()
    with torch.no_grad():
        out = model(x, y, inst, generator=torch.Generator().manual_seed(3))
    rows = torch.arange(2)
    in_loss = out.plan.mask[rows, out.plan.level]
    assert torch.equal(out.targets != model.config.mask_id, in_loss)
    ref = F.cross_entropy(out.logits[in_loss], y[rows, out.plan.level][in_loss])
    assert float(out.loss) == pytest.approx(float(ref), abs=1e-6)


def test_sampler_unmasks_per_schedule_and_ends_with_valid_tokens():
    model = _model()
    x, _, inst = _batch()
    seen = []
    original = model.guided_logits

    def spy(input_latents, codes, inst_, level, scale):
        seen.append((level, int((codes[:, level] == model.config.mask_id).sum(-1)[0])))
        assert bool((codes[:, :level] < V).all())  # lower levels are decided
        assert bool((codes[:, level + 1 :] == model.config.mask_id).all())  # higher all masked
        return original(input_latents, codes, inst_, level, scale)

    model.guided_logits = spy
    codes = model.generate(x, inst, SamplingConfig(top_k=8), torch.Generator().manual_seed(0))
    expected = []
    for level, steps in enumerate(SCHEDULE.steps_per_level):
        steps = min(steps, T)  # 40 -> 12 for the last level
        masked = T
        for step in range(steps):
            expected.append((level, masked))
            masked = num_to_mask(T, step, steps, masked)
        assert masked == 0
    assert seen == expected
    assert codes.shape == (2, K, T) and codes.dtype == torch.long
    assert bool(((codes >= 0) & (codes < V)).all())
    model.guided_logits = original
    again = model.generate(x, inst, SamplingConfig(top_k=8), torch.Generator().manual_seed(0))
    assert torch.equal(codes, again)


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional():
    model = _model()
    x, y, inst = _batch()
    codes = y.clone()
    codes[:, 1, ::2] = model.config.mask_id
    codes[:, 2] = model.config.mask_id
    with torch.no_grad():
        cond = model.frame_logits(x, codes, inst)[:, 1]
        uncond = model.frame_logits(x, codes, inst, torch.ones(2, dtype=torch.bool))[:, 1]
        torch.testing.assert_close(
            model.guided_logits(x, codes, inst, 1, 1.0), cond, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            model.guided_logits(x, codes, inst, 1, 0.0), uncond, atol=1e-5, rtol=0
        )
        guided = model.guided_logits(x, codes, inst, 1, 2.0)
        torch.testing.assert_close(guided, uncond + 2.0 * (cond - uncond), atol=1e-5, rtol=0)
    assert not torch.allclose(cond, uncond)


def test_config_validates_and_round_trips():
    with pytest.raises(ConfigError, match="levels"):
        StemGenConfig(num_codebooks=3)  # default schedule has 4 levels
    with pytest.raises(ConfigError, match="input_dropout"):
        StemGenConfig(input_dropout=1.0)
    with pytest.raises(ConfigError, match="one entry per level"):
        StemGenSchedule(steps_per_level=(1, 2), noise_temperatures=(1.0,))
    cfg = _model().config
    assert StemGenConfig.from_dict(cfg.to_dict()) == cfg


def test_loss_falls_on_a_learnable_task():
    """Both levels copy the class one-hot encoded in the same input frame."""
    torch.manual_seed(0)
    cfg = StemGenConfig(
        backbone=TransformerConfig.preset("tiny"),
        num_codebooks=2,
        codebook_size=8,
        input_dim=8,
        schedule=StemGenSchedule(steps_per_level=(4, 4), noise_temperatures=(1.0, 1.0)),
    )
    model = StemGenModel(cfg)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        codes = torch.randint(0, 8, (16, 1, 12)).expand(16, 2, 12).contiguous()
        x = F.one_hot(codes[:, 0], 8).float().transpose(1, 2)
        out = model(x, codes, torch.zeros(16, dtype=torch.long), generator=gen)
        optim.zero_grad()
        out.loss.backward()
        optim.step()
        losses.append(float(out.loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
