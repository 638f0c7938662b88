"""`stemstream bench`: real-time factor, step latency and ``(t_f, k, L)`` feasibility (SPEC 7, 9).

Two measurements on generated test audio (:func:`synthetic_music`, a seeded music-like signal),
streamed through a :class:`~stemstream.stream.session.Session` in 20 ms blocks on a
:class:`~stemstream.stream.clock.VirtualClock` (its timeline is what a live stream would see
if each piece of work took the compute time just measured):

1. **Default configuration** (the model's own ``t_f``, ``k``): real-time factor, per-frame and
   per-chunk compute percentiles, the codec-in / model / codec-out split, memory, KV window.
2. **Feasibility grid**: the same weights run at other ``(t_f, k)``
   (:func:`~stemstream.stream.session.with_stream_args`; quality is not the point here, time
   is) and, for each output latency ``L``, the share of chunks that miss their deadline, plus
   the smallest ``L`` with no miss (the *effective latency* of that ``(t_f, k)``).

The budget of one chunk. The chunk starting at step ``c`` hears input frames ``< c + t_f``, so
it can start once input frame ``c + t_f - 1`` is captured and encoded, i.e. no earlier than
``(c + t_f) * 20 ms`` plus the encoder's time (and later if the single worker is still busy
with earlier work). Under the delay pattern codebook ``q`` of frame ``t`` is emitted at step
``t + q``, so the first frame this chunk completes is ``c - K + 1``, and its first sample must
play at ``(c - K + 1) * 20 ms + L``. The chunk meets its deadline iff::

    end_of_chunk <= (c - K + 1) * 20 ms + L,   roughly   L >= (t_f + K - 1) * 20 ms + compute

so the delay pattern costs ``K - 1`` frames of latency on top of ``t_f``, and ``L = 0`` needs
``t_f <= -(K - 1) - compute / 20 ms``. Later frames of a chunk are due later, so the first
sample decides a miss.

Misses at every ``L`` come from one run: on a virtual clock with the "late" policy the
schedule (each chunk's ready, start and end time) does not depend on ``L``; a chunk's first
sample plays at ``deadline - L_run + L``, so the run's records are re-scored per ``L`` and the
effective latency is ``max(end - first_sample_time)`` over chunks. Feasibility is therefore
monotone in ``L`` by construction. A configuration whose compute exceeds real time builds an
ever-growing backlog: its effective latency grows with the stream and is reported as such
(``rtf >= 1``).

Per-frame latency is ``chunk compute / k``, where a chunk's compute is everything the engine
did since the previous chunk's output: encoding the input that arrived in between, the model
call and decoding the frames it completed. Summed over chunks it is the whole compute, so at
``k = 1`` (one 20 ms block per chunk) it is the end-to-end time per frame SPEC section 9 sets
a target for (p99 < 20 ms).
"""

from __future__ import annotations

import math
import resource
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch

from stemstream.guidance import Guidance, format_guidance, guidance_json, is_guided, parse_guidance
from stemstream.model.quantize import num_weights
from stemstream.stream.plan import StreamPlan
from stemstream.stream.report import percentiles

BLOCK_SECONDS = 0.02
DEFAULT_LATENCIES = (0.0, 0.04, 0.1, 0.2, 0.5)
DEFAULT_GRID_FUTURE_FRAMES = (-25, -5, 0, 5, 25)
DEFAULT_GRID_CHUNK_FRAMES = (1, 5, 25)
GRID_SECONDS = 4.0
SETTLE_SECONDS = 0.5


@dataclass(frozen=True)
class StreamTiming:
    """What one measured stream produced (seconds unless named otherwise).

    Attributes:
        audio_seconds: input length.
        wall_seconds: wall time of all ``push`` / ``finish`` calls (everything the session
            did, resampling and bookkeeping included).
        chunk_s: per chunk, its compute (see the module docstring).
        codec_in_s / model_s / codec_out_s: per chunk, the three parts of ``chunk_s``.
        lateness_s: per chunk with audio, ``end - play time of its first sample at L = 0``.
        play_s: per chunk with audio, play time of its first sample at ``L = 0``.
        report: the session's own report (without per-chunk records).
    """

    audio_seconds: float
    wall_seconds: float
    chunk_s: np.ndarray
    codec_in_s: np.ndarray
    model_s: np.ndarray
    codec_out_s: np.ndarray
    lateness_s: np.ndarray
    play_s: np.ndarray
    report: dict[str, Any]


