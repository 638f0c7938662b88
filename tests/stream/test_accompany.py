"""`stemstream accompany`: the file front end of the real-time engine, on an untrained tiny
decoder over MockCodec (``random-tiny-mock``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from stemstream import audio
from stemstream.cli import cli
from stemstream.data.instruments import class_from_name
from stemstream.model.sampling import SamplingConfig
from stemstream.stream.accompany import accompany_file
from stemstream.stream.models import load_stream_model
from stemstream.stream.offline import generate_codes

MODEL = "random-tiny-mock"
CODEC_RATE = 16000  # MockCodec


def _write_input(path: Path, sample_rate: int, channels: int, seconds: float = 0.7) -> Path:
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    rng = np.random.default_rng(0)
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    data = np.stack([tone + 0.05 * rng.standard_normal(n) for _ in range(channels)], axis=1)
    sf.write(str(path), data.astype(np.float32), sample_rate)
    return path


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["accompany", *args, "--model", MODEL, "--no-progress"])


@pytest.mark.parametrize(("sample_rate", "channels"), [(16000, 1), (44100, 2)])
def test_stem_is_as_long_as_the_input_at_the_input_rate(tmp_path, sample_rate, channels):
    src = _write_input(tmp_path / "in.wav", sample_rate, channels)
    result = accompany_file(src, "bass", tmp_path / "stem.wav", model=MODEL, top_k=5)
    stem, rate = sf.read(str(tmp_path / "stem.wav"))
    n_in = sf.info(str(src)).frames
    assert rate == sample_rate and stem.ndim == 1
    assert stem.shape[0] == n_in
    assert result.seconds == pytest.approx(n_in / sample_rate, abs=1 / CODEC_RATE)
    assert np.abs(stem).max() > 0  # it played something
    accompany_file(src, "bass", tmp_path / "s16.wav", model=MODEL, top_k=5,
                   sample_rate=CODEC_RATE)
    stem16, rate16 = sf.read(str(tmp_path / "s16.wav"))
    assert rate16 == CODEC_RATE and stem16.shape[0] == math.ceil(n_in * CODEC_RATE / sample_rate)


def test_cli_writes_stem_mix_report_and_plot(tmp_path):
    src = _write_input(tmp_path / "in.wav", 44100, 2)
    res = _invoke(str(src), "--instrument", "Drums", "-o", str(tmp_path / "stem.wav"),
                  "--mix", str(tmp_path / "mix.wav"), "--report", str(tmp_path / "r.json"),
                  "--plot", str(tmp_path / "p.png"), "--chunk", "2", "--tf", "0.04",
                  "--block-ms", "7", "--top-k", "5")
    assert res.exit_code == 0, res.output
    assert "RTF" in res.output and "missed" in res.output and "Percussive" in res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["rtf"] > 0 and report["chunks"] == len(report["records"]) > 0
    assert (report["future_frames"], report["chunk_frames"]) == (2, 2)
    assert report["clock"] == "virtual" and report["input"]["channels"] == 2
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mix, rate = sf.read(str(tmp_path / "mix.wav"))
    stem, _ = sf.read(str(tmp_path / "stem.wav"))
    assert rate == 44100 and mix.shape == (stem.shape[0], 2)  # the input's rate and channels
    assert np.abs(mix).max() <= 1.0
    assert audio.loudness(mix.T, rate) == pytest.approx(-18.0, abs=0.5)
    res = _invoke(str(src), "--instrument", "Drums", "-o", str(tmp_path / "stem2.wav"),
                  "--mix", str(tmp_path / "mono.wav"), "--mix-channels", "mono",
                  "--top-k", "5")
    assert res.exit_code == 0, res.output
    mono, _ = sf.read(str(tmp_path / "mono.wav"))
    assert mono.shape == stem.shape
    assert audio.loudness(mono, rate) == pytest.approx(-18.0, abs=0.5)


def test_virtual_clock_stems_are_bit_identical_across_runs(tmp_path):
    src = _write_input(tmp_path / "in.wav", 22050, 1)
    for name in ("a", "b"):
        accompany_file(src, "piano", tmp_path / f"{name}.wav", model=MODEL, seed=3,
                       block_seconds=0.013)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    accompany_file(src, "piano", tmp_path / "c.wav", model=MODEL, seed=4, block_seconds=0.013)
    assert (tmp_path / "a.wav").read_bytes() != (tmp_path / "c.wav").read_bytes()


@pytest.mark.parametrize(("tf_seconds", "chunk_frames"), [(None, None), (0.06, 1), (-0.04, 3)])
def test_greedy_stream_equals_offline_generation(tmp_path, tf_seconds, chunk_frames):
    src = _write_input(tmp_path / "in.wav", CODEC_RATE, 1)
    accompany_file(src, "bass", tmp_path / "stream.wav", model=MODEL, temperature=0.0,
                   tf_seconds=tf_seconds, chunk_frames=chunk_frames, block_seconds=0.011)
    loaded = load_stream_model(
        MODEL,
        future_frames=None if tf_seconds is None else round(tf_seconds * 50),
        chunk_frames=chunk_frames,
    )
    model, codec = loaded.model, loaded.codec
    wave = torch.from_numpy(audio.load(src).samples)[None]  # [1, 1, N]
    with torch.inference_mode():
        codes = codec.encode(wave)[:, : model.config.num_codebooks]
        out = generate_codes(model, codec.embed(codes).float(),
                             torch.tensor([class_from_name("bass")]),
                             SamplingConfig(temperature=0.0), torch.Generator().manual_seed(0))
        offline = codec.decode(out)[0, 0, : wave.shape[-1]].numpy()
    audio.save(tmp_path / "offline.wav", offline, CODEC_RATE)
    streamed, _ = sf.read(str(tmp_path / "stream.wav"), dtype="int16")
    expected, _ = sf.read(str(tmp_path / "offline.wav"), dtype="int16")
    np.testing.assert_array_equal(streamed, expected)


def test_realtime_paces_the_input(tmp_path):
    src = _write_input(tmp_path / "in.wav", CODEC_RATE, 1, seconds=0.3)
    result = accompany_file(src, "bass", tmp_path / "stem.wav", model=MODEL, realtime=True,
                            top_k=5, latency=1.0)
    assert result.report["clock"] == "wall" and result.report["policy"] == "silence"
    last = result.report["records"][-1]
    assert last["end"] >= 0.29  # the stream took (at least) as long as the audio
    assert sf.info(str(tmp_path / "stem.wav")).frames == int(0.3 * CODEC_RATE)


def _one_error_line(res) -> str:
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


def test_cli_errors_are_one_line(tmp_path):
    good = _write_input(tmp_path / "in.wav", CODEC_RATE, 1)
    out = str(tmp_path / "stem.wav")
    assert "unknown instrument" in _one_error_line(
        _invoke(str(good), "--instrument", "kazoo", "-o", out))
    assert "no such audio file" in _one_error_line(
        _invoke(str(tmp_path / "missing.wav"), "--instrument", "bass", "-o", out))
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00not really a wave file")
    assert "cannot decode" in _one_error_line(
        _invoke(str(tmp_path / "corrupt.wav"), "--instrument", "bass", "-o", out))
    data = np.zeros(1600, dtype=np.float32)
    data[10] = np.nan
    sf.write(str(tmp_path / "nan.wav"), data, CODEC_RATE, subtype="FLOAT")
    assert "NaN" in _one_error_line(
        _invoke(str(tmp_path / "nan.wav"), "--instrument", "bass", "-o", out))
    assert not Path(out).exists()


def test_non_streaming_checkpoint_is_refused(tmp_path, monkeypatch):
    class Loaded:  # what load_model returns for an offline-family checkpoint
        family = "prefix"

    ckpt = tmp_path / "prefix.safetensors"
    ckpt.write_bytes(b"")
    monkeypatch.setattr("stemstream.model.checkpoints.load_model", lambda path: Loaded())
    src = _write_input(tmp_path / "in.wav", CODEC_RATE, 1)
    res = CliRunner().invoke(cli, ["accompany", str(src), "--instrument", "bass", "-o",
                                   str(tmp_path / "stem.wav"), "--model", str(ckpt),
                                   "--no-progress"])
    assert "'streaming' family" in _one_error_line(res)
