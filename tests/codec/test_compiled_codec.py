"""The FrameCodec's compiled streaming trunks (issue 17), on ONNX Runtime and AOTInductor,
equal the eager ones: the same codes and audio within 1e-4 for blocks of one, several and
partial frames, batch 2, and therefore still the offline codec. AOTInductor needs a C++
compiler (scripts/setup.sh installs g++); never skipped."""

from __future__ import annotations

import pytest
import torch
from codec_helpers import make_audio
from test_framecodec import HOP, tiny_frame_codec
from test_streaming import stream_decode, stream_encode

from stemstream.codec import framecodec
from stemstream.codec.compiled import accelerate_codec
from stemstream.codec.mock import MockCodec, MockCodecConfig

K = 3  # of the tiny preset's 4 levels, as a model over fewer codebooks asks
SIZES = [HOP, 3 * HOP, 17, HOP - 17, 5 * HOP + 40, 2 * HOP]


@pytest.fixture(scope="module", params=["onnx", "compiled"])
def codecs(request, tmp_path_factory):
    """The same tiny codec twice: eager and on a route."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STEMSTREAM_CACHE_DIR", str(tmp_path_factory.mktemp("codec-cache")))
        compiled = tiny_frame_codec()
        info = accelerate_codec(compiled, K, request.param, quiet=True)
    assert info.name == request.param and info.compile_s > 0
    return tiny_frame_codec(), compiled


def test_compiled_trunks_stream_like_the_eager_codec(codecs):
    eager, compiled = codecs
    wave = make_audio(samples=sum(SIZES))
    with torch.inference_mode():
        codes = stream_encode(eager, wave, SIZES, K)
        assert torch.equal(stream_encode(compiled, wave, SIZES, K), codes)
        assert torch.equal(codes, eager.encode(wave, num_codebooks=K))  # still the offline codec
        frames = [1, 4, 2, 1, 3]
        audio = stream_decode(eager, codes, frames)
        routed = stream_decode(compiled, codes, frames)
    assert torch.allclose(routed, audio, atol=1e-4), (routed - audio).abs().max()
    assert audio.abs().max() > 1e-3  # the comparison is not between silences


def test_blocks_longer_than_one_call_run_in_pieces(codecs, monkeypatch):
    """A block of more frames than one compiled call takes runs in pieces, carrying the
    convolution histories across them: the same codes and audio as the eager codec."""
    eager, compiled = codecs
    monkeypatch.setattr(framecodec, "ROUTE_MAX_FRAMES", 2)
    wave = make_audio(samples=7 * HOP)
    with torch.inference_mode():
        codes = stream_encode(eager, wave, [7 * HOP], K)
        assert torch.equal(stream_encode(compiled, wave, [7 * HOP], K), codes)
        audio = stream_decode(eager, codes, [codes.shape[-1]])
        routed = stream_decode(compiled, codes, [codes.shape[-1]])
    assert torch.allclose(routed, audio, atol=1e-4), (routed - audio).abs().max()


def test_other_levels_and_codecs_stay_eager(codecs, tmp_path, monkeypatch):
    _, compiled = codecs
    wave = make_audio(samples=4 * HOP)
    with torch.inference_mode():  # K + 1 levels: not what was compiled, the eager trunk runs
        assert torch.equal(stream_encode(compiled, wave, [4 * HOP], K + 1),
                           compiled.encode(wave, num_codebooks=K + 1))
    monkeypatch.setenv("STEMSTREAM_CACHE_DIR", str(tmp_path))
    mock = MockCodec(MockCodecConfig())
    for route in ("auto", "onnx", "compiled"):
        info = accelerate_codec(mock, 4, route)
        assert info.name == "eager" and "MockCodec streams eagerly" in info.note
