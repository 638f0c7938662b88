"""Streaming == offline, save/restore of stream state, and causality (MockCodec, causal DAC)."""

from __future__ import annotations

import io

import pytest
import torch
from codec_helpers import make_audio, tiny_dac

from stemstream.codec import Codec, CodecError

TOL = 1e-4


def block_sizes(kind: str, hop: int, total: int, seed: int = 0) -> list[int]:
    """Block lengths summing to ``total``: one frame, seven frames, or random (0..3 hops)."""
    if kind == "random":
        gen = torch.Generator().manual_seed(seed)
        sizes = []
        while sum(sizes) < total:
            sizes.append(int(torch.randint(0, 3 * hop + 2, (1,), generator=gen)))
        sizes[-1] -= sum(sizes) - total
        return sizes
    step = {"one": hop, "seven": 7 * hop}[kind]
    return [min(step, total - start) for start in range(0, total, step)]


def stream_encode(codec: Codec, wave: torch.Tensor, sizes: list[int],
                  num_codebooks: int | None = None) -> torch.Tensor:
    encoder = codec.streaming_encoder(num_codebooks)
    parts, start = [], 0
    for size in sizes:
        parts.append(encoder.step(wave[..., start : start + size]))
        start += size
    parts.append(encoder.flush())
    return torch.cat(parts, dim=-1)


