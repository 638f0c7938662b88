"""`stemstream codec encode/decode` round trip and errors, with the mock codec."""

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from stemstream.cli import cli


def test_encode_decode_roundtrip_any_rate(tmp_path):
    t = np.arange(44100) / 44100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2, axis=1)
    sf.write(str(tmp_path / "in.wav"), stereo, 44100)
    runner = CliRunner()
    enc = runner.invoke(cli, ["codec", "encode", str(tmp_path / "in.wav"), "-o",
                              str(tmp_path / "c.npz"), "--codec", "mock"])
    assert enc.exit_code == 0, enc.output
    with np.load(tmp_path / "c.npz", allow_pickle=False) as data:
        codes = data["codes"]
    assert codes.ndim == 2 and codes.shape[1] > 0
    dec = runner.invoke(cli, ["codec", "decode", str(tmp_path / "c.npz"), "-o",
                              str(tmp_path / "out.wav"), "--codec", "mock"])
    assert dec.exit_code == 0, dec.output
    out, sr = sf.read(str(tmp_path / "out.wav"))
    assert out.ndim == 1 and abs(len(out) / sr - 1.0) < 1e-3


def test_decode_rejects_foreign_files(tmp_path):
    sf.write(str(tmp_path / "x.wav"), np.zeros(1600), 16000)
    result = CliRunner().invoke(cli, ["codec", "decode", str(tmp_path / "x.wav"), "-o",
                                      str(tmp_path / "o.wav"), "--codec", "mock"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "not a codes .npz" in result.output


def test_long_files_are_coded_in_blocks_exactly_as_in_one_call(tmp_path):
    """encode/decode run block by block (for their progress bars): the same codes and audio
    as the codec's one-shot calls, for a file several blocks long."""
    import torch

    from stemstream.codec.registry import get_codec
    from stemstream.codec.tokens import BLOCK_SECONDS, decode_file, encode_file

    codec = get_codec("mock")
    wave = (0.2 * np.random.default_rng(0).standard_normal(
        int(2.5 * BLOCK_SECONDS * codec.sample_rate) + 77)).astype(np.float32)
    sf.write(str(tmp_path / "in.wav"), wave, codec.sample_rate, subtype="FLOAT")
    encode_file(tmp_path / "in.wav", tmp_path / "c.npz", "mock", 3, progress=True)
    decode_file(tmp_path / "c.npz", tmp_path / "out.wav", "mock", progress=True)
    with np.load(tmp_path / "c.npz", allow_pickle=False) as data:
        codes = data["codes"]
    with torch.inference_mode():
        want = codec.encode(torch.from_numpy(wave)[None, None], num_codebooks=3)
        audio = codec.decode(want)[0, 0, : wave.shape[0]].numpy()
    np.testing.assert_array_equal(codes, want[0].numpy())
    out, _ = sf.read(str(tmp_path / "out.wav"), dtype="float32")
    np.testing.assert_allclose(out, np.clip(audio, -1, 1), atol=1 / 2**15)
