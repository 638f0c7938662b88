"""The streaming decoder: chunked training == one-chunk reference, cached generation == full
recompute, visibility by gradients, valid sampling, long streams, a learnable task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stemstream.errors import ConfigError
from stemstream.model.layout import one_chunk_layout, training_layout
from stemstream.model.sampling import SamplingConfig
from stemstream.model.streaming import StreamingDecoder, StreamingDecoderConfig
from stemstream.model.transformer import TransformerConfig

K, V, D_IN, T = 4, 32, 16, 12


def _model(t_f: int, k: int, seed: int = 0, encoder: str = "frame") -> StreamingDecoder:
    """``encoder``: ``frame``, ``conv``, or ``conv+features`` (conv, hearing onset and beat
    features as 5 more input channels)."""
    torch.manual_seed(seed)
    encoder, _, extra = encoder.partition("+")
    cfg = StreamingDecoderConfig(
        backbone=TransformerConfig.preset("tiny"),
        num_codebooks=K,
        codebook_size=V,
        input_dim=D_IN,
        future_frames=t_f,
        chunk_frames=k,
        input_encoder=encoder,
        input_window=4,
        input_features=("onset", "beat") if extra else (),
        beat_lead_seconds=0.1 if extra else 0.0,  # the beat heard 0.1 s ahead
    )
    model = StreamingDecoder(cfg).eval()
    with torch.no_grad():
        model.gate.fill_(0.7)  # zero at init would hide the token path from these checks
        if model.input_encoder is not None:  # its taps start at zero: make them matter
            for param in model.input_encoder.parameters():
                param.normal_(0.0, 0.3)
    return model


ENCODERS = ["frame", "conv", "conv+features"]


def _batch(t_f: int, seed: int = 1, channels: int = D_IN):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, T + max(t_f, 0), generator=gen)
    y = torch.randint(0, V, (2, K, T), generator=gen)
    return x, y, torch.tensor([3, 14])


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("t_f", [-3, 0, 2])
@pytest.mark.parametrize("k", [2, 5])
def test_all_chunks_in_one_pass_equal_the_one_chunk_formulation(t_f, k, encoder):
    model = _model(t_f, k, encoder=encoder)
    x, y, inst = _batch(t_f, channels=model.config.input_channels)
    with torch.no_grad():
        full = model(x, y, inst)
        delayed = model.delay.apply(y)
        steps = delayed.shape[-1]
        for c in range(0, steps, k):
            ref = model._run_layout(
                x, delayed, inst, one_chunk_layout(c, steps, t_f, k, x.shape[-1])
            )
            mine = full.logits[:, c : c + k]
            torch.testing.assert_close(mine, ref.logits, atol=1e-5, rtol=0)
            targets = delayed[:, :, c : c + k]
            chunk_loss = F.cross_entropy(
                mine.flatten(0, 2),
                targets.transpose(1, 2).flatten(),
                ignore_index=model.delay.pad_id,
            )
            assert float(chunk_loss) == pytest.approx(float(ref.loss), abs=1e-5)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("t_f", [-3, 0, 3])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_cached_generation_equals_full_recompute(t_f, k, encoder):
    model = _model(t_f, k, encoder=encoder)
    x, y, inst = _batch(t_f, channels=model.config.input_channels)
    delayed = model.delay.apply(y)
    captured = []
    original = model.logits

    def capture(hidden):
        out = original(hidden)
        if hidden.shape[1] == 1:  # generated positions (not the re-fed fused context)
            captured.append(out)
        return out

    with torch.no_grad():
        full = model(x, y, inst)
        model.logits = capture
        state = model.new_state(inst, max_steps=64)
        for c in range(0, delayed.shape[-1] - k + 1, k):
            model.generate_chunk(state, x, forced=delayed[:, :, c : c + k], input_complete=True)
    generated = torch.cat(captured, dim=1)
    torch.testing.assert_close(generated, full.logits[:, : generated.shape[1]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("t_f", [-2, 0, 3])
@pytest.mark.parametrize("k", [1, 4])
def test_visibility_by_gradients(t_f, k, encoder):
    model = _model(t_f, k, encoder=encoder)
    x, y, inst = _batch(t_f, channels=model.config.input_channels)
    x.requires_grad_(True)
    logits = model(x, y, inst).logits  # [B, S, K, V], position = delayed step
    for step in range(logits.shape[1]):
        horizon = (step - step % k) + t_f  # input frames < horizon are allowed
        (grad,) = torch.autograd.grad(logits[:, step].square().sum(), x, retain_graph=True)
        per_frame = grad.abs().sum(dim=(0, 1))
        assert float(per_frame[max(horizon, 0) :].sum()) == 0.0, (step, horizon)
        if horizon > 0:
            assert float(per_frame[:horizon].sum()) > 0.0
            # every channel is heard, the features (after D_in) included
            assert bool((grad[..., :horizon].abs().sum(dim=(0, 2)) > 0).all())


@pytest.mark.parametrize("t_f", [-2, 0, 4])
def test_conv_encoder_hears_its_window_and_the_aligned_frame(t_f):
    """Through the chunk positions of k = 1: the newest visible frame, every frame of the
    encoder's window, and (t_f > 1) the frame aligned with the predicted one, frame p."""
    model = _model(t_f, 1, encoder="conv")
    with torch.no_grad():
        for block in model.backbone.layers:  # the newest position alone: input path only
            for param in block.parameters():
                param.zero_()
    x, y, inst = _batch(t_f)
    x.requires_grad_(True)
    logits = model(x, y, inst).logits
    context = model.input_context
    assert context == max(6, t_f - 1)  # window 4 -> dilations 1, 2
    step = 10
    newest = step + t_f - 1
    (grad,) = torch.autograd.grad(logits[:, step].square().sum(), x)
    heard = (grad.abs().sum(dim=(0, 1)) > 0).nonzero().flatten().tolist()
    assert max(heard) == newest
    assert set(range(max(0, newest - 6), newest + 1)) <= set(heard)
    if t_f > 1:
        assert step in heard
    assert min(heard) >= newest - context


