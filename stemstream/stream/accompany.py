"""The file front end of the real-time engine (``stemstream accompany``).

A file is streamed through a :class:`~stemstream.stream.session.Session` block by block, as
a sound card would deliver it: blocks of ``block_seconds`` at the file's own rate and channel
count (the session resamples and downmixes). Two clocks:

- virtual (default): blocks are pushed as fast as the machine runs; the clock places each
  one at its capture time and charges each piece of work its measured compute time, so the
  stem depends only on the input, model and seed, while the report shows what live use on
  this machine would meet (RTF, per-chunk slack against the latency budget, misses);
- real time (``realtime=True``): blocks are pushed when they would have been captured (the
  loop sleeps until each block's end), timed by the wall clock; missed chunks play silence
  exactly as live, so the stem shows what a listener would hear.

Outputs: the stem (codec rate, as long as the input), optionally the appendix-A.7 mix of
input and stem, the session report (JSON) and its slack timeline (PNG).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stemstream import audio
from stemstream.config import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from stemstream.data.instruments import class_name, playable_class
from stemstream.errors import ConfigError
from stemstream.guidance import Guidance
from stemstream.mixing import check_mix_channels, mix_with_input
from stemstream.outputs import all_or_nothing, check_outputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccompanyResult:
    """What :func:`accompany_file` wrote and how the stream went.

    Attributes:
        stem_path / mix_path / report_path / plot_path: files written (``None`` = not asked).
        seconds: length of the input (and of the stem).
        instrument: class name played.
        model: where the model came from (``random-tiny-mock``, a checkpoint path...).
        trained: False for untrained stand-in models (noise, real timings).
        report: the session report (see :func:`stemstream.stream.report.session_report`).
    """

    stem_path: Path
    mix_path: Path | None
    report_path: Path | None
    plot_path: Path | None
    seconds: float
    instrument: str
    model: str
    trained: bool
    report: dict[str, Any]

    @property
    def rtf(self) -> float | None:
        return self.report["rtf"]

    @property
    def chunks(self) -> int:
        return self.report["chunks"]

    @property
    def missed_chunks(self) -> int:
        return self.report["missed_chunks"]

    @property
    def chunk_ms_p99(self) -> float | None:
        return self.report["chunk_ms"]["p99"]

    def summary(self) -> str:
        """One line: what was written, RTF, misses and per-chunk latency."""
        rep = self.report
        p99 = "n/a" if self.chunk_ms_p99 is None else f"{self.chunk_ms_p99:.1f} ms"
        slack = rep["slack_ms"]["min"]
        slack_text = "n/a" if slack is None else f"{slack:.0f} ms"
        rtf = "n/a" if self.rtf is None else f"{self.rtf:.3f}"
        return (
            f"{self.stem_path}: {self.seconds:.2f} s of {self.instrument} "
            f"({self.model}{'' if self.trained else ', untrained'}; t_f={rep['future_frames']}, "
            f"k={rep['chunk_frames']}, L={rep['latency_s'] * 1e3:.0f} ms, {rep['clock']} clock) "
            f"| RTF {rtf} | missed {self.missed_chunks}/{self.chunks} chunks "
            f"| chunk p99 {p99} | min slack {slack_text}"
        )


def _blocks(num_samples: int, block: int):
    """``(start, end)`` sample ranges of consecutive blocks covering the file."""
    for start in range(0, num_samples, block):
        yield start, min(start + block, num_samples)


def stream_file(session, samples: np.ndarray, sample_rate: int, block_seconds: float,
                realtime: bool = False, progress: bool = False) -> np.ndarray:
    """Push ``samples`` (``[N, C]``, at ``sample_rate``) through ``session`` in blocks of
    ``block_seconds``, finish, and return the whole output stream (``[session.output_length]``).

    With ``realtime`` each block is pushed no earlier than its capture time (the end of the
    block, measured from the start of the loop), so a wall-clock session sees live timing.
    """
    from tqdm import tqdm

    block = max(1, round(block_seconds * sample_rate))
    num_samples = samples.shape[0]
    outputs = [session.preroll()]
    bar = tqdm(total=num_samples, unit="s", unit_scale=1 / sample_rate, disable=not progress,
               desc="accompany", leave=False, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s "
               "[{elapsed}<{remaining}, {rate_fmt}]")
    origin = time.perf_counter()
    try:
        for start, end in _blocks(num_samples, block):
            if realtime:
                delay = origin + end / sample_rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            outputs.append(session.push(samples[start:end]))
            bar.update(end - start)
        outputs.append(session.finish())
    finally:
        bar.close()
    return np.concatenate(outputs)[: session.output_length]


def accompany_file(
    input_path: str | Path,
    instrument: str,
    out: str | Path,
    model: str | Path = "default",
    codec: str | None = None,
    tf_seconds: float | None = None,
    chunk_frames: int | None = None,
    latency: float = 0.2,
    realtime: bool = False,
    mix_out: str | Path | None = None,
    report_out: str | Path | None = None,
    plot_out: str | Path | None = None,
    block_seconds: float = 0.02,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int = DEFAULT_TOP_K,
    seed: int = 0,
    window: int | None = None,
    progress: bool = False,
    weights: str = "fp32",
    sample_rate: int | None = None,
    route: str | None = None,
    mix_channels: str = "input",
    guidance: Guidance | None = None,
) -> AccompanyResult:
    """Accompany an audio file with ``instrument`` through the real-time engine.

    Args:
        input_path: the input mix (any format libsndfile reads, any rate and channels).
        instrument: class name to play (``"Bass"``, ``"drums"``...).
        out: the stem to write (mono, codec rate, as long as the input).
        model: ``default``, ``random-cpu`` / ``random-tiny`` / ``random-tiny-mock`` or a
            streaming checkpoint (see :mod:`stemstream.stream.models`).
        codec: codec spec for a checkpoint (default: the one it was trained with).
        tf_seconds: future visibility ``t_f`` in seconds (rounded to frames); default: the
            model's.
        chunk_frames: chunk size ``k``; default: the model's.
        latency: output delay ``L`` in seconds that deadlines are measured against.
        realtime: pace the input in real time with a wall clock (see the module docstring).
        mix_out: also write the A.7 mix of the input and the stem.
        report_out: also write the session report (JSON).
        plot_out: also write the slack timeline (PNG).
        block_seconds: size of the pushed input blocks.
        temperature / top_k / seed: sampling (``temperature=0`` is greedy).
        window: KV-cache ring size in positions (default: the model's context).
        progress: show a progress bar on stderr.
        sample_rate: rate of the stem and mix files (default: the input's).
        route: how the decode step runs (``eager``, ``onnx``, ``compiled`` or ``auto``; see
            :mod:`stemstream.model.routes`); default ``eager``, ``onnx`` for int8 weights.
        mix_channels: ``input`` (the mix keeps the input's channels, the stem in the centre)
            or ``mono``.
        guidance: input guidance (1 = plain sampling; see
            :class:`~stemstream.model.sampling.SamplingConfig`); default: the model's own.

    Raises:
        AudioError: missing, corrupt, empty or non-finite input.
        ConfigError / CheckpointError / CodecError: unknown instrument, an unusable model
            spec or checkpoint (e.g. not a streaming model), invalid ``t_f`` / ``k``.
    """
    from stemstream.stream.clock import make_clock
    from stemstream.stream.report import plot_timeline, write_report
    from stemstream.stream.session import Session, SessionConfig

    if not block_seconds > 0:
        raise ConfigError(f"block size must be > 0 seconds, got {block_seconds}")
    check_mix_channels(mix_channels)
    inst_id = playable_class(instrument)  # fail fast, before loading anything heavy
    check_outputs([input_path], audio={"-o": out, "--mix": mix_out},
                  json={"--report": report_out}, plots={"--plot": plot_out})
    source = audio.load(input_path, sample_rate=None, channels=None)  # [C, N], native rate
    from stemstream.stream.models import resolve_stream_model

    loaded = resolve_stream_model(model, codec, tf_seconds, chunk_frames, weights, route)
    audio.check_duration(source, 1 / loaded.codec.frame_rate, str(input_path))
    config = SessionConfig(
        instrument=inst_id,
        input_sample_rate=source.sample_rate,
        latency=latency,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        window=window,
        guidance=loaded.guidance if guidance is None else guidance,
        output_sample_rate=sample_rate or source.sample_rate,
    )
    session = Session(loaded.model, loaded.codec, config, clock=make_clock(realtime))
    log.info("accompany %s (%.2f s, %d Hz, %d ch) with %s via %s", input_path, source.seconds,
             source.sample_rate, source.samples.shape[0], class_name(inst_id), loaded.source)
    stem = stream_file(session, source.samples.T, source.sample_rate, block_seconds,
                       realtime=realtime, progress=progress)
    rate = session.out_rate
    # exactly as long as the input (two resamplings may leave a sample over or short)
    length = -(-source.samples.shape[-1] * rate // source.sample_rate)
    stem = np.pad(stem[:length], (0, max(0, length - stem.shape[0])))
    with all_or_nothing() as written:
        stem_path = audio.save(out, stem, rate)
        written.append(stem_path)
        mix_path = None
        if mix_out is not None:
            mix = mix_with_input(source, stem, rate, mix_channels)
            mix_path = audio.save(mix_out, mix, rate)
            written.append(mix_path)
        report = session.report()
        report["input"] = {"path": str(input_path), "sample_rate": source.sample_rate,
                           "channels": int(source.samples.shape[0]), "seconds": source.seconds}
        report["model"] = {"source": loaded.source, "trained": loaded.trained,
                           "block_seconds": block_seconds, "route": loaded.describe_routes()}
        report_path = None
        if report_out is not None:
            report_path = write_report(report, report_out)
            written.append(report_path)
        plot_path = plot_timeline(report, plot_out) if plot_out is not None else None
    result = AccompanyResult(
        stem_path=stem_path,
        mix_path=mix_path,
        report_path=report_path,
        plot_path=plot_path,
        seconds=stem.shape[0] / rate,
        instrument=class_name(inst_id),
        model=loaded.source,
        trained=loaded.trained,
        report=report,
    )
    log.info("%s", result.summary())
    return result