def stream_decode(codec: Codec, codes: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    decoder = codec.streaming_decoder()
    parts, start = [], 0
    for size in sizes:
        parts.append(decoder.step(codes[..., start : start + size]))
        start += size
    parts.append(decoder.flush())
    return torch.cat(parts, dim=-1)


@pytest.mark.parametrize("kind", ["one", "seven", "random"])
def test_encoder_streaming_equals_offline(codec: Codec, kind: str) -> None:
    wave = make_audio(samples=1003)  # not a multiple of the hop
    offline = codec.encode(wave)
    sizes = block_sizes(kind, codec.hop_length, wave.shape[-1])
    streamed = stream_encode(codec, wave, sizes)
    assert streamed.dtype == torch.long
    assert torch.equal(streamed, offline)


def test_encoder_streaming_fewer_levels_equals_offline(codec: Codec) -> None:
    wave = make_audio(samples=1003)
    levels = codec.num_codebooks - 1
    sizes = block_sizes("random", codec.hop_length, wave.shape[-1])
    streamed = stream_encode(codec, wave, sizes, num_codebooks=levels)
    assert streamed.shape[1] == levels
    assert torch.equal(streamed, codec.encode(wave, num_codebooks=levels))
    assert torch.equal(streamed, codec.encode(wave)[:, :levels])  # residual levels are nested
    with pytest.raises(CodecError):
        codec.streaming_encoder(codec.num_codebooks + 1)


@pytest.mark.parametrize("kind", ["one", "seven", "random"])
def test_decoder_streaming_equals_offline(codec: Codec, kind: str) -> None:
    codes = codec.encode(make_audio(samples=1003))
    offline = codec.decode(codes)
    frames = codes.shape[-1]
    sizes = block_sizes(kind, 1, frames)  # in frames
    streamed = stream_decode(codec, codes, sizes)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() < TOL


def test_dac_latent_streaming_equals_offline(dac_tiny) -> None:
    """The continuous encoder output (before quantisation) streams too, sample-block-wise."""
    wave = make_audio(samples=1000)
    offline = dac_tiny.encoder(wave)
    state: dict[str, torch.Tensor] = {}
    parts = [
        dac_tiny.encoder.stream_step(wave[..., i : i + 13], state, "encoder")
        for i in range(0, 1000, 13)
    ]
    streamed = torch.cat(parts, dim=-1)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() < TOL


def test_dac_decoder_output_timing(dac_tiny) -> None:
    """Causal DAC: the first frame yields 1 sample, later frames a hop each, flush hop - 1."""
    hop = dac_tiny.hop_length
    codes = dac_tiny.encode(make_audio(samples=5 * hop))
    decoder = dac_tiny.streaming_decoder()
    assert decoder.latency_samples == hop - 1
    lengths = [decoder.step(codes[..., t : t + 1]).shape[-1] for t in range(5)]
    assert lengths == [1] + [hop] * 4
    assert decoder.flush().shape[-1] == hop - 1


def test_dac_without_left_crop_has_no_latency() -> None:
    codec = tiny_dac(causal=True, ignore_left_crop=True)
    codes = codec.encode(make_audio(samples=400))
    decoder = codec.streaming_decoder()
    assert decoder.latency_samples == 0
    assert decoder.step(codes[..., :1]).shape[-1] == codec.hop_length
    streamed = torch.cat([decoder.step(codes[..., 1:]), decoder.flush()], -1)
    offline = codec.decode(codes)[..., codec.hop_length :]
    assert (streamed - offline).abs().max().item() < TOL


def _roundtrip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_stream_state_save_and_resume_is_bit_identical(codec: Codec) -> None:
    wave = make_audio(samples=997)
    encoder = codec.streaming_encoder()
    first = encoder.step(wave[..., :501])
    saved = _roundtrip(encoder.state_dict())
    rest = torch.cat([encoder.step(wave[..., 501:]), encoder.flush()], -1)
    resumed = codec.streaming_encoder()
    resumed.load_state_dict(saved)
    assert torch.equal(torch.cat([resumed.step(wave[..., 501:]), resumed.flush()], -1), rest)
    codes = torch.cat([first, rest], -1)

    decoder = codec.streaming_decoder()
    head = decoder.step(codes[..., :9])
    saved = _roundtrip(decoder.state_dict())
    tail = torch.cat([decoder.step(codes[..., 9:]), decoder.flush()], -1)
    resumed_decoder = codec.streaming_decoder()
    resumed_decoder.load_state_dict(saved)
    again = torch.cat([resumed_decoder.step(codes[..., 9:]), resumed_decoder.flush()], -1)
    assert torch.equal(again, tail)
    assert head.shape[-1] + tail.shape[-1] == codes.shape[-1] * codec.hop_length


def test_flush_resets_the_stream(codec: Codec) -> None:
    wave = make_audio(samples=300)
    encoder = codec.streaming_encoder()
    once = torch.cat([encoder.step(wave), encoder.flush()], -1)
    twice = torch.cat([encoder.step(wave), encoder.flush()], -1)
    assert torch.equal(once, twice)


@pytest.mark.parametrize("cut", [1, 37, 120, 401])
def test_encoder_is_causal(codec: Codec, cut: int) -> None:
    """Frames emitted after ``cut`` samples do not change whatever follows them."""
    wave = make_audio(samples=600)
    other = wave.clone()
    other[..., cut:] = make_audio(samples=600 - cut, seed=7)
    encoder = codec.streaming_encoder()
    ready = encoder.step(wave[..., :cut]).shape[-1]
    codes, codes_other = codec.encode(wave), codec.encode(other)
    assert torch.equal(codes[..., :ready], codes_other[..., :ready])
    assert not torch.equal(codes, codes_other)  # the output depends on the input


def test_dac_encoder_frame_t_sees_samples_up_to_t_hop(dac_tiny) -> None:
    """Exact dependency of the causal DAC encoder, via gradients of the latent."""
    hop = dac_tiny.hop_length
    wave = make_audio(batch=1, samples=20 * hop).requires_grad_(True)
    latent = dac_tiny.encoder(wave)
    for frame in (0, 5, 19):
        (grad,) = torch.autograd.grad(latent[0, :, frame].sum(), wave, retain_graph=True)
        seen = grad[0, 0].nonzero().flatten()
        assert int(seen.max()) == frame * hop


@pytest.mark.parametrize("cut", [1, 4, 11])
def test_decoder_is_causal(codec: Codec, cut: int) -> None:
    """Audio emitted after ``cut`` frames does not change whatever frames follow."""
    codes = codec.encode(make_audio(samples=700))
    other = codes.clone()
    other[..., cut:] = (other[..., cut:] + 1) % codec.codebook_size
    decoder = codec.streaming_decoder()
    ready = decoder.step(codes[..., :cut]).shape[-1]
    assert ready >= cut * codec.hop_length - decoder.latency_samples
    audio, audio_other = codec.decode(codes), codec.decode(other)
    assert torch.equal(audio[..., :ready], audio_other[..., :ready])
    assert not torch.allclose(audio[..., ready:], audio_other[..., ready:])


def test_stream_errors(codec: Codec) -> None:
    encoder = codec.streaming_encoder()
    with pytest.raises(CodecError, match="before any step"):
        encoder.flush()
    encoder.step(make_audio(batch=2, samples=50))
    with pytest.raises(CodecError, match="batch size 2"):
        encoder.step(make_audio(batch=3, samples=50))
    with pytest.raises(CodecError, match="NaN"):
        encoder.step(torch.full((2, 1, 10), float("nan")))
    with pytest.raises(CodecError, match="does not know"):
        encoder.load_state_dict({"bogus": torch.zeros(1)})
    decoder = codec.streaming_decoder()
    with pytest.raises(CodecError, match="outside"):
        decoder.step(torch.full((1, 1, 2), codec.codebook_size))
    with pytest.raises(CodecError, match="codebooks"):
        decoder.step(torch.zeros(1, codec.num_codebooks + 1, 2, dtype=torch.long))


def test_non_causal_dac_refuses_to_stream() -> None:
    codec = tiny_dac(causal=False)
    with pytest.raises(CodecError, match="causal_encoder"):
        codec.streaming_encoder()
    with pytest.raises(CodecError, match="causal_decoder"):
        codec.streaming_decoder()