def test_fresh_conv_encoder_equals_the_paper_fusion():
    """The taps and residual outputs start at zero: a warm start from a paper model keeps
    its function exactly."""
    torch.manual_seed(0)
    common = dict(backbone=TransformerConfig.preset("tiny"), num_codebooks=K, codebook_size=V,
                  input_dim=D_IN, future_frames=3)
    paper = StreamingDecoder(StreamingDecoderConfig(**common)).eval()
    conv = StreamingDecoder(StreamingDecoderConfig(**common, input_encoder="conv")).eval()
    missing = conv.load_state_dict(paper.state_dict(), strict=False)
    assert missing.unexpected_keys == []
    assert all(k.startswith("input_encoder.") for k in missing.missing_keys)
    x, y, inst = _batch(3)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, y, inst).logits, paper(x, y, inst).logits)


@pytest.mark.parametrize("t_f", [-2, 3])
def test_conv_encoder_streams_with_dropped_input(t_f):
    """A long-running caller keeps only the input the model can still reach (input_offset):
    generation equals the run that keeps everything."""
    model = _model(t_f, 2, encoder="conv")
    x = torch.randn(1, D_IN, 60)
    runs = []
    for drop in (False, True):
        state = model.new_state(torch.tensor([1]), max_steps=64)
        out, offset = [], 0
        for _ in range(20):
            c = state.step
            if drop:
                offset = max(0, c - 2 + t_f - 1 - model.input_context)
            out.append(model.generate_chunk(state, x[..., offset:], SamplingConfig(temperature=0.0),
                                            input_complete=True, input_offset=offset))
        runs.append(torch.cat(out, dim=-1))
    assert torch.equal(runs[0], runs[1])
    state = model.new_state(torch.tensor([1]), max_steps=64)
    model.generate_chunk(state, x, input_complete=True)
    model.generate_chunk(state, x, input_complete=True)
    with pytest.raises(ConfigError, match="was dropped"):
        model.generate_chunk(state, x[..., 3:], input_complete=True, input_offset=3)


