"""FrameCodec (tiny preset, random weights): shapes, streaming == offline, causality, phase
integration over long streams, the EMA residual VQ, errors, and save/load."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from codec_helpers import make_audio, randomize_
from test_streaming import stream_decode, stream_encode

from stemstream.codec import CodecError
from stemstream.codec.checkpoint import load_codec, save_codec
from stemstream.codec.ema_rvq import EMAResidualVQ
from stemstream.codec.framecodec import FrameCodec, FrameCodecConfig
from stemstream.codec.registry import export_training_checkpoint, get_codec
from stemstream.codec.train import train_forward
from stemstream.errors import ConfigError

HOP = 320
AUDIO_TOL = 1e-4
SAMPLES = 20 * HOP + 77  # not a multiple of the hop


def tiny_frame_codec(seed: int = 0, **changes: object) -> FrameCodec:
    """The ``tiny`` preset (optionally with fields changed), random weights, eval mode."""
    config = dataclasses.replace(FrameCodecConfig.preset("tiny"), **changes)
    torch.manual_seed(seed)
    return randomize_(FrameCodec(config), seed).eval()


@pytest.fixture(scope="module")
def codec() -> FrameCodec:
    return tiny_frame_codec()


@pytest.fixture(scope="module")
def wave() -> torch.Tensor:
    return make_audio(batch=2, samples=SAMPLES)


def padded(wave: torch.Tensor, hop: int = HOP) -> torch.Tensor:
    """Right-pad ``[B, 1, N]`` with zeros to whole frames (what ``encode`` does)."""
    return F.pad(wave, (0, (-wave.shape[-1]) % hop))


def sample_block_sizes(kind: str, total: int, seed: int = 0) -> list[int]:
    """Block lengths (samples) summing to ``total``."""
    if kind == "sample":
        return [1] * total
    if kind == "odd":  # cycles through sizes that never line up with the hop
        cycle, sizes = [7, 13, 331, 1, 641], []
        while sum(sizes) < total:
            sizes.append(cycle[len(sizes) % len(cycle)])
    elif kind == "random":
        gen = torch.Generator().manual_seed(seed)
        sizes = []
        while sum(sizes) < total:
            sizes.append(int(torch.randint(0, 3 * HOP + 2, (1,), generator=gen)))
    else:
        step = {"frame": HOP, "seven": 7 * HOP}[kind]
        sizes = [step] * math.ceil(total / step)
    sizes[-1] -= sum(sizes) - total
    return sizes


def frame_block_sizes(kind: str, total: int, seed: int = 0) -> list[int]:
    """Block lengths (frames) summing to ``total``: 1, 7 or random 0..3 frames."""
    if kind == "random":
        gen = torch.Generator().manual_seed(seed)
        sizes = []
        while sum(sizes) < total:
            sizes.append(int(torch.randint(0, 4, (1,), generator=gen)))
        sizes[-1] -= sum(sizes) - total
        return sizes
    step = {"one": 1, "seven": 7}[kind]
    return [min(step, total - start) for start in range(0, total, step)]


def roundtrip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` through ``torch.save`` / ``torch.load`` (as a saved session would be)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ----------------------------------------------------------------------------- shapes


def test_shapes_and_dtypes(codec: FrameCodec, wave: torch.Tensor) -> None:
    k, frames = codec.num_codebooks, math.ceil(SAMPLES / HOP)
    assert (codec.sample_rate, codec.hop_length, codec.frame_rate) == (16000, HOP, 50.0)
    codes = codec.encode(wave)
    assert codes.shape == (2, k, frames) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < codec.codebook_size
    audio = codec.decode(codes)
    assert audio.shape == (2, 1, frames * HOP) and audio.dtype == torch.float32
    latent = codec.embed(codes)
    assert latent.shape == (2, codec.latent_dim, frames)
    assert codec.latents(padded(wave)).shape == (2, codec.latent_dim, frames)


def test_fewer_codebooks(codec: FrameCodec, wave: torch.Tensor) -> None:
    codes = codec.encode(wave)
    for k in range(1, codec.num_codebooks + 1):
        assert torch.equal(codec.encode(wave, num_codebooks=k), codes[:, :k])
        assert codec.decode(codes[:, :k]).shape == (2, 1, codes.shape[-1] * HOP)
        assert codec.embed(codes[:, :k]).shape == (2, codec.latent_dim, codes.shape[-1])
    one, all_levels = codec.decode(codes[:, :1]), codec.decode(codes)
    assert not torch.allclose(one, all_levels)  # later levels contribute
    level0 = codec.quantizer.levels[0].lookup(codes[:, 0])
    assert torch.allclose(codec.embed(codes[:, :1]), level0)


def test_output_depends_on_input(codec: FrameCodec) -> None:
    a, b = make_audio(batch=1, samples=4000, seed=1), make_audio(batch=1, samples=4000, seed=2)
    assert not torch.equal(codec.encode(a), codec.encode(b))
    codes = codec.encode(a)
    assert not torch.allclose(codec.decode(codes), codec.decode((codes + 1) % codec.codebook_size))


def test_batch_items_are_independent(codec: FrameCodec, wave: torch.Tensor) -> None:
    both = codec.encode(wave)
    assert torch.equal(codec.encode(wave[1:]), both[1:])
    assert torch.allclose(codec.decode(both[1:]), codec.decode(both)[1:], atol=1e-6)


# -------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("kind", ["sample", "odd", "frame", "seven", "random"])
def test_encoder_streaming_equals_offline(codec: FrameCodec, wave: torch.Tensor, kind: str):
    streamed = stream_encode(codec, wave, sample_block_sizes(kind, SAMPLES))
    assert streamed.dtype == torch.long
    assert torch.equal(streamed, codec.encode(wave))


@pytest.mark.parametrize("kind", ["one", "seven", "random"])
def test_decoder_streaming_equals_offline(codec: FrameCodec, wave: torch.Tensor, kind: str):
    codes = codec.encode(wave)
    offline = codec.decode(codes)
    streamed = stream_decode(codec, codes, frame_block_sizes(kind, codes.shape[-1]))
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() < AUDIO_TOL


def test_stream_state_save_and_resume_is_bit_identical(
    codec: FrameCodec, wave: torch.Tensor
) -> None:
    cut = 7 * HOP + 101  # mid-frame: the state holds a partial frame
    encoder = codec.streaming_encoder()
    head = encoder.step(wave[..., :cut])
    saved = roundtrip(encoder.state_dict())
    rest = torch.cat([encoder.step(wave[..., cut:]), encoder.flush()], -1)
    resumed = codec.streaming_encoder()
    resumed.load_state_dict(saved)
    assert torch.equal(torch.cat([resumed.step(wave[..., cut:]), resumed.flush()], -1), rest)
    codes = torch.cat([head, rest], -1)
    assert torch.equal(codes, codec.encode(wave))

    decoder = codec.streaming_decoder()
    first = decoder.step(codes[..., :9])
    saved = roundtrip(decoder.state_dict())
    assert saved["phase"].dtype == torch.float64  # the running phase keeps float64
    tail = decoder.step(codes[..., 9:])
    resumed_decoder = codec.streaming_decoder()
    resumed_decoder.load_state_dict(saved)
    assert torch.equal(resumed_decoder.step(codes[..., 9:]), tail)
    streamed = torch.cat([first, tail], -1)
    assert (streamed - codec.decode(codes)).abs().max().item() < AUDIO_TOL


def test_encoder_emits_a_frame_when_its_last_sample_arrives(
    codec: FrameCodec, wave: torch.Tensor
) -> None:
    encoder = codec.streaming_encoder()
    assert encoder.step(wave[..., : HOP - 1]).shape == (2, codec.num_codebooks, 0)
    assert encoder.step(wave[..., HOP - 1 : HOP]).shape[-1] == 1
    assert encoder.step(wave[..., HOP : 3 * HOP + 5]).shape[-1] == 2
    assert encoder.step(wave[..., :0]).shape[-1] == 0  # empty blocks are fine
    # a stream of the first levels only (what a session's input needs) is the same prefix
    partial = codec.streaming_encoder(num_codebooks=2)
    cut = 5 * HOP + 7
    codes = torch.cat([partial.step(wave[..., :cut]), partial.step(wave[..., cut:]),
                       partial.flush()], -1)
    assert torch.equal(codes, codec.encode(wave)[:, :2])


def test_encoder_flush(codec: FrameCodec, wave: torch.Tensor) -> None:
    """Flush emits the zero-padded partial frame (none on a frame boundary) and resets."""
    encoder = codec.streaming_encoder()
    with pytest.raises(CodecError, match="before any step"):
        encoder.flush()
    offline = codec.encode(wave)
    streamed = encoder.step(wave)
    assert streamed.shape[-1] == SAMPLES // HOP
    last = encoder.flush()
    assert torch.equal(last, offline[..., -1:])
    aligned = wave[..., : 4 * HOP]
    assert encoder.step(aligned).shape[-1] == 4  # a new stream after the flush
    assert encoder.flush().shape == (2, codec.num_codebooks, 0)
    again = torch.cat([encoder.step(wave), encoder.flush()], -1)
    assert torch.equal(again, offline)


def test_decoder_has_no_latency_and_flush_is_empty(codec: FrameCodec, wave: torch.Tensor):
    codes = codec.encode(wave)
    decoder = codec.streaming_decoder()
    assert decoder.latency_samples == 0
    assert decoder.step(codes[..., :1]).shape == (2, 1, HOP)
    assert decoder.step(codes[..., 1:1]).shape == (2, 1, 0)
    assert decoder.step(codes[..., 1:4]).shape == (2, 1, 3 * HOP)
    assert decoder.flush().shape == (2, 1, 0)
    fresh = decoder.step(codes[..., :1])  # flush reset the phase and overlap tail
    assert torch.equal(fresh, codec.streaming_decoder().step(codes[..., :1]))


# -------------------------------------------------------------------------- causality


@pytest.mark.parametrize("frame", [0, 3, 12])
def test_encoder_is_causal(codec: FrameCodec, wave: torch.Tensor, frame: int) -> None:
    """Frames ``<= t`` ignore samples from ``(t + 1) * hop`` on; the last sample before
    that boundary already counts."""
    boundary = (frame + 1) * HOP
    other = wave.clone()
    other[..., boundary:] = make_audio(batch=2, samples=SAMPLES - boundary, seed=5)
    latent, latent_other = codec.latents(padded(wave)), codec.latents(padded(other))
    assert torch.equal(latent[..., : frame + 1], latent_other[..., : frame + 1])
    assert not torch.allclose(latent[..., frame + 1], latent_other[..., frame + 1])
    codes, codes_other = codec.encode(wave), codec.encode(other)
    assert torch.equal(codes[..., : frame + 1], codes_other[..., : frame + 1])
    assert not torch.equal(codes, codes_other)
    nudged = wave.clone()
    nudged[..., boundary - 1] += 0.5
    assert not torch.equal(codec.latents(padded(nudged))[..., frame], latent[..., frame])


def test_encoder_causality_via_gradients(codec: FrameCodec) -> None:
    """The latent of frame ``t`` has gradient w.r.t. sample ``(t + 1) * hop - 1`` and none
    later; its window reaches back ``enc_n_fft`` samples plus the ConvNeXt context."""
    wave = make_audio(batch=1, samples=20 * HOP).requires_grad_(True)
    latent = codec.latents(wave)
    for frame in (0, 5, 19):
        (grad,) = torch.autograd.grad(latent[0, :, frame].sum(), wave, retain_graph=True)
        seen = grad[0, 0].nonzero().flatten()
        assert int(seen.max()) == (frame + 1) * HOP - 1
        cfg = codec.config
        context_frames = 1 + cfg.enc_blocks * (cfg.kernel_size - 1)  # IF needs frame t - 1
        earliest = (frame + 1 - context_frames) * HOP - cfg.enc_n_fft
        assert int(seen.min()) >= max(0, earliest)


@pytest.mark.parametrize("frame", [0, 4, 11])
def test_decoder_is_causal(codec: FrameCodec, wave: torch.Tensor, frame: int) -> None:
    """Changing frames ``> t`` leaves samples ``< (t + 1) * hop`` untouched."""
    codes = codec.encode(wave)
    other = codes.clone()
    other[..., frame + 1 :] = (other[..., frame + 1 :] + 1) % codec.codebook_size
    boundary = (frame + 1) * HOP
    audio, audio_other = codec.decode(codes), codec.decode(other)
    assert torch.equal(audio[..., :boundary], audio_other[..., :boundary])
    assert not torch.allclose(
        audio[..., boundary : boundary + HOP], audio_other[..., boundary : boundary + HOP]
    )


def test_decoder_causality_via_gradients(codec: FrameCodec) -> None:
    latent = torch.randn(1, codec.latent_dim, 12, generator=torch.Generator().manual_seed(0))
    latent.requires_grad_(True)
    audio = codec.decode_latent(latent)
    for frame in (0, 6, 11):
        last = (frame + 1) * HOP - 1
        (grad,) = torch.autograd.grad(audio[0, 0, last], latent, retain_graph=True)
        used = grad[0].abs().sum(0).nonzero().flatten()
        assert int(used.max()) == frame


def test_long_stream_phase_stays_bounded(codec: FrameCodec) -> None:
    """3000 frames (60 s) decoded frame by frame: the wrapped float64 phase and the audio
    stay finite and bounded, and still match offline decoding."""
    frames = 3000
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(0, codec.codebook_size, (1, codec.num_codebooks, frames), generator=gen)
    decoder = codec.streaming_decoder()
    parts = []
    with torch.inference_mode():
        for t in range(frames):
            parts.append(decoder.step(codes[..., t : t + 1]))
        phase = decoder.state_dict()["phase"]
        streamed = torch.cat(parts, -1)
        offline = codec.decode(codes)
    assert phase.dtype == torch.float64
    assert bool(phase.abs().le(math.pi).all())
    assert bool(torch.isfinite(streamed).all())
    # |irfft| <= max |X| = exp(6) (log-magnitudes are clamped); two windows overlap.
    assert streamed.abs().max().item() <= 2 * math.exp(6.0)
    assert streamed[..., -100 * HOP :].abs().max().item() > 1e-3  # still sounding
    assert (streamed - offline).abs().max().item() < AUDIO_TOL


# ------------------------------------------------------------------------------ EMA RVQ


def test_ema_codebooks_learn_in_train_mode_and_stay_unit_norm() -> None:
    torch.manual_seed(0)
    rvq = EMAResidualVQ(16, num_codebooks=3, codebook_size=32, codebook_dim=4, decay=0.9)
    latent = torch.randn(4, 16, 50)
    before = [level.codebook.clone() for level in rvq.levels]
    rvq.eval()
    rvq(latent)
    assert all(torch.equal(b, level.codebook) for b, level in zip(before, rvq.levels, strict=True))
    assert not any(bool(level.initialised) for level in rvq.levels)
    rvq.train()
    rvq(latent)  # first training call: initialise from batch vectors
    assert all(bool(level.initialised) for level in rvq.levels)
    initial = [level.codebook.clone() for level in rvq.levels]
    for _ in range(3):
        out = rvq(latent)
    for start, level in zip(initial, rvq.levels, strict=True):
        assert not torch.equal(start, level.codebook)
        norms = level.codebook.norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert out.codes.shape == (4, 3, 50) and out.commitment_loss.ndim == 0


def test_ema_update_moves_used_entries_towards_their_vectors() -> None:
    torch.manual_seed(0)
    rvq = EMAResidualVQ(8, num_codebooks=1, codebook_size=16, codebook_dim=4, decay=0.5)
    rvq.train()
    latent = torch.randn(2, 8, 40)
    rvq(latent)
    level = rvq.levels[0]
    flat = level.project(latent).detach()
    idx = level.nearest(flat)
    used = int(idx.mode().values)
    mean = F.normalize(flat[idx == used].mean(0), dim=0)
    before = float(level.codebook[used] @ mean)
    rvq(latent)
    assert float(level.codebook[used] @ mean) > before


def test_first_training_step_quantises_with_the_initialised_codebook() -> None:
    torch.manual_seed(0)
    rvq = EMAResidualVQ(16, num_codebooks=2, codebook_size=32, codebook_dim=4)
    rvq.quantizer_dropout = 0.0
    latent = torch.randn(2, 16, 30)
    level = rvq.levels[0]
    out = rvq.train()(latent)
    flat = level.project(latent).detach()
    chosen = F.embedding(out.codes[:, 0].reshape(-1), level.codebook)
    # Codes picked against the data-initialised codebook match their vectors (cosine ~0.9);
    # against the random init they would not (~0.2).
    assert float((flat * chosen).sum(1).mean()) > 0.8


def test_dead_code_restart_replaces_rarely_used_entries() -> None:
    torch.manual_seed(0)
    rvq = EMAResidualVQ(16, num_codebooks=2, codebook_size=32, codebook_dim=4)
    rvq.train()
    latent = torch.randn(2, 16, 30)
    rvq(latent)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[1, 5, 7]] = True
    for level in rvq.levels:
        level.ema_count[dead] = 0.001
    before = [level.codebook.clone() for level in rvq.levels]
    counts = rvq.restart_dead(latent, threshold=0.02)
    assert counts == [3, 3]
    flat = rvq.levels[0].project(latent)
    for old, level in zip(before, rvq.levels, strict=True):
        assert torch.equal(old[~dead], level.codebook[~dead])
        assert not torch.equal(old[dead], level.codebook[dead])
        assert torch.equal(level.ema_count[dead], torch.ones(3))
    # level 0's new entries are vectors of the batch
    new = rvq.levels[0].codebook[dead]
    assert torch.allclose((new @ flat.t()).max(dim=1).values, torch.ones(3), atol=1e-5)
    assert rvq.restart_dead(latent, threshold=0.02) == [0, 0]


def test_quantizer_dropout_uses_fewer_levels_for_some_items() -> None:
    """With dropout 1, each item's quantised latent is the sum of its first ``k`` levels for
    a random ``k`` in ``1..K``; without dropout it is always all ``K``."""
    torch.manual_seed(0)
    rvq = EMAResidualVQ(16, num_codebooks=4, codebook_size=32, codebook_dim=4, decay=0.99)
    rvq.train()
    latent = torch.randn(48, 16, 5)
    rvq(latent)  # initialise the codebooks

    def levels_used(quantizer_dropout: float) -> list[int]:
        rvq.quantizer_dropout = quantizer_dropout
        out = rvq(latent)
        used = []
        for item in range(latent.shape[0]):
            matches = [
                k
                for k in range(1, 5)
                if torch.allclose(
                    out.quantized[item], rvq.embed(out.codes[item : item + 1, :k])[0], atol=1e-5
                )
            ]
            assert len(matches) == 1
            used.append(matches[0])
        return used

    assert set(levels_used(0.0)) == {4}
    dropped = levels_used(1.0)
    assert min(dropped) == 1 and max(dropped) == 4
    assert 0.5 < sum(k < 4 for k in dropped) / len(dropped) < 0.95
    rvq.eval()
    assert torch.equal(rvq(latent).codes, rvq.encode(latent, 4))  # no dropout in eval


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: torch.zeros(2, 800), "shaped"),
        (lambda: torch.zeros(2, 2, 800), "shaped"),
        (lambda: torch.zeros(1, 1, 0), "empty"),
        (lambda: torch.zeros(1, 1, 800, dtype=torch.int16), "floating"),
        (lambda: torch.full((1, 1, 800), float("nan")), "NaN"),
        (lambda: torch.full((1, 1, 800), float("inf")), "NaN"),
    ],
)
def test_encode_errors(codec: FrameCodec, make, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        codec.encode(make())


def test_rate_codebook_and_code_errors(codec: FrameCodec, wave: torch.Tensor) -> None:
    with pytest.raises(CodecError, match="44100 Hz"):
        codec.encode(wave, sample_rate=44100)
    assert codec.encode(wave, sample_rate=16000).shape[1] == codec.num_codebooks
    for bad in (0, codec.num_codebooks + 1):
        with pytest.raises(CodecError, match="num_codebooks"):
            codec.encode(wave, num_codebooks=bad)
    codes = codec.encode(wave)
    too_big, negative = codes.clone(), codes.clone()
    too_big[0, 1, 2], negative[1, 0, 0] = codec.codebook_size, -1
    for bad in (too_big, negative):
        for fn in (codec.decode, codec.embed, codec.streaming_decoder().step):
            with pytest.raises(CodecError, match="outside"):
                fn(bad)
    extra = torch.zeros(1, codec.num_codebooks + 1, 3, dtype=torch.long)
    with pytest.raises(CodecError, match="codebooks"):
        codec.decode(extra)
    with pytest.raises(CodecError, match="integer"):
        codec.decode(codes.float())
    with pytest.raises(CodecError, match="shaped"):
        codec.decode(codes[0])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"enc_n_fft": 1000}, "multiple of hop_length"),
        ({"enc_n_fft": 160}, "multiple of hop_length"),
        ({"dec_n_fft": 1280}, "2 \\* hop_length"),
        ({"hop_length": 256}, "2 \\* hop_length"),  # dec_n_fft 640 no longer fits
    ],
)
def test_config_validation(changes: dict, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        FrameCodecConfig(**changes)


def test_presets_and_config_roundtrip() -> None:
    with pytest.raises(CodecError, match="unknown FrameCodec preset 'huge'"):
        FrameCodecConfig.preset("huge")
    tiny = FrameCodecConfig.preset("tiny")
    assert FrameCodecConfig.from_dict(FrameCodec(tiny).config_dict()) == tiny
    with pytest.raises(ConfigError, match="bogus"):
        FrameCodecConfig.from_dict({"bogus": 1})
    cpu = FrameCodecConfig.preset("cpu16k")
    assert (cpu.num_codebooks, cpu.codebook_size, cpu.latent_dim) == (8, 1024, 128)
    assert cpu.sample_rate / cpu.hop_length == 50


# ----------------------------------------------------------------------------- save/load


def _trained_a_little(seed: int = 0) -> FrameCodec:
    """A tiny codec whose EMA buffers have left their initial values."""
    codec = tiny_frame_codec(seed).train()
    train_forward(codec, make_audio(batch=2, samples=10 * HOP, seed=seed))
    train_forward(codec, make_audio(batch=2, samples=10 * HOP, seed=seed + 1))
    return codec.eval()


def _assert_same_codec(a: FrameCodec, b: FrameCodec, wave: torch.Tensor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    codes = a.encode(wave)
    assert torch.equal(b.encode(wave), codes)
    assert torch.equal(b.decode(codes), a.decode(codes))


def test_save_load_roundtrip(tmp_path: Path, wave: torch.Tensor) -> None:
    codec = _trained_a_little()
    path = save_codec(codec, tmp_path / "frame.safetensors")
    loaded = load_codec(path)
    assert isinstance(loaded, FrameCodec) and not loaded.training
    assert loaded.config == codec.config
    assert loaded.codec_identity() == codec.codec_identity()
    _assert_same_codec(codec, loaded, wave)
    _assert_same_codec(codec, get_codec(path), wave)
    _assert_same_codec(codec, get_codec(str(path)), wave)


def test_get_codec_reads_training_checkpoints(tmp_path: Path, wave: torch.Tensor) -> None:
    from stemstream.codec.train import CodecTrainConfig, CodecTrainer

    config = CodecTrainConfig(
        corpus=tmp_path / "unused", out_dir=tmp_path / "run", device="cpu", batch_size=2
    )
    trainer = CodecTrainer(config)
    trainer.train_step(make_audio(batch=2, samples=8 * HOP))  # EMA buffers, weights move
    trainer.step = 1
    path = trainer.save_checkpoint()
    codec = trainer.codec.eval()
    from_checkpoint = get_codec(path)
    assert isinstance(from_checkpoint, FrameCodec) and not from_checkpoint.training
    _assert_same_codec(codec, from_checkpoint, wave)
    exported = export_training_checkpoint(path, tmp_path / "exported.safetensors")
    _assert_same_codec(codec, load_codec(exported), wave)


# ------------------------------------------------------------ decoder-only fine-tuning


def test_pointwise_conv_equals_conv1d() -> None:
    from stemstream.codec.layers import PointwiseConv1d

    torch.manual_seed(0)
    pointwise, conv = PointwiseConv1d(6, 5), torch.nn.Conv1d(6, 5, 1)
    conv.load_state_dict(pointwise.state_dict())
    x = torch.randn(3, 6, 7)
    torch.testing.assert_close(pointwise(x), conv(x))
    torch.testing.assert_close(pointwise.frames(x), conv(x).transpose(1, 2).reshape(-1, 5))


def test_frame_log_magnitudes_follow_the_overlap_add_geometry(codec: FrameCodec) -> None:
    """Output frame ``t`` is synthesised over samples ``[t*hop, (t+2)*hop)``: an impulse in
    frame 5 shows in the targets of frames 4 and 5 only."""
    wave = torch.zeros(1, 1, 10 * HOP)
    wave[..., 5 * HOP + 100] = 1.0
    target = codec.frame_log_magnitudes(wave)
    assert target.shape == (1, codec.config.dec_n_fft // 2 + 1, 10)
    loud = (target.amax(1)[0] > math.log(1e-3)).nonzero().flatten().tolist()
    assert loud == [4, 5]


def test_decode_at_depths_uses_the_first_levels_per_item(
    codec: FrameCodec, wave: torch.Tensor
) -> None:
    codes = codec.encode(wave[:1].expand(3, -1, -1).contiguous())
    with torch.no_grad():
        audio, log_mag = codec.decode_at_depths(codes, torch.tensor([1, 3, 4]))
        for item, depth in enumerate((1, 3, 4)):
            expected = codec.decode(codes[item : item + 1, :depth])[0]
            torch.testing.assert_close(audio[item], expected, atol=AUDIO_TOL, rtol=0)
        assert not torch.allclose(audio[0], audio[1], atol=AUDIO_TOL)
    assert log_mag.shape == (3, codec.config.dec_n_fft // 2 + 1, codes.shape[-1])


def test_tokens_hash_ignores_the_decoder_and_same_tokens_accepts_old_records() -> None:
    from stemstream.codec.base import same_tokens

    codec = tiny_frame_codec(seed=0)
    identity = codec.codec_identity()
    tuned = tiny_frame_codec(seed=0)
    with torch.no_grad():
        tuned.dec_out.weight.add_(0.1)
    changed = tuned.codec_identity()
    assert changed["weights_hash"] != identity["weights_hash"]
    assert changed["tokens_hash"] == identity["tokens_hash"]
    assert same_tokens(identity, changed)
    with torch.no_grad():
        tuned.quantizer.levels[0].codebook.mul_(-1)
    assert not same_tokens(identity, tuned.codec_identity())
    # Records made before tokens hashes existed compare weights.
    legacy = {k: v for k, v in identity.items() if k != "tokens_hash"}
    assert same_tokens(legacy, codec.codec_identity()) and not same_tokens(legacy, changed)


def test_many_streams_in_one_batch_equal_each_stream_alone(codec: FrameCodec) -> None:
    """`step_many` (a server's sessions in one batch): streams at different points (one
    starts late, blocks that complete 0, 1 or 2 frames) get exactly the codes, and to float
    rounding the audio, of each stream alone."""
    from stemstream.codec.base import AudioStreamDecoder, AudioStreamEncoder

    waves = [make_audio(batch=1, samples=SAMPLES, seed=seed) for seed in range(3)]
    cycles = [[HOP], [7, 641, 13, 331], [2 * HOP + 5, HOP - 5]]
    starts = [0, 0, 4]  # rounds before the stream's first block
    alone = [codec.streaming_encoder() for _ in waves]
    together = [codec.streaming_encoder() for _ in waves]
    codes_alone, codes_together = [[] for _ in waves], [[] for _ in waves]
    positions = [0] * len(waves)
    for turn in range(40):
        live, blocks = [], []
        for n, wave in enumerate(waves):
            if turn < starts[n] or positions[n] >= SAMPLES:
                continue
            size = cycles[n][(turn - starts[n]) % len(cycles[n])]
            block = wave[..., positions[n] : positions[n] + size]
            positions[n] += size
            codes_alone[n].append(alone[n].step(block))
            live.append(n)
            blocks.append(block)
        for n, codes in zip(live, AudioStreamEncoder.step_many([together[n] for n in live],
                                                               blocks), strict=True):
            codes_together[n].append(codes)
    for n in range(len(waves)):
        expected = torch.cat(codes_alone[n], -1)
        assert torch.equal(torch.cat(codes_together[n], -1), expected)
        assert torch.equal(expected, codec.encode(waves[n])[..., : expected.shape[-1]])

    codes = [codec.encode(w) for w in waves]
    alone = [codec.streaming_decoder() for _ in waves]
    together = [codec.streaming_decoder() for _ in waves]
    audio_alone, audio_together = [[] for _ in waves], [[] for _ in waves]
    frames = [[1], [2, 0, 1], [0, 3]]
    at = [0] * len(waves)
    for turn in range(30):
        chunks = [c[..., at[n] : at[n] + frames[n][turn % len(frames[n])]]
                  for n, c in enumerate(codes)]
        for n, chunk in enumerate(chunks):
            at[n] += chunk.shape[-1]
            audio_alone[n].append(alone[n].step(chunk))
        for n, audio in enumerate(AudioStreamDecoder.step_many(together, chunks)):
            audio_together[n].append(audio)
    for n in range(len(waves)):
        mine, reference = torch.cat(audio_together[n], -1), torch.cat(audio_alone[n], -1)
        assert mine.shape == reference.shape and mine.shape[-1] > 10 * HOP
        torch.testing.assert_close(mine, reference, atol=1e-6, rtol=0)