def synthetic_music(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """A music-like mono test signal ``[N]`` (float32, peak about 0.6): a walking line of
    harmonic notes (decaying partials) over a pad chord, plus clicks on a beat grid."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    wave = np.zeros(n)
    tempo_hz = rng.uniform(1.5, 2.5)  # beats per second
    note_s = 1.0 / tempo_hz
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    root = rng.uniform(100.0, 200.0)
    for start in np.arange(0.0, seconds, note_s):
        f0 = root * 2 ** (rng.choice(scale) / 12)
        lo, hi = int(start * sample_rate), min(n, int((start + note_s) * sample_rate))
        tau = t[lo:hi] - start
        env = np.exp(-3.0 * tau)
        for h in range(1, 6):
            wave[lo:hi] += env * np.sin(2 * np.pi * h * f0 * tau) / h * 0.3
    for semitones in (0, 4, 7):  # a quiet sustained chord
        wave += 0.05 * np.sin(2 * np.pi * 2 * root * 2 ** (semitones / 12) * t)
    click = np.exp(-np.arange(int(0.01 * sample_rate)) / (0.002 * sample_rate))
    for beat in np.arange(0.0, seconds, note_s / 2):
        lo = int(beat * sample_rate)
        seg = click[: max(0, n - lo)]
        wave[lo : lo + seg.shape[0]] += 0.4 * seg * rng.choice([-1.0, 1.0], seg.shape[0])
    wave += 0.005 * rng.standard_normal(n)
    return (0.6 * wave / max(1e-9, np.abs(wave).max())).astype(np.float32)


def stream_timing(session: Any, audio: np.ndarray) -> StreamTiming:
    """Push ``audio`` (at the session's input rate) in 20 ms blocks, finish, and collect the
    per-chunk timings of :class:`StreamTiming` from the session's own records."""
    rate = session.config.input_sample_rate
    block = max(1, round(BLOCK_SECONDS * rate))
    keep = session.config.keep_records
    chunk_in: list[float] = []  # codec-in attributed to each chunk
    pending_in = 0.0
    wall = 0.0
    starts = list(range(0, audio.shape[0], block))
    began = time.perf_counter()
    session.preroll()  # chunks that need no input (t_f <= 0) run before the stream starts
    wall += time.perf_counter() - began
    chunk_in.extend([0.0] * session.stats.chunks)
    for pos in [*starts, None]:  # None: finish()
        before = session.stats.chunks
        began = time.perf_counter()
        if pos is None:
            session.finish()
        else:
            session.push(audio[pos : pos + block])
        wall += time.perf_counter() - began
        _, enc_start, enc_end, _ = session.pushes[-1]
        pending_in += enc_end - enc_start
        for _ in range(session.stats.chunks - before):
            chunk_in.append(pending_in)
            pending_in = 0.0
    if session.stats.chunks > keep:
        raise ValueError(f"the stream made {session.stats.chunks} chunks; keep_records={keep}")
    records = [r for r in session.records if r.new_chunk]
    model = np.array([r.model_s for r in records])
    out = np.array([r.codec_out_s for r in records])
    codec_in = np.array(chunk_in)
    latency = session.config.latency
    audible = [r for r in session.records if r.deadline is not None]
    play = np.array([r.deadline - latency for r in audible])
    lateness = np.array([r.end for r in audible]) - play
    report = session.report()
    report.pop("records")
    return StreamTiming(
        audio_seconds=audio.shape[0] / rate,
        wall_seconds=wall,
        chunk_s=codec_in + model + out,
        codec_in_s=codec_in,
        model_s=model,
        codec_out_s=out,
        lateness_s=lateness,
        play_s=play,
        report=report,
    )


def feasibility(timing: StreamTiming, latencies: Iterable[float],
                settle_seconds: float = SETTLE_SECONDS) -> dict[str, Any]:
    """Miss rate per output latency ``L`` and the smallest ``L`` without a miss, over the
    steady state: chunks whose first sample plays at or after ``settle_seconds``.

    The start is reported apart (``startup_effective_latency_s``): a session begins work when
    the first block has arrived (20 ms in), and then runs every chunk that needs no input
    (``c + t_f <= 1``) in one burst, so frame 0 is late for any ``L`` below 20 ms plus that
    burst's compute, whatever ``t_f``. A live front end can hide this by generating those
    chunks before the stream starts.
    """
    steady = timing.play_s >= settle_seconds
    late, start = timing.lateness_s[steady], timing.lateness_s[~steady]
    count = max(1, late.size)
    return {
        "miss_rate": {f"{L:g}": float((late > L).sum() / count) for L in latencies},
        "effective_latency_s": max(0.0, float(late.max())) if late.size else 0.0,
        "startup_effective_latency_s": max(0.0, float(start.max())) if start.size else 0.0,
        "chunks_scored": int(late.size),
    }


def full_window_model_ms(model: Any, window: int, frames: int = 50, seed: int = 0
                         ) -> dict[str, float | None]:
    """Model compute per frame (ms percentiles, ``k = 1``) once the KV ring is full — the
    steady state of a stream longer than ``window`` frames, which a short benchmark stream
    never reaches (attention then spans ``window`` positions every step). The caches are
    filled with random keys/values at positions ``0 .. window - 1`` instead of generating
    ``window`` steps."""
    model = _view(model, model.config.future_frames, 1)
    gen = torch.Generator().manual_seed(seed)
    state = model.new_state(torch.tensor([0]), window=window)
    with torch.inference_mode():
        for cache in state.caches:
            batch, heads, _, head_dim = cache.keys.shape
            shape = (batch, heads, window, head_dim)
            cache.update(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen),
                         torch.arange(window))
        num_k = model.config.num_codebooks
        state.tokens = [torch.zeros(1, num_k, dtype=torch.long)]
        state.step, state.token_base = window, window - 1
        newest = window + model.config.future_frames - 1  # first step's newest input frame
        offset = max(0, newest - model.input_context)  # and the frames it also hears
        latents = torch.randn(1, model.config.input_channels, newest - offset + frames + 1,
                              generator=gen)
        times = []
        for _ in range(frames):
            began = time.perf_counter()
            model.generate_chunk(state, latents, None, gen, input_offset=offset)
            times.append(time.perf_counter() - began)
            state.forget_tokens(2)
    return _ms(np.array(times[min(5, frames - 1):]))


def _ms(values: np.ndarray, per: float = 1.0) -> dict[str, float | None]:
    return percentiles(np.asarray(values) * 1e3 / per)


def _rss_mb() -> dict[str, float]:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    current = math.nan
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        pass
    return {"rss_mb": current, "peak_rss_mb": peak}


def bench_session(model: Any, codec: Any, seed: int = 0, latency: float = 10.0,
                  codec_block: int = 1, guidance: Guidance = 1.0) -> Any:
    """A session at the codec's rate on a :class:`VirtualClock` with the "late" policy (so
    the schedule does not depend on ``latency``; misses at any ``L`` are re-scored from the
    records, so the session's own ``L`` only has to be large enough not to warn) that keeps
    every chunk record. ``codec_block``: frames per codec call (1: frame by frame, which the
    re-scoring at any ``L`` assumes); ``guidance``: the input guidance the model is sampled
    with (its cost: both halves of every step)."""
    from stemstream.stream.clock import VirtualClock
    from stemstream.stream.session import Session, SessionConfig

    config = SessionConfig(
        input_sample_rate=codec.sample_rate, latency=latency, seed=seed, policy="late",
        keep_records=1_000_000, codec_block=codec_block, guidance=guidance,
    )
    return Session(model, codec, config, VirtualClock())


def _view(model: Any, future_frames: int, chunk_frames: int) -> Any:
    from stemstream.stream.session import with_stream_args

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a timing run does not care about trained visibility
        return with_stream_args(model, future_frames, chunk_frames)


def _summary(timing: StreamTiming, k: int) -> dict[str, Any]:
    frames = max(1, len(timing.chunk_s)) * k
    split = {
        "codec_in": float(timing.codec_in_s.sum() * 1e3 / frames),
        "model": float(timing.model_s.sum() * 1e3 / frames),
        "codec_out": float(timing.codec_out_s.sum() * 1e3 / frames),
    }
    compute = float(timing.chunk_s.sum())
    frame = _ms(timing.chunk_s, per=k)
    return {
        "rtf": timing.wall_seconds / timing.audio_seconds,
        "rtf_compute": compute / timing.audio_seconds,
        "frame_ms": frame,
        "p99_frame_ms": frame["p99"],
        "chunk_ms": _ms(timing.chunk_s),
        "split_ms_per_frame": split,
        "model_ms_per_chunk": _ms(timing.model_s),
        "chunks": len(timing.chunk_s),
    }


class GridRow(TypedDict):
    """One ``(t_f, k)`` configuration of the feasibility grid."""

    future_frames: int
    chunk_frames: int
    rtf: float
    p99_frame_ms: float
    p99_chunk_ms: float
    recency_gap_frames: float
    miss_rate: dict[str, float]  # per L (seconds, as text)
    effective_latency_s: float
    startup_effective_latency_s: float
    chunks_scored: int


class BenchResult(TypedDict):
    """What :func:`run_bench` returns (JSON-safe; ``stemstream bench --json`` prints it)."""

    format: str
    model: str
    trained: bool
    route: str
    guidance: float | list[float]
    codec: str
    threads: int
    seconds: float
    future_frames: int
    chunk_frames: int
    num_codebooks: int
    frame_seconds: float
    kv_window: int
    model_ms_per_frame_full_window: dict[str, float | None]
    rtf: float  # wall time of the session calls / audio seconds
    rtf_compute: float  # clocked codec + model work only
    frame_ms: dict[str, float]  # p50 / p95 / p99
    p99_frame_ms: float
    chunk_ms: dict[str, float]
    split_ms_per_frame: dict[str, float]  # codec_in / model / codec_out
    model_ms_per_chunk: dict[str, float]
    chunks: int
    feasibility: dict[str, Any]
    memory: dict[str, float]  # rss_mb, peak_rss_mb, params
    latencies_s: list[float]
    settle_seconds: float
    grid: list[GridRow]
    grid_seconds: float
    best_future_frames: dict[str, dict[str, int | None]]


def run_bench(
    model: str = "default",
    codec: str | None = None,
    seconds: float = 10.0,
    configs: Sequence[tuple[int, int]] | None = None,
    latencies: Sequence[float] = DEFAULT_LATENCIES,
    threads: int = 1,
    warmup_seconds: float = 1.0,
    seed: int = 0,
    grid_seconds: float = GRID_SECONDS,
    settle_seconds: float = SETTLE_SECONDS,
    weights: str = "fp32",
    route: str = "auto",
) -> BenchResult:
    """Benchmark a streaming model on this machine (see the module docstring).

    Args:
        model: ``--model`` spec (:func:`~stemstream.stream.models.load_stream_model`).
        codec: ``--codec`` spec (default: the model's).
        seconds: test audio streamed in the default configuration.
        configs: ``(t_f, k)`` pairs of the feasibility grid (frames); default the product of
            ``DEFAULT_GRID_FUTURE_FRAMES`` and ``DEFAULT_GRID_CHUNK_FRAMES``; ``()`` skips it.
        latencies: output latencies ``L`` (seconds) scored in the grid.
        threads: torch intra-op threads.
        warmup_seconds: untimed stream first (kernel warm-up).
        seed: test audio and sampling seed.
        grid_seconds: test audio per grid configuration.
        settle_seconds: feasibility scores chunks playing from then on (see
            :func:`feasibility`; the start is reported apart).
        weights: ``fp32`` or ``int8`` model weights.
        route: how the decode step runs (:mod:`stemstream.model.routes`).

    Returns:
        a :class:`BenchResult` (a JSON-safe dict): ``rtf`` (wall time of the session calls /
        audio seconds),
        ``rtf_compute`` (clocked codec + model work only), ``frame_ms`` / ``chunk_ms``
        (``p50``/``p95``/``p99``), ``p99_frame_ms``, ``split_ms_per_frame``
        (``codec_in``/``model``/``codec_out``), ``memory`` (``rss_mb``, ``peak_rss_mb``,
        ``params``), ``kv_window``, ``model_ms_per_frame_full_window`` (percentiles once the
        KV ring is full, see :func:`full_window_model_ms`), ``future_frames``,
        ``chunk_frames``, ``feasibility`` of the default configuration, ``grid`` (one row
        per ``(t_f, k)``: ``rtf``, ``p99_frame_ms``, ``p99_chunk_ms``, ``miss_rate`` per
        ``L``, ``effective_latency_s``, ``startup_effective_latency_s``) and
        ``best_future_frames`` (per ``k`` and ``L``, the largest feasible ``t_f`` of the grid).
    """
    from stemstream.stream.models import load_stream_model

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no trained default model yet" is reported below
            loaded = load_stream_model(model, codec, weights=weights, route=route)
        base, codec_model = loaded.model, loaded.codec
        cfg = base.config
        rate = codec_model.sample_rate
        if warmup_seconds > 0:
            stream_timing(bench_session(base, codec_model, seed, guidance=loaded.guidance),
                          synthetic_music(warmup_seconds, rate, seed + 1))
        timing = stream_timing(bench_session(base, codec_model, seed, guidance=loaded.guidance),
                               synthetic_music(seconds, rate, seed))
        result: BenchResult = {  # the grid is added below
            "format": "stemstream-bench",
            "model": loaded.source,
            "trained": loaded.trained,
            "route": loaded.describe_routes(),
            "guidance": guidance_json(loaded.guidance),
            "codec": type(codec_model).__name__,
            "threads": threads,
            "seconds": seconds,
            "future_frames": cfg.future_frames,
            "chunk_frames": cfg.chunk_frames,
            "num_codebooks": cfg.num_codebooks,
            "frame_seconds": codec_model.hop_length / rate,
            "kv_window": timing.report["kv_window"],
            "model_ms_per_frame_full_window": full_window_model_ms(
                base, timing.report["kv_window"], seed=seed),
            **_summary(timing, cfg.chunk_frames),
            "feasibility": feasibility(timing, latencies, settle_seconds),
            "memory": {**_rss_mb(), "params": num_weights(base)},
            "latencies_s": list(latencies),
            "settle_seconds": settle_seconds,
        }
        if configs is None:
            configs = [(tf, k) for k in DEFAULT_GRID_CHUNK_FRAMES
                       for tf in DEFAULT_GRID_FUTURE_FRAMES]
        grid: list[GridRow] = []
        audio = synthetic_music(grid_seconds, rate, seed)
        for tf, k in configs:
            view = _view(base, tf, k)
            row_timing = stream_timing(
                bench_session(view, codec_model, seed, guidance=loaded.guidance), audio)
            summary = _summary(row_timing, k)
            grid.append({
                "future_frames": tf,
                "chunk_frames": k,
                "rtf": summary["rtf"],
                "p99_frame_ms": summary["p99_frame_ms"],
                "p99_chunk_ms": summary["chunk_ms"]["p99"],
                "recency_gap_frames": StreamPlan(tf, k, cfg.num_codebooks,
                                                 codec_model.frame_rate).recency_gap_frames,
                **feasibility(row_timing, latencies, settle_seconds),
            })
        result["grid"] = grid
        result["grid_seconds"] = grid_seconds
        result["best_future_frames"] = best_future_frames(grid, latencies)
        result["memory"].update(_rss_mb())
        return result
    finally:
        torch.set_num_threads(previous_threads)


def best_future_frames(grid: list[GridRow], latencies: Sequence[float]
                       ) -> dict[str, dict[str, int | None]]:
    """``{k: {L: largest t_f of the grid with no miss at L (None: none)}}`` — the effective
    ``t_f`` of SPEC section 1 per chunk size and latency."""
    best: dict[str, dict[str, int | None]] = {}
    for row in grid:
        per_k = best.setdefault(str(row["chunk_frames"]), {f"{L:g}": None for L in latencies})
        for key, rate in row["miss_rate"].items():
            if rate == 0.0 and (per_k[key] is None or row["future_frames"] > per_k[key]):
                per_k[key] = row["future_frames"]
    return best


def _rate(rate: float) -> str:
    if rate == 0:
        return "ok"
    return "<1%" if rate < 0.01 else f"{100 * rate:.0f}%"


def format_bench(result: BenchResult) -> str:
    """Plain aligned tables of :func:`run_bench`'s result."""
    lines = []
    mem = result["memory"]
    lines.append(
        f"model {result['model']} ({'trained' if result['trained'] else 'untrained'}), "
        f"codec {result['codec']}, {result['threads']} thread(s), "
        f"{mem['params'] / 1e6:.1f}M params, KV window {result['kv_window']} positions"
    )
    guidance = parse_guidance(result.get("guidance", 1.0))
    lines.append(f"routes: {result['route']}" + (
        f"; input guidance {format_guidance(guidance)} (both halves of every step)"
        if is_guided(guidance) else ""))
    lines.append(
        f"default config t_f={result['future_frames']} k={result['chunk_frames']}, "
        f"{result['seconds']:g} s of test audio in {BLOCK_SECONDS * 1e3:.0f} ms blocks"
    )
    lines.append(f"  real-time factor   {result['rtf']:.3f} "
                 f"(clocked compute only: {result['rtf_compute']:.3f})")
    header = f"  {'':<18}{'p50':>9}{'p95':>9}{'p99':>9}"
    lines.append(header)
    for name, key in (("ms per frame", "frame_ms"), ("ms per chunk", "chunk_ms")):
        p = result[key]
        lines.append(f"  {name:<18}{p['p50']:>9.2f}{p['p95']:>9.2f}{p['p99']:>9.2f}")
    split = result["split_ms_per_frame"]
    lines.append("  mean ms per frame: " + ", ".join(f"{k} {v:.2f}" for k, v in split.items()))
    full = result["model_ms_per_frame_full_window"]
    lines.append(f"  model ms per frame once the {result['kv_window']}-position KV ring is full "
                 f"(long streams): p50 {full['p50']:.2f}, p99 {full['p99']:.2f}")
    lines.append(f"  memory: RSS {mem['rss_mb']:.0f} MB, peak {mem['peak_rss_mb']:.0f} MB")
    feas = result["feasibility"]
    lines.append(f"  effective latency {feas['effective_latency_s'] * 1e3:.0f} ms "
                 f"(first {result['settle_seconds']:g} s: "
                 f"{feas['startup_effective_latency_s'] * 1e3:.0f} ms)")
    if result["grid"]:
        lats = result["latencies_s"]
        lines.append("")
        lines.append(f"feasibility after the first {result['settle_seconds']:g} s (miss rate per "
                     "output latency L; eff = smallest L with no miss; start = same, first "
                     f"{result['settle_seconds']:g} s)")
        head = f"{'t_f':>5}{'k':>4}{'gap':>6}{'rtf':>7}{'p99 ms/fr':>10}"
        head += "".join(f"{f'L={L * 1e3:g}ms':>10}" for L in lats)
        head += f"{'eff ms':>9}{'start ms':>10}"
        lines.append(head)
        lines.append("-" * len(head))
        for row in result["grid"]:
            line = (f"{row['future_frames']:>5}{row['chunk_frames']:>4}"
                    f"{row['recency_gap_frames']:>6.1f}{row['rtf']:>7.3f}"
                    f"{row['p99_frame_ms']:>10.2f}")
            for L in lats:
                rate = row["miss_rate"][f"{L:g}"]
                line += f"{_rate(rate):>10}"
            line += f"{row['effective_latency_s'] * 1e3:>9.0f}"
            line += f"{row['startup_effective_latency_s'] * 1e3:>10.0f}"
            lines.append(line)
        lines.append("")
        lines.append("largest feasible t_f (frames) per k and L:")
        for k, per_l in result["best_future_frames"].items():
            lines.append(f"  k={k:<3}" + "".join(
                f"  L={float(L) * 1e3:g}ms: {'-' if v is None else v}" for L, v in per_l.items()))
    return "\n".join(lines)