def test_history_corruption_only_in_training():
    torch.manual_seed(0)
    cfg = StreamingDecoderConfig(
        backbone=TransformerConfig.preset("tiny"), num_codebooks=K, codebook_size=V,
        input_dim=D_IN, history_noise=0.3, history_span=0.3, history_span_frames=8)
    model = StreamingDecoder(cfg)
    delayed = model.delay.apply(torch.randint(0, V, (64, K, 40)))
    tokens, hidden = model.corrupt_history(delayed, torch.Generator().manual_seed(0))
    changed = (tokens != delayed).float().mean()
    assert 0.2 < float(changed) < 0.33  # a few replacements draw the same code
    assert ((tokens != delayed) <= (delayed < V)).all()  # delay pads are never replaced
    assert 0.2 < float(hidden.float().mean()) < 0.4
    edges = (hidden[:, 1:] != hidden[:, :-1]).sum()  # two per span: spans, not scattered steps
    assert float(hidden.float().sum()) > 2 * float(edges)
    x, y, inst = _batch(0)
    model.eval()
    with torch.no_grad():
        model.gate.fill_(0.7)  # zero at init hides the token path
        assert torch.equal(model(x, y, inst).logits, model(x, y, inst).logits)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x, y, inst).logits, model(x, y, inst).logits)


def test_history_shift_shows_an_earlier_history_never_a_later_one():
    cfg = StreamingDecoderConfig(
        backbone=TransformerConfig.preset("tiny"), num_codebooks=K, codebook_size=V,
        input_dim=D_IN, history_shift=0.5, history_shift_frames=6)
    model = StreamingDecoder(cfg)
    delayed = model.delay.apply(torch.randint(0, V, (256, K, 40)))
    tokens, hidden = model.corrupt_history(delayed, torch.Generator().manual_seed(0))
    lags = []
    for b in range(delayed.shape[0]):
        lag = int(hidden[b].sum())  # the first `lag` steps are hidden, nothing else
        assert hidden[b, :lag].all() and not hidden[b, lag:].any()
        assert torch.equal(tokens[b, :, lag:], delayed[b, :, : delayed.shape[-1] - lag])
        lags.append(lag)
    lags = torch.tensor(lags)
    assert 0.4 < float((lags > 0).float().mean()) < 0.6
    assert set(lags[lags > 0].tolist()) == set(range(1, 7))
    model.history_scale = 0.0  # a schedule at zero turns it off
    tokens, hidden = model.corrupt_history(delayed, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, delayed) and not hidden.any()
    with pytest.raises(ConfigError, match="history_shift_frames"):
        StreamingDecoderConfig(history_shift_frames=0)


