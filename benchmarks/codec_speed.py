"""Codec speed: encode / decode / encode+decode as x real time, offline and streamed.

Measures the frame-rate codec (``FrameCodec`` ``cpu16k``, random weights unless ``--codec``
loads one through :func:`stemstream.codec.registry.get_codec`) and, as the baseline measured
in the same run, the ``tiny`` causal DAC. Modes: offline on ``--seconds`` of audio, streamed one
frame per step, and streamed in 5-frame blocks (``--stream-seconds``; the DAC's 10-sample hop
means 1,600 steps per second, so it streams ``--dac-stream-seconds``). Streamed encode+decode
runs the live pipeline: each block is encoded and its codes decoded at once. Each row is the
median of ``--repeats`` timed runs after a warm-up, under ``torch.inference_mode()``, on 1 and
2 torch threads.

    python benchmarks/codec_speed.py [--codec PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from stemstream.codec.base import Codec

MODES = {"offline": None, "stream 1 frame": 1, "stream 5 frames": 5}


@dataclass
class Row:
    """One codec, mode and thread count; speeds are x real time (audio s / wall s)."""

    codec: str
    mode: str
    threads: int
    audio_seconds: float
    encode_xrt: float
    decode_xrt: float
    roundtrip_xrt: float
    frame_ms: float  # duration of one codec frame
    ms_per_frame: float | None  # encode+decode wall time per streamed frame


def test_audio(seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """``[1, 1, N]``: three tones with vibrato plus a little noise, peak about 0.5."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    freqs = torch.tensor([[220.0], [330.0], [523.0]])
    phase = 2 * math.pi * (freqs * t + 0.5 * torch.sin(2 * math.pi * 5 * t))
    wave = torch.sin(phase).sum(0) / 6 + 0.02 * torch.randn(t.shape, generator=gen)
    return wave[None, None]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stream_encode(codec: Codec, wave: torch.Tensor, block: int) -> torch.Tensor:
    """Encode ``wave`` in blocks of ``block`` samples with a streaming encoder."""
    encoder = codec.streaming_encoder()
    parts = [encoder.step(wave[..., i : i + block]) for i in range(0, wave.shape[-1], block)]
    parts.append(encoder.flush())
    return torch.cat(parts, -1)


def stream_decode(codec: Codec, codes: torch.Tensor, frames: int) -> torch.Tensor:
    """Decode ``codes`` ``frames`` at a time with a streaming decoder."""
    decoder = codec.streaming_decoder()
    parts = [decoder.step(codes[..., i : i + frames]) for i in range(0, codes.shape[-1], frames)]
    parts.append(decoder.flush())
    return torch.cat(parts, -1)


def stream_roundtrip(codec: Codec, wave: torch.Tensor, frames: int) -> torch.Tensor:
    """The live pipeline: each block of ``frames`` frames is encoded, then decoded."""
    encoder, decoder = codec.streaming_encoder(), codec.streaming_decoder()
    block, parts = frames * codec.hop_length, []
    for i in range(0, wave.shape[-1], block):
        parts.append(decoder.step(encoder.step(wave[..., i : i + block])))
    parts.append(decoder.step(encoder.flush()))
    parts.append(decoder.flush())
    return torch.cat(parts, -1)


def measure(name: str, codec: Codec, mode: str, threads: int, seconds: float, repeats: int) -> Row:
    """Time encode, decode and encode+decode of ``seconds`` of audio in one mode."""
    torch.set_num_threads(threads)
    wave = test_audio(seconds, codec.sample_rate)
    frames_per_block = MODES[mode]
    with torch.inference_mode():
        codes = codec.encode(wave)
        if frames_per_block is None:
            encode = lambda: codec.encode(wave)  # noqa: E731
            decode = lambda: codec.decode(codes)  # noqa: E731
            roundtrip = lambda: codec.decode(codec.encode(wave))  # noqa: E731
        else:
            block = frames_per_block * codec.hop_length
            encode = lambda: stream_encode(codec, wave, block)  # noqa: E731
            decode = lambda: stream_decode(codec, codes, frames_per_block)  # noqa: E731
            roundtrip = lambda: stream_roundtrip(codec, wave, frames_per_block)  # noqa: E731
        enc, dec, both = (median_seconds(fn, repeats) for fn in (encode, decode, roundtrip))
    frames = codes.shape[-1]
    return Row(
        codec=name,
        mode=mode,
        threads=threads,
        audio_seconds=seconds,
        encode_xrt=seconds / enc,
        decode_xrt=seconds / dec,
        roundtrip_xrt=seconds / both,
        frame_ms=1000 / codec.frame_rate,
        ms_per_frame=None if frames_per_block is None else 1000 * both / frames,
    )


