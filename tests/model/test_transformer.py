import math

import pytest
import torch

from stemstream.errors import ConfigError
from stemstream.model.transformer import (
    Transformer,
    TransformerConfig,
    causal_mask_from_positions,
)

TOL = 1e-5


def _model(**overrides: object) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", **overrides)).eval()
    # Non-trivial qk-norm scales so the reference checks they are applied per dimension.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_norm", "k_norm")):
                param.uniform_(0.5, 1.5)
    return model


# --- naive reference: explicit per-head loops, float64, written from the paper's equations ---


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def _rotate_pairs(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x [S, Dh]: rotate each pair (2i, 2i+1) by angle pos * theta^(-2i/Dh)."""
    out = x.clone()
    dh = x.shape[-1]
    for i in range(dh // 2):
        angle = positions.double() * theta ** (-2 * i / dh)
        a, b = x[:, 2 * i], x[:, 2 * i + 1]
        out[:, 2 * i] = a * torch.cos(angle) - b * torch.sin(angle)
        out[:, 2 * i + 1] = a * torch.sin(angle) + b * torch.cos(angle)
    return out


def _ref_attention(sd, prefix, cfg, x, kv_in, positions, mask):
    """x [S, D], kv_in [S_k, D_kv], mask bool [S, S_k]; positions None = no RoPE."""
    h, hkv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = x @ sd[prefix + "wq.weight"].T
    wk, wv = sd[prefix + "wkv.weight"].chunk(2)  # keys and values share one projection
    k, v = kv_in @ wk.T, kv_in @ wv.T
    heads = []
    for head in range(h):
        kv_head = head // (h // hkv)  # repeated KV heads
        qh = _rms(q[:, head * dh : (head + 1) * dh], cfg.norm_eps) * sd[prefix + "q_norm"]
        kh = _rms(k[:, kv_head * dh : (kv_head + 1) * dh], cfg.norm_eps) * sd[prefix + "k_norm"]
        vh = v[:, kv_head * dh : (kv_head + 1) * dh]
        if positions is not None:
            qh, kh = _rotate_pairs(qh, positions, cfg.rope_theta), _rotate_pairs(
                kh, positions, cfg.rope_theta
            )
        scores = (qh @ kh.T) / math.sqrt(dh)
        scores = scores.masked_fill(~mask, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ vh)
    return torch.cat(heads, dim=-1) @ sd[prefix + "wo.weight"].T


def _reference(model, x, positions, mask, memory=None):
    """x [B, S, D]; positions [S]; mask bool [S, S]; returns [B, S, D] in float64."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    outs = []
    for b in range(x.shape[0]):
        h = x[b].double()
        for i in range(cfg.num_layers):
            p = f"layers.{i}."
            n = _rms(h, cfg.norm_eps)
            h = h + _ref_attention(sd, p + "attention.", cfg, n, n, positions, mask)
            if cfg.cross_attention:
                n = _rms(h, cfg.norm_eps)
                mem = memory[b].double()
                full = torch.ones(h.shape[0], mem.shape[0], dtype=torch.bool)
                h = h + _ref_attention(sd, p + "cross_attention.", cfg, n, mem, None, full)
            n = _rms(h, cfg.norm_eps)
            gate = n @ sd[p + "feed_forward.w1.weight"].T
            up = n @ sd[p + "feed_forward.w3.weight"].T
            h = h + (gate * torch.sigmoid(gate) * up) @ sd[p + "feed_forward.w2.weight"].T
        outs.append(_rms(h, cfg.norm_eps))
    return torch.stack(outs)


def _block_mask(seq: int) -> torch.Tensor:
    torch.manual_seed(1)
    mask = torch.rand(seq, seq) < 0.5
    return mask | torch.eye(seq, dtype=torch.bool)  # every query sees at least itself


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("mask_kind", ["default", "tensor", "fn"])
def test_matches_naive_reference(cross: bool, mask_kind: str) -> None:
    model = _model(cross_attention=cross, cross_dim=48 if cross else None)
    seq = 7
    x = torch.randn(2, seq, 64)
    positions = torch.arange(seq) + 5
    memory = torch.randn(2, 3, 48) if cross else None
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    if mask_kind == "default":
        out, mask = model(x, positions, memory=memory), causal
    elif mask_kind == "tensor":
        mask = _block_mask(seq)
        out = model(x, positions, mask=mask, memory=memory)
    else:
        out = model(x, positions, mask=causal_mask_from_positions, memory=memory)
        mask = causal
    ref = _reference(model, x, positions, mask, memory)
    assert (out.double() - ref).abs().max() < TOL


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_gqa_matches_reference_and_cache(num_kv_heads: int) -> None:
    model = _model(num_kv_heads=num_kv_heads)
    x, positions = torch.randn(1, 6, 64), torch.arange(6)
    full = model(x, positions)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    assert (full.double() - _reference(model, x, positions, mask)).abs().max() < TOL
    caches = model.make_caches(1, 6)
    steps = [model(x[:, t : t + 1], positions[t : t + 1], caches=caches) for t in range(6)]
    assert (torch.cat(steps, dim=1) - full).abs().max() < TOL


def test_batched_positions_match_per_row() -> None:
    model = _model()
    x = torch.randn(2, 5, 64)
    positions = torch.stack([torch.arange(5), torch.arange(5) + 100])
    out = model(x, positions)
    for b in range(2):
        assert (out[b] - model(x[b : b + 1], positions[b])[0]).abs().max() < TOL


@pytest.mark.parametrize("block", [1, 3])
@pytest.mark.parametrize("cross", [False, True])
def test_cached_decoding_equals_full_forward(block: int, cross: bool) -> None:
    model = _model(cross_attention=cross)
    seq, prefix = 17, 5
    x, positions = torch.randn(2, seq, 64), torch.arange(seq)
    memory = torch.randn(2, 4, 64) if cross else None
    full = model(x, positions, memory=memory)
    caches = model.make_caches(2, 32)
    outs = [model(x[:, :prefix], positions[:prefix], memory=memory, caches=caches)]
    for start in range(prefix, seq, block):
        stop = min(start + block, seq)
        outs.append(model(x[:, start:stop], positions[start:stop], memory=memory, caches=caches))
    assert (torch.cat(outs, dim=1) - full).abs().max() < TOL


def test_mask_fn_with_cache_equals_full_block_mask() -> None:
    # A chunk mask (a query sees every key of its own and earlier chunks) decoded chunk by
    # chunk through the cache: the MaskFn is evaluated on the positions the cache returns.
    chunk = 3

    def chunk_mask(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (k.unsqueeze(-2) // chunk <= q.unsqueeze(-1) // chunk) & (k.unsqueeze(-2) >= 0)

    model = _model()
    x, positions = torch.randn(1, 12, 64), torch.arange(12)
    full = model(x, positions, mask=chunk_mask(positions, positions))
    caches = model.make_caches(1, 12)
    outs = [
        model(x[:, s : s + chunk], positions[s : s + chunk], mask=chunk_mask, caches=caches)
        for s in range(0, 12, chunk)
    ]
    assert (torch.cat(outs, dim=1) - full).abs().max() < TOL


@pytest.mark.parametrize("num_layers", [1, 2])
def test_sliding_window_equals_recompute_over_window(num_layers: int) -> None:
    window = 6
    # 5 * window = 30 positions run past the 16-position rotary table.
    model = _model(max_seq_len=16, num_layers=num_layers)
    seq = 5 * window
    x, positions = torch.randn(1, seq, 64), torch.arange(seq)
    windowed = model(x, positions, mask=causal_mask_from_positions(positions, positions, window))
    caches = model.make_caches(1, window=window)
    buffer_bytes = sum(c.keys.nbytes + c.values.nbytes for c in caches)
    for t in range(seq):
        step = model(x[:, t : t + 1], positions[t : t + 1], caches=caches)
        # Exact for every depth: the full forward under a sliding-window causal mask.
        assert (step - windowed[:, t : t + 1]).abs().max() < TOL, t
        if num_layers == 1:
            # With one layer that is also a fresh forward over the last W tokens at their
            # absolute positions. (Deeper, cached keys of old tokens carry context from before
            # the window, as in any sliding-window model, so a fresh forward differs.)
            lo = max(0, t - window + 1)
            ref = model(x[:, lo : t + 1], positions[lo : t + 1])[:, -1:]
            assert (step - ref).abs().max() < TOL, t
        assert sum(c.keys.nbytes + c.values.nbytes for c in caches) == buffer_bytes
    assert caches[0].capacity == window


def test_sliding_window_blocks_equal_windowed_full_forward() -> None:
    window = 5
    model = _model(max_seq_len=16)
    x, positions = torch.randn(2, 26, 64), torch.arange(26)
    full = model(x, positions, mask=causal_mask_from_positions(positions, positions, window))
    caches = model.make_caches(2, window=window)
    outs = [model(x[:, s : s + 3], positions[s : s + 3], caches=caches) for s in range(0, 26, 3)]
    assert (torch.cat(outs, dim=1) - full).abs().max() < TOL


def test_rotary_beyond_table_matches_table() -> None:
    short, long = _model(max_seq_len=8), _model(max_seq_len=256)
    x, positions = torch.randn(1, 20, 64), torch.arange(20) + 3
    assert (short(x, positions) - long(x, positions)).abs().max() < 1e-6


def test_session_state_restores_bit_identically() -> None:
    model = _model()
    x, positions = torch.randn(1, 12, 64), torch.arange(12)
    caches = model.make_caches(1, window=4)
    model(x[:, :7], positions[:7], caches=caches)
    saved = [c.get_state() for c in caches]
    first = model(x[:, 7:], positions[7:], caches=caches)
    restored = model.make_caches(1, window=4)
    for cache, state in zip(restored, saved, strict=True):
        cache.set_state(state)
    assert torch.equal(first, model(x[:, 7:], positions[7:], caches=restored))


def test_cache_overflow_raises() -> None:
    from stemstream.model.kv_cache import CacheOverflowError

    model = _model()
    caches = model.make_caches(1, 4)
    model(torch.randn(1, 4, 64), torch.arange(4), caches=caches)
    with pytest.raises(CacheOverflowError):
        model(torch.randn(1, 1, 64), torch.tensor([4]), caches=caches)


def test_causality_by_gradient() -> None:
    model = _model()
    x = torch.randn(1, 8, 64, requires_grad=True)
    out = model(x, torch.arange(8))
    for s in range(8):
        (grad,) = torch.autograd.grad(out[0, s].sum(), x, retain_graph=True)
        assert torch.all(grad[0, s + 1 :] == 0)
        assert torch.all(grad[0, : s + 1].abs().sum(-1) > 0)


def test_memory_mask_hides_memory_positions() -> None:
    model = _model(cross_attention=True)
    x, memory = torch.randn(1, 4, 64), torch.randn(1, 5, 64)
    keep = torch.tensor([[[True, True, True, False, False]]])
    out = model(x, torch.arange(4), memory=memory, memory_mask=keep)
    memory[:, 3:] = 100.0
    assert torch.equal(out, model(x, torch.arange(4), memory=memory, memory_mask=keep))


def test_dtype_and_device_are_threaded_through() -> None:
    model = Transformer(TransformerConfig.preset("tiny"), device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    caches = model.make_caches(1, 4)
    assert caches[0].keys.dtype == torch.float64
    out = model(torch.randn(1, 2, 64, dtype=torch.float64), torch.arange(2), caches=caches)
    assert out.dtype == torch.float64


def test_initialisation_scales_output_projections() -> None:
    model = Transformer(TransformerConfig.preset("tiny", dim=256, num_layers=8))
    std_in = model.layers[0].attention.wq.weight.std().item()
    std_out = model.layers[0].feed_forward.w2.weight.std().item()
    assert abs(std_in - 0.02) < 2e-3
    assert abs(std_out - 0.02 / 4) < 5e-4


def test_presets_and_parameter_counts() -> None:
    counts = {
        name: Transformer(TransformerConfig.preset(name), device="meta").num_parameters()
        for name in ("tiny", "cpu", "paper")
    }
    assert counts == {"tiny": 122_944, "cpu": 4_719_360, "paper": 188_745_728}
    paper = TransformerConfig.preset("paper")
    assert (paper.dim, paper.num_layers, paper.num_heads, paper.num_kv_heads) == (1024, 16, 16, 8)
    assert paper.hidden_dim == 2816  # 8/3 * 1024 rounded up to a multiple of 256


def test_config_round_trip() -> None:
    config = TransformerConfig.preset("tiny", cross_attention=True, cross_dim=32)
    assert TransformerConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"num_heads": 5}, "must divide dim"),
        ({"num_kv_heads": 3}, "must divide num_heads"),
        ({"dim": 48, "num_heads": 16, "num_kv_heads": 1}, "even"),
        ({"num_layers": 0}, "num_layers"),
        ({"dropout": 1.0}, "dropout"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"rope_theta": -1.0}, "rope_theta"),
        ({"cross_dim": 32}, "cross_attention"),
        ({"ffn_hidden": 0}, "ffn_hidden"),
        ({"dim": True}, "dim"),
    ],
)
def test_config_validation(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TransformerConfig.preset("tiny", **overrides)


def test_unknown_preset_and_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="unknown transformer preset"):
        TransformerConfig.preset("huge")
    model = _model()
    with pytest.raises(ValueError, match="positions"):
        model(torch.randn(1, 3, 64), torch.arange(4))
    with pytest.raises(ValueError, match="memory"):
        model(torch.randn(1, 3, 64), torch.arange(3), memory=torch.randn(1, 2, 64))
