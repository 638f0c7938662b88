"""The offline prefix decoder: cached decoding == full forward, offline visibility by gradients,
valid sampling, a learnable task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stemstream.errors import ConfigError
from stemstream.model.prefix import PrefixDecoder, PrefixDecoderConfig
from stemstream.model.sampling import SamplingConfig
from stemstream.model.transformer import TransformerConfig

K, V, D_IN, T = 3, 16, 8, 10


def _model(seed: int = 0) -> PrefixDecoder:
    torch.manual_seed(seed)
    cfg = PrefixDecoderConfig(
        backbone=TransformerConfig.preset("tiny"),
        num_codebooks=K,
        codebook_size=V,
        input_dim=D_IN,
    )
    return PrefixDecoder(cfg).eval()


def _batch(t_in: int = T, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, D_IN, t_in, generator=gen)
    y = torch.randint(0, V, (2, K, T), generator=gen)
    return x, y, torch.tensor([3, 14])


@pytest.mark.parametrize("t_in", [T, 7])
def test_cached_teacher_forced_decoding_equals_full_forward(t_in):
    model = _model()
    x, y, inst = _batch(t_in)
    with torch.no_grad():
        full = model(x, y, inst)
    delayed = full.targets  # (B, K, S)
    state, logits = model.prefill(x, inst, num_frames=T)
    cached = [logits]
    for step in range(delayed.shape[-1] - 1):
        cached.append(model.decode_step(state, delayed[:, :, step]))
    torch.testing.assert_close(torch.stack(cached, dim=1), full.logits, atol=1e-5, rtol=0)


def test_every_step_sees_every_input_frame():
    model = _model()
    x, y, inst = _batch()
    x.requires_grad_(True)
    logits = model(x, y, inst).logits  # (B, S, K, V)
    for step in (0, logits.shape[1] - 1):
        (grad,) = torch.autograd.grad(logits[:, step].square().sum(), x, retain_graph=True)
        per_frame = grad.abs().sum(dim=(0, 1))  # (T_in,)
        assert bool((per_frame > 0).all()), step


def test_loss_ignores_pads_and_heads_cover_codec_tokens_only():
    model = _model()
    x, y, inst = _batch()
    with torch.no_grad():
        out = model(x, y, inst)
    assert out.logits.shape == (2, T + K - 1, K, V)
    valid = out.targets != model.delay.pad_id
    ref = F.cross_entropy(out.logits.permute(0, 2, 1, 3)[valid], out.targets[valid])
    assert float(out.loss) == pytest.approx(float(ref), abs=1e-6)


def test_generation_returns_valid_codes():
    model = _model()
    x, _, inst = _batch()
    gen = torch.Generator().manual_seed(0)
    codes = model.generate(x, inst, SamplingConfig(temperature=1.0, top_k=5), gen)
    assert codes.shape == (2, K, T) and codes.dtype == torch.long
    assert bool(((codes >= 0) & (codes < V)).all())
    again = model.generate(
        x, inst, SamplingConfig(temperature=1.0, top_k=5), torch.Generator().manual_seed(0)
    )
    assert torch.equal(codes, again)
    assert model.generate(x, inst, num_frames=4).shape == (2, K, 4)


def test_config_validates_and_round_trips():
    with pytest.raises(ConfigError, match="codebook_size"):
        PrefixDecoderConfig(codebook_size=0)
    cfg = _model().config
    assert PrefixDecoderConfig.from_dict(cfg.to_dict()) == cfg


def test_loss_falls_on_a_learnable_task():
    """Output code at frame t = the class one-hot encoded in input frame T - 1 - t (offline:
    the first output frames need the last input frames)."""
    torch.manual_seed(0)
    cfg = PrefixDecoderConfig(
        backbone=TransformerConfig.preset("tiny"), num_codebooks=2, codebook_size=8, input_dim=8
    )
    model = PrefixDecoder(cfg)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        codes = torch.randint(0, 8, (8, 1, 12)).expand(8, 2, 12).contiguous()
        x = F.one_hot(codes[:, 0].flip(-1), 8).float().transpose(1, 2)
        out = model(x, codes, torch.zeros(8, dtype=torch.long))
        optim.zero_grad()
        out.loss.backward()
        optim.step()
        losses.append(float(out.loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10