def build_codecs(path: str | None) -> dict[str, Codec]:
    """The frame codec under test and the tiny causal DAC baseline, in eval mode."""
    from stemstream.codec.dac import DAC, DACConfig
    from stemstream.codec.framecodec import FrameCodec, FrameCodecConfig

    torch.manual_seed(0)
    if path:
        from stemstream.codec.registry import get_codec

        frame, frame_name = get_codec(path), f"{path}"
    else:
        frame, frame_name = FrameCodec(FrameCodecConfig.preset("cpu16k")), "FrameCodec cpu16k"
    dac = DAC(DACConfig.preset("tiny", causal_encoder=True, causal_decoder=True))
    return {frame_name: frame.eval(), "DAC tiny causal": dac.eval()}


def format_table(rows: list[Row], ratios: list[dict[str, object]]) -> str:
    """Rows as a fixed-width table followed by the FrameCodec/DAC speed ratios."""
    head = (
        f"{'codec':<20}{'mode':<17}{'thr':>4}{'audio s':>9}{'enc xRT':>10}{'dec xRT':>10}"
        f"{'enc+dec xRT':>13}{'frame ms':>10}{'ms/frame':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        per_frame = "-" if r.ms_per_frame is None else f"{r.ms_per_frame:.3f}"
        lines.append(
            f"{r.codec[:19]:<20}{r.mode:<17}{r.threads:>4}{r.audio_seconds:>9.1f}"
            f"{r.encode_xrt:>10.1f}{r.decode_xrt:>10.1f}{r.roundtrip_xrt:>13.1f}"
            f"{r.frame_ms:>10.3f}{per_frame:>10}"
        )
    lines += ["", "speed ratio FrameCodec / DAC tiny (x real time; >1 = FrameCodec faster)"]
    lines.append(f"{'mode':<17}{'thr':>4}{'encode':>9}{'decode':>9}{'enc+dec':>9}")
    for q in ratios:
        lines.append(
            f"{q['mode']:<17}{q['threads']:>4}{q['encode']:>9.2f}{q['decode']:>9.2f}"
            f"{q['roundtrip']:>9.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", default=None, help="a codec path for get_codec")
    parser.add_argument("--seconds", type=float, default=10.0, help="offline audio length")
    parser.add_argument("--stream-seconds", type=float, default=4.0)
    parser.add_argument("--dac-stream-seconds", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    codecs = build_codecs(args.codec)
    frame_name, dac_name = list(codecs)
    rows = []
    for name, codec in codecs.items():
        for threads in args.threads:
            for mode in MODES:
                if mode == "offline":
                    seconds = args.seconds
                else:
                    seconds = args.dac_stream_seconds if name == dac_name else args.stream_seconds
                rows.append(measure(name, codec, mode, threads, seconds, args.repeats))
    by_key = {(r.codec, r.mode, r.threads): r for r in rows}
    ratios = [
        {
            "mode": mode,
            "threads": threads,
            **{
                op: getattr(by_key[frame_name, mode, threads], f"{op}_xrt")
                / getattr(by_key[dac_name, mode, threads], f"{op}_xrt")
                for op in ("encode", "decode", "roundtrip")
            },
        }
        for threads in args.threads
        for mode in MODES
    ]
    if args.json:
        result = {
            "torch": torch.__version__,
            "repeats": args.repeats,
            "rows": [asdict(r) for r in rows],
            "ratio_framecodec_over_dac": ratios,
        }
        print(json.dumps(result))
    else:
        print(f"torch {torch.__version__}, median of {args.repeats} after a warm-up")
        print(format_table(rows, ratios))


if __name__ == "__main__":
    main()