def test_hide_history_removes_the_target_history():
    model = _model(0, 1)
    x, y, inst = _batch(0)
    other = torch.randint(0, V, y.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = model(x, y, inst, hide_history=True).logits
        b = model(x, other, inst, hide_history=True).logits
        assert torch.equal(a, b)
        assert not torch.equal(model(x, y, inst).logits, model(x, other, inst).logits)


def test_sampled_tokens_are_codec_tokens_and_pads_only_where_forced():
    model = _model(0, 3)
    x, _, inst = _batch(0)
    state = model.new_state(inst, max_steps=64)
    gen = torch.Generator().manual_seed(0)
    chunks = [
        model.generate_chunk(state, x, SamplingConfig(temperature=1.0, top_k=5), gen)
        for _ in range(3)
    ]
    tokens = torch.cat(chunks, dim=-1)  # [B, K, 9]
    for q in range(K):
        assert (tokens[:, q, :q] == model.delay.pad_id).all()
        assert (tokens[:, q, q:] < V).all()


def test_long_stream_with_ring_cache_keeps_constant_memory():
    model = _model(-1, 2)
    x = torch.randn(1, D_IN, 400)
    state = model.new_state(torch.tensor([1]), window=24)
    sizes = set()
    for _ in range(150):
        model.generate_chunk(state, x, SamplingConfig(temperature=0.0))
        sizes.add(sum(c.keys.numel() for c in state.caches))
    assert state.step == 300 and len(sizes) == 1


def test_horizon_not_heard_yet_is_an_error():
    model = _model(2, 1)
    state = model.new_state(torch.tensor([0]), max_steps=8)
    with pytest.raises(ConfigError, match="needs 2 input frames"):
        model.generate_chunk(state, torch.randn(1, D_IN, 1))
    with pytest.raises(ConfigError, match="chunk size"):
        StreamingDecoderConfig(chunk_frames=0)


def test_loss_falls_on_a_learnable_copy_task():
    """Target codes = a function of the same-time input frame: learnable with t_f >= 1."""
    torch.manual_seed(0)
    cfg = StreamingDecoderConfig(
        backbone=TransformerConfig.preset("tiny"),
        num_codebooks=2,
        codebook_size=8,
        input_dim=8,
        future_frames=1,
        chunk_frames=1,
    )
    model = StreamingDecoder(cfg)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        codes = torch.randint(0, 8, (8, 2, 16))
        x = F.one_hot(codes[:, 0], 8).float().transpose(1, 2)  # input frame t encodes code t
        out = model(x, codes.clone().fill_(0) + codes[:, :1], torch.zeros(8, dtype=torch.long))
        optim.zero_grad()
        out.loss.backward()
        optim.step()
        losses.append(float(out.loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def _pulses(batch: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """Input latents ``[B, D_IN, frames]``: a frame held, with a step of length 3 in a random
    direction every ``period`` frames (a period of 4 or 5 frames and a phase per row): the latent
    flux is a beat that a model can extrapolate from what it has heard."""
    x = torch.zeros(batch, D_IN, frames)
    for b in range(batch):
        period = int(torch.randint(4, 6, (1,), generator=generator))
        phase = int(torch.randint(0, period, (1,), generator=generator))
        current = torch.randn(D_IN, generator=generator)
        for t in range(frames):
            if t % period == phase:
                current = current + 3 * F.normalize(torch.randn(D_IN, generator=generator), dim=0)
            x[b, :, t] = current
    return x


def _flux_targets(x: torch.Tensor, heard: torch.Tensor, ahead: int) -> torch.Tensor:
    """By hand: each heard frame's next ``ahead`` frames of input flux, standardised over the
    window, ``[B, L', ahead]`` (NaN past the window)."""
    flux = F.pad((x[..., 1:] - x[..., :-1]).norm(dim=1), (1, 0))
    flux = (flux - flux.mean(-1, keepdim=True)) / flux.std(-1, keepdim=True)
    out = torch.full((x.shape[0], heard.shape[0], ahead), float("nan"))
    for i, f in enumerate(heard.tolist()):
        for a in range(ahead):
            if 1 <= f + 1 + a < x.shape[-1]:
                out[:, i, a] = flux[:, f + 1 + a]
    return out


def test_anticipation_head_targets_unheard_input_flux_and_learns_a_beat():
    with pytest.raises(ConfigError, match="go together"):
        StreamingDecoderConfig(anticipation_frames=3)
    torch.manual_seed(0)
    cfg = StreamingDecoderConfig(
        backbone=TransformerConfig.preset("tiny"), num_codebooks=K, codebook_size=V,
        input_dim=D_IN, future_frames=-3, input_encoder="conv", anticipation_frames=3,
        anticipation_loss_weight=1.0)
    model = StreamingDecoder(cfg)
    gen = torch.Generator().manual_seed(0)
    frames = 24
    layout = training_layout(frames + K - 1, -3, 1, frames)
    heard = layout.input_frame[layout.loss]  # the newest input frame each position hears
    # the head's targets are the flux of the frames after the heard ones
    x = _pulses(2, frames, gen)
    states = torch.randn(2, heard.shape[0], cfg.backbone.dim, generator=gen)
    targets = _flux_targets(x, heard, 3)
    with torch.no_grad():
        errors = (model.anticipation_head(states) - targets) ** 2
        assert torch.allclose(model._anticipation_loss(states, x, heard, None),
                              errors[~targets.isnan()].mean())
        deaf = torch.tensor([True, False])  # a window that hears no input has no target
        assert torch.allclose(model._anticipation_loss(states, x, heard, deaf),
                              errors[1][~targets[1].isnan()].mean())
    # predicted from what was heard (the causal backbone), the beat is learnable
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses, spread = [], []
    for _ in range(200):
        x = _pulses(8, frames, gen)
        out = model(x, torch.randint(0, V, (8, K, frames), generator=gen),
                    torch.zeros(8, dtype=torch.long))
        optim.zero_grad()
        out.anticipation_loss.backward()
        optim.step()
        losses.append(float(out.anticipation_loss.detach()))
        valid = _flux_targets(x, heard, 3)
        spread.append(float(valid[~valid.isnan()].var()))  # predicting the mean scores this
    assert sum(losses[-15:]) / 15 < 0.6 * sum(spread[-15:]) / 15  # 0.40 measured


def test_reduced_precision_inference_runs():
    """bf16 keeps the complex rotary table (int8: tests/model/test_decode_step.py)."""
    model = _model(0, 1)
    x, y, inst = _batch(0)
    with torch.no_grad():
        ref = model(x, y, inst).logits
        half = _model(0, 1).to(torch.bfloat16)
        rot = half.backbone.rope
        assert rot.table.is_complex() and rot.inv_freq.dtype == torch.float64
        low = half(x.to(torch.bfloat16), y, inst).logits.float()
    assert float((low - ref).abs().max()) < 0.1 * float(ref.abs().max())


def test_history_dropout_hides_the_target_history_in_training_only():
    from dataclasses import replace

    base = _model(0, 1)
    model = StreamingDecoder(replace(base.config, history_dropout=1.0))
    model.load_state_dict(base.state_dict())
    x, y, inst = _batch(0)
    other = (y + 1) % V  # another target history, same input
    model.train()
    hidden = model(x, y, inst).logits, model(x, other, inst).logits
    torch.testing.assert_close(*hidden)  # predicted from input + instrument alone
    model.eval()  # inference always sees the history
    assert not torch.allclose(model(x, y, inst).logits, model(x, other, inst).logits)
    # the instrument token is never hidden
    model.train()
    assert not torch.allclose(model(x, y, inst).logits, model(x, y, inst.flip(0)).logits)
    with pytest.raises(ConfigError, match="history_dropout"):
        replace(base.config, history_dropout=1.5)


def test_onset_head_adds_its_loss_only_when_onsets_are_given():
    torch.manual_seed(0)
    cfg = StreamingDecoderConfig(backbone=TransformerConfig.preset("tiny"), num_codebooks=K,
                                 codebook_size=V, input_dim=D_IN, onset_loss_weight=0.5)
    model = StreamingDecoder(cfg).eval()
    x, y, inst = _batch(0)
    onsets = torch.zeros(2, T, dtype=torch.bool)
    onsets[:, ::4] = True
    plain = model(x, y, inst)
    with_onsets = model(x, y, inst, onsets=onsets)
    assert plain.onset_loss is None
    expected = plain.loss + 0.5 * with_onsets.onset_loss
    torch.testing.assert_close(with_onsets.loss, expected)
    with_onsets.loss.backward()
    assert model.onset_head.weight.grad.abs().sum() > 0
    assert "onset_head.weight" not in _model(0, 1).state_dict()  # no head without the weight
