"""The Codec interface: shapes and dtypes of every public method, input dependence, errors."""

from __future__ import annotations

import pytest
import torch
from codec_helpers import make_audio, tiny_dac, tiny_mock

from stemstream.codec import Codec, CodecError, MockCodec, MockCodecConfig
from stemstream.errors import ConfigError, StemstreamError


def test_properties(codec: Codec) -> None:
    for name in ("sample_rate", "hop_length", "num_codebooks", "codebook_size", "latent_dim"):
        assert isinstance(getattr(codec, name), int) and getattr(codec, name) > 0
    assert codec.frame_rate == pytest.approx(codec.sample_rate / codec.hop_length)
    assert isinstance(codec.frame_rate, float)


@pytest.mark.parametrize("samples", [1, 39, 40, 41, 1003])
def test_shapes_and_dtypes(codec: Codec, samples: int) -> None:
    wave = make_audio(batch=3, samples=samples)
    codes = codec.encode(wave)
    frames = -(-samples // codec.hop_length)
    assert codes.shape == (3, codec.num_codebooks, frames) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < codec.codebook_size
    audio = codec.decode(codes)
    assert audio.shape == (3, 1, frames * codec.hop_length) and audio.dtype == torch.float32
    assert torch.isfinite(audio).all()
    latent = codec.embed(codes)
    assert latent.shape == (3, codec.latent_dim, frames) and latent.dtype == torch.float32


def test_fewer_codebooks(codec: Codec) -> None:
    wave = make_audio(samples=400)
    codes = codec.encode(wave)
    two = codec.encode(wave, num_codebooks=2)
    assert torch.equal(two, codes[:, :2])  # residual levels are nested
    assert codec.decode(two).shape == codec.decode(codes).shape
    assert not torch.allclose(codec.decode(two), codec.decode(codes))
    assert not torch.allclose(codec.embed(two), codec.embed(codes))


def test_output_depends_on_input(codec: Codec) -> None:
    a, b = make_audio(samples=800, seed=1), make_audio(samples=800, seed=2)
    codes_a, codes_b = codec.encode(a), codec.encode(b)
    assert not torch.equal(codes_a, codes_b)
    assert not torch.allclose(codec.decode(codes_a), codec.decode(codes_b))
    assert not torch.allclose(codec.embed(codes_a), codec.embed(codes_b))
    # Scaling the input changes the codes too (not just its sign pattern).
    assert not torch.equal(codec.encode(0.3 * a), codes_a)


def test_deterministic(codec: Codec) -> None:
    wave = make_audio(samples=500)
    assert torch.equal(codec.encode(wave), codec.encode(wave))
    codes = codec.encode(wave)
    assert torch.equal(codec.decode(codes), codec.decode(codes))


def test_batch_items_are_independent(codec: Codec) -> None:
    wave = make_audio(batch=3, samples=500)
    codes = codec.encode(wave)
    assert torch.equal(codec.encode(wave[1:2]), codes[1:2])
    assert (codec.decode(codes[2:3]) - codec.decode(codes)[2:3]).abs().max() < 1e-5


def test_identity(codec: Codec) -> None:
    identity = codec.codec_identity()
    assert identity["class"] == type(codec).__name__
    assert isinstance(identity["config"], dict) and len(identity["weights_hash"]) == 16
    assert identity == codec.codec_identity()


def test_identity_tracks_weights() -> None:
    assert tiny_mock(seed=0).codec_identity() == tiny_mock(seed=0).codec_identity()
    assert tiny_mock(seed=0).codec_identity() != tiny_mock(seed=1).codec_identity()
    assert tiny_dac(seed=0).codec_identity() != tiny_dac(seed=1).codec_identity()


BAD_WAVES = {
    "rank": (torch.zeros(2, 100), "shaped"),
    "stereo": (torch.zeros(1, 2, 100), "mono"),
    "empty": (torch.zeros(1, 1, 0), "empty"),
    "integer": (torch.zeros(1, 1, 100, dtype=torch.int16), "floating"),
    "nan": (torch.tensor([[[0.0, float("nan"), float("inf")]]]), "2 NaN/Inf"),
    "numpy": (make_audio().numpy(), "torch.Tensor"),
}


@pytest.mark.parametrize("case", BAD_WAVES)
def test_encode_errors(codec: Codec, case: str) -> None:
    wave, message = BAD_WAVES[case]
    with pytest.raises(CodecError, match=message):
        codec.encode(wave)


def test_wrong_sample_rate_and_codebook_count(codec: Codec) -> None:
    wave = make_audio(samples=100)
    codec.encode(wave, sample_rate=codec.sample_rate)
    with pytest.raises(CodecError, match="resample"):
        codec.encode(wave, sample_rate=44100)
    for bad in (0, codec.num_codebooks + 1):
        with pytest.raises(CodecError, match="num_codebooks"):
            codec.encode(wave, num_codebooks=bad)


def test_code_errors(codec: Codec) -> None:
    size, levels = codec.codebook_size, codec.num_codebooks
    cases = {
        "shaped": torch.zeros(levels, 5, dtype=torch.long),
        "integer": torch.zeros(1, levels, 5),
        "codebooks": torch.zeros(1, levels + 1, 5, dtype=torch.long),
        f"contain {size}": torch.full((1, levels, 5), size),
        "contain -1": torch.full((1, levels, 5), -1),
        "empty": torch.zeros(1, levels, 0, dtype=torch.long),
    }
    for message, codes in cases.items():
        for method in (codec.decode, codec.embed):
            with pytest.raises(CodecError, match=message):
                method(codes)


def test_errors_are_stemstream_errors() -> None:
    assert issubclass(CodecError, StemstreamError)


def test_float64_input_is_accepted(codec: Codec) -> None:
    wave = make_audio(samples=300)
    assert torch.equal(codec.encode(wave.double()), codec.encode(wave))


def test_mock_config_validation() -> None:
    with pytest.raises(ConfigError):
        MockCodecConfig(hop_length=0)
    assert MockCodecConfig.from_dict(MockCodecConfig().to_dict()) == MockCodecConfig()
    with pytest.raises(ConfigError, match="unknown"):
        MockCodecConfig.from_dict({"hop": 3})


def test_mock_defaults_are_50_hz() -> None:
    codec = MockCodec()
    assert codec.frame_rate == 50.0 and codec.num_codebooks == 4


def test_mock_audio_is_bounded_and_phase_continuous() -> None:
    """Long streams: integer phase arithmetic keeps late frames as exact as early ones."""
    codec = tiny_mock()
    codes = torch.zeros(1, codec.num_codebooks, 2, dtype=torch.long)
    early = codec.synthesize(codes, first_frame=0)
    late = codec.synthesize(codes, first_frame=codec.sample_rate)  # a whole-second multiple
    assert torch.equal(early, late)
    assert codec.decode(torch.randint(0, 64, (2, 4, 50))).abs().max() < 1.0
