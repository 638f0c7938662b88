"""`stemstream serve`: the real-time engine behind a WebSocket, with a web page (SPEC section 7).

Protocol (docs/serve.md has it in full):

* ``GET /`` the page; ``GET /health`` JSON (model, codec, sessions, capacity, instruments).
* ``WS /ws`` (``?token=...`` when the server requires one). The client's first message is text
  JSON ``{"type": "start", "instrument": "Bass", "sample_rate": 48000, "channels": 1}``
  (optional ``"latency"`` and ``"future_seconds"``); the server answers ``{"type": "ready",
  "sample_rate": SR, ...}``. Then binary float32 little-endian PCM in (interleaved when
  ``channels > 1``, any block size), binary float32 mono PCM of the accompaniment out at
  ``SR`` (the client's rate), aligned with the input, and ``{"type": "stats", ...}`` at least
  once a second while audio flows. ``{"type": "stop"}`` flushes the rest, then ``{"type":
  "done", "report": {...}}`` and a normal close. Errors are ``{"type": "error", "message":
  ...}`` followed by a close with a WebSocket close code (:class:`Close`).

Each connection runs its own :class:`~stemstream.stream.session.Session`; ``max_sessions``
bounds how many run at once. With a ``k = 1`` model (the defaults) the sessions share one
batched engine (:class:`~stemstream.stream.engine.EngineWorker`): the blocks of all clients
that arrive together advance in one model forward. With ``engines`` > 1, that many engines run
in child processes (:class:`~stemstream.stream.remote.RemoteEngine`: one per core, since one
process runs one round at a time), each batching the sessions it holds; a new session goes to
the engine holding the fewest. A client asking for another ``t_f`` (``future_seconds``) gets a
session of its own on a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from stemstream.config import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from stemstream.data.instruments import NEVER_TARGET, class_name, playable_class
from stemstream.errors import ConfigError, StemstreamError
from stemstream.guidance import Guidance, is_guided
from stemstream.stream.engine import Engine, EngineWorker
from stemstream.stream.models import StreamModel
from stemstream.stream.session import Session, SessionConfig, kv_ring, with_stream_args

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: ~5 s of 48 kHz stereo float32 in one message
STATS_EVERY_S = 0.5
RATE_RANGE = (8000, 384000)
MAX_CHANNELS = 8


class Close(IntEnum):
    """WebSocket close codes the server uses (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    UNSUPPORTED_DATA = 1003  # a message of the wrong kind (text where audio belongs...)
    POLICY = 1008  # a bad start message, a missing or wrong token
    TOO_BIG = 1009
    INTERNAL = 1011
    TRY_LATER = 1013  # every session slot is taken


class ProtocolError(StemstreamError):
    """A client broke the protocol; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: Close = Close.POLICY):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ServeConfig:
    """How the server runs.

    Attributes:
        host / port: where to listen.
        max_sessions: streams served at once; more are refused (close 1013).
        token: required as ``?token=`` on ``/ws`` (``None``: no token; a server bound beyond
            localhost always has one, see :func:`resolve_token`).
        latency: default output delay ``L`` (seconds) a client may override.
        realtime: deadlines on the wall clock (live use) or a virtual clock (tests: the
            output is then exactly a session's run alone).
        temperature / top_k / seed: sampling.
        guidance: input guidance, one ``w`` or one per codebook (``None``: the model's own).
        batch: run the sessions in one batched engine when the model allows (``k = 1``).
        window: every session's KV ring in positions (``None``: the sessions' default,
            :data:`~stemstream.stream.session.DEFAULT_WINDOW`); a batched step's attention
            reads every row's ring, so a shorter ring serves more sessions.
        engines: batched engines; more than one run in child processes (one per core serves
            the most sessions), each holding an equal share of ``max_sessions``.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 4
    token: str | None = None
    latency: float = 0.2
    realtime: bool = True
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    seed: int = 0
    guidance: Guidance | None = None
    batch: bool = True
    window: int | None = None
    engines: int = 1


def resolve_token(host: str, token: str | None) -> str | None:
    """The token a server on ``host`` requires: the given one, or a fresh random one when it
    listens beyond localhost without one (never an open server on the network)."""
    if token is not None or host in LOCAL_HOSTS:
        return token
    return secrets.token_urlsafe(16)


@dataclass(frozen=True)
class StartRequest:
    """A client's validated ``start`` message."""

    instrument: int
    sample_rate: int
    channels: int
    latency: float
    future_frames: int | None


def parse_start(text: str, loaded: StreamModel, default_latency: float) -> StartRequest:
    """Validate the first message; :class:`ProtocolError` in one line for anything wrong."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProtocolError(f"the first message must be JSON: {err}") from None
    if not isinstance(message, dict) or message.get("type") != "start":
        raise ProtocolError('the first message must be {"type": "start", ...}')
    unknown = set(message) - {"type", "instrument", "sample_rate", "channels", "latency",
                              "future_seconds"}
    if unknown:
        raise ProtocolError(f"unknown start field(s): {', '.join(sorted(unknown))}")
    try:
        instrument = playable_class(str(message.get("instrument", "Bass")))
    except StemstreamError as err:
        raise ProtocolError(str(err)) from None
    rate = message.get("sample_rate")
    if isinstance(rate, bool) or not isinstance(rate, int) or not (
            RATE_RANGE[0] <= rate <= RATE_RANGE[1]):
        raise ProtocolError(f"sample_rate must be an integer in {RATE_RANGE[0]}.."
                            f"{RATE_RANGE[1]} Hz, got {rate!r}")
    channels = message.get("channels", 1)
    if isinstance(channels, bool) or not isinstance(channels, int) or not (
            1 <= channels <= MAX_CHANNELS):
        raise ProtocolError(f"channels must be an integer in 1..{MAX_CHANNELS}, got "
                            f"{channels!r}")
    latency = message.get("latency", default_latency)
    if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not (
            math.isfinite(latency) and 0 <= latency <= 10):
        raise ProtocolError(f"latency must be a number of seconds in 0..10, got {latency!r}")
    future = message.get("future_seconds")
    future_frames = None
    if future is not None:
        if isinstance(future, bool) or not isinstance(future, (int, float)) or not (
                math.isfinite(future)):
            raise ProtocolError(f"future_seconds must be a finite number, got {future!r}")
        future_frames = round(future * loaded.codec.frame_rate)
        try:
            with_stream_args(loaded.model, future_frames, None)
        except StemstreamError as err:
            raise ProtocolError(str(err)) from None
    return StartRequest(instrument, rate, channels, float(latency), future_frames)


def session_config(request: StartRequest, config: ServeConfig,
                   loaded: StreamModel) -> SessionConfig:
    """The session a validated start message asks for (its output at the client's rate)."""
    return SessionConfig(
        instrument=request.instrument, input_sample_rate=request.sample_rate,
        output_sample_rate=request.sample_rate, latency=request.latency,
        temperature=config.temperature, top_k=config.top_k, seed=config.seed,
        guidance=loaded.guidance if config.guidance is None else config.guidance,
        window=config.window)


def open_session(loaded: StreamModel, request: StartRequest, config: ServeConfig) -> Session:
    """A session of its own for a validated start message."""
    import warnings

    from stemstream.stream.clock import make_clock

    model = loaded.model
    if request.future_frames is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "runs at a t_f it was not trained for"
            model = with_stream_args(model, request.future_frames, None)
    return Session(model, loaded.codec, session_config(request, config, loaded),
                   clock=make_clock(config.realtime))


class _Stream:
    """One connection's session, run alone on worker threads or in the shared engine."""

    def __init__(self, session: Session, worker: EngineWorker | None = None,
                 load: dict[EngineWorker, int] | None = None) -> None:
        self.session, self.worker, self.load = session, worker, load

    @classmethod
    async def open(cls, loaded: StreamModel, request: StartRequest, config: ServeConfig,
                   load: dict[EngineWorker, int]) -> _Stream:
        """A session in the engine holding the fewest (``load``: sessions per engine
        worker), or of its own where no engine can hold it."""
        if not load or request.future_frames is not None:
            return cls(await asyncio.to_thread(open_session, loaded, request, config))
        from stemstream.stream.clock import make_clock

        worker = min(load, key=load.get)
        load[worker] += 1
        try:
            future = worker.call(worker.engine.open, session_config(request, config, loaded),
                                 make_clock(config.realtime))
            return cls(await asyncio.wrap_future(future), worker, load)
        except BaseException:
            load[worker] -= 1
            raise

    async def push(self, block: np.ndarray) -> np.ndarray:
        if self.worker is None:
            return await asyncio.to_thread(self.session.push, block)
        return await asyncio.wrap_future(self.worker.push(self.session, block))

    async def finish(self) -> np.ndarray:
        if self.worker is None:
            return await asyncio.to_thread(self.session.finish)
        engine = self.worker.engine
        done = self.worker.call(lambda: engine.finish([self.session])[self.session])
        return await asyncio.wrap_future(done)

    def close(self) -> None:
        """Give the engine row back (not awaited: a vanished client never waits)."""
        if self.worker is not None:
            self.worker.call(self.worker.engine.close, self.session)
            self.load[self.worker] -= 1


def stats_message(session: Session) -> dict[str, Any]:
    """``{"type": "stats", ...}``: heard seconds, RTF, chunks, misses and slack."""
    stats = session.stats
    heard = session.samples_in / session.config.input_sample_rate
    compute = stats.codec_in_s + stats.model_s + stats.codec_out_s
    slack = [r.slack for r in session.records[-50:] if r.slack is not None]
    return {
        "type": "stats",
        "seconds": heard,
        "rtf": compute / heard if heard > 0 else 0.0,
        "chunks": stats.chunks,
        "missed": stats.missed_chunks,
        "slack_ms": 1e3 * slack[-1] if slack else None,
        "min_slack_ms": 1e3 * min(slack) if slack else None,
    }


def report_summary(session: Session) -> dict[str, Any]:
    """The end-of-stream report without the per-chunk records."""
    report = session.report()
    return {k: v for k, v in report.items() if k not in ("records", "pushes")}


def create_app(loaded: StreamModel, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app (FastAPI) serving ``loaded`` under ``config``."""
    config = config or ServeConfig()
    workers = engine_workers(loaded, config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        for each in workers:  # the engines' threads and child processes end with the server
            each.stop()

    app = FastAPI(title="stemstream", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    slots = asyncio.Semaphore(config.max_sessions)
    active = {"sessions": 0}
    load = {worker: 0 for worker in workers}  # sessions per engine (the event loop's only)
    app.state.engine_workers = workers
    app.state.engine_worker = workers[0] if workers else None
    worker = app.state.engine_worker
    trained = sorted({class_name(i) for i in range(loaded.model.config.num_classes)
                      if _playable(i)})

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({
            "status": "ok", "model": loaded.source, "trained": loaded.trained,
            "codec": type(loaded.codec).__name__, "sessions": active["sessions"],
            "capacity": config.max_sessions, "instruments": trained,
            "default_instrument": "Bass", "token_required": config.token is not None,
            "routes": loaded.describe_routes(), "batched": worker is not None,
            "engines": len(workers), "engine_sessions": list(load.values()),
            "batched_step": worker.engine.route.describe() if worker else None,
            "kv_ring": worker.engine.window if worker else kv_ring(loaded.model, config.window),
        })

    async def refuse(ws: WebSocket, message: str, code: Close) -> None:
        await ws.send_text(json.dumps({"type": "error", "message": message}))
        await ws.close(code=int(code))

    @app.websocket("/ws")
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        if config.token is not None and not secrets.compare_digest(
                ws.query_params.get("token", ""), config.token):
            await refuse(ws, "a valid ?token= is required", Close.POLICY)
            return
        if slots.locked():
            await refuse(ws, f"the server is busy ({config.max_sessions} sessions); try "
                             "again later", Close.TRY_LATER)
            return
        async with slots:
            active["sessions"] += 1
            try:
                await _serve(ws, loaded, config, load)
            except WebSocketDisconnect:
                log.info("client left")
            except ProtocolError as err:
                await refuse(ws, str(err), err.code)
            except Exception as err:  # one stream's failure must not take the server down
                log.exception("stream failed")
                await refuse(ws, f"internal error: {type(err).__name__}: {err}",
                             Close.INTERNAL)
            finally:
                active["sessions"] -= 1

    return app


def engine_workers(loaded: StreamModel, config: ServeConfig) -> list[EngineWorker]:
    """The batched engines a server runs (none where the model cannot batch: ``k > 1``):
    one in this process, or ``config.engines`` in child processes sharing
    ``max_sessions``."""
    if not config.batch or loaded.model.config.chunk_frames != 1:
        return []
    guidance = loaded.guidance if config.guidance is None else config.guidance
    if config.engines == 1:
        return [EngineWorker(Engine(loaded.model, loaded.codec, config.max_sessions,
                                    route=loaded.route.name, quiet=False,
                                    guided=is_guided(guidance), weights=loaded.weights,
                                    window=config.window))]
    from stemstream.stream.remote import RemoteEngine

    if loaded.loader is None:
        raise ConfigError("engines in child processes need a model loaded by "
                          "load_stream_model (it says how to load it again)")
    share = math.ceil(config.max_sessions / config.engines)
    return [EngineWorker(RemoteEngine(loaded.loader, share, window=config.window,
                                      guided=is_guided(guidance), quiet=False))
            for _ in range(config.engines)]


def _playable(inst: int) -> bool:
    """Whether training ever targets the class (no model plays Vocal or Unknown)."""
    return inst not in NEVER_TARGET


async def _serve(ws: WebSocket, loaded: StreamModel, config: ServeConfig,
                 load: dict[EngineWorker, int]) -> None:
    first = await ws.receive()
    if first.get("type") == "websocket.disconnect":
        return
    if first.get("text") is None:
        raise ProtocolError("the first message must be the text start message",
                            Close.UNSUPPORTED_DATA)
    request = parse_start(first["text"], loaded, config.latency)
    stream = await _Stream.open(loaded, request, config, load)
    try:
        await _play(ws, loaded, request, stream)
    finally:
        stream.close()


async def _play(ws: WebSocket, loaded: StreamModel, request: StartRequest,
                stream: _Stream) -> None:
    session = stream.session
    await ws.send_text(json.dumps({
        "type": "ready", "sample_rate": request.sample_rate,
        "instrument": class_name(request.instrument), "latency": request.latency,
        "model": loaded.source, "frame_ms": 1e3 / loaded.codec.frame_rate,
        "future_frames": (loaded.model.config.future_frames if request.future_frames is None
                          else request.future_frames),
    }))
    last_stats = time.monotonic()
    frames_in = frames_out = 0  # samples per channel received and sent
    while True:
        message = await ws.receive()
        if message.get("type") == "websocket.disconnect":
            return
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            block = _decode_block(data, request.channels)
            frames_in += block.shape[0]
            out = await stream.push(block)
            if out.size:
                frames_out += out.shape[0]
                await ws.send_bytes(out.astype("<f4").tobytes())
            if time.monotonic() - last_stats >= STATS_EVERY_S:
                await ws.send_text(json.dumps(stats_message(session)))
                last_stats = time.monotonic()
            continue
        try:
            kind = json.loads(text).get("type")
        except (json.JSONDecodeError, AttributeError):
            kind = None
        if kind != "stop":
            raise ProtocolError('text messages after start must be {"type": "stop"}',
                                Close.UNSUPPORTED_DATA)
        rest = await stream.finish()
        # exactly as long as the input at the client's rate (two resamplings may leave the
        # session's own count a sample over or short)
        missing = frames_in - frames_out
        rest = np.pad(rest[: max(0, missing)], (0, max(0, missing - rest.shape[0])))
        if rest.size:
            await ws.send_bytes(rest.astype("<f4").tobytes())
        await ws.send_text(json.dumps(stats_message(session)))
        await ws.send_text(json.dumps({"type": "done", "report": report_summary(session)},
                                      default=str))
        await ws.close(code=int(Close.NORMAL))
        return


def _decode_block(data: bytes, channels: int) -> np.ndarray:
    """Little-endian float32 PCM -> ``[n, channels]`` (a whole number of frames, finite)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"audio message of {len(data)} bytes is over the "
                            f"{MAX_MESSAGE_BYTES} limit; send smaller blocks", Close.TOO_BIG)
    if len(data) % (4 * channels):
        raise ProtocolError(f"audio message of {len(data)} bytes is not a whole number of "
                            f"{channels}-channel float32 frames", Close.UNSUPPORTED_DATA)
    block = np.frombuffer(data, dtype="<f4").reshape(-1, channels).astype(np.float32)
    if not np.all(np.isfinite(block)):
        raise ProtocolError("audio message contains NaN/Inf samples", Close.UNSUPPORTED_DATA)
    return block[:, 0] if channels == 1 else block


def serve(loaded: StreamModel, config: ServeConfig) -> None:
    """Run the server until interrupted (uvicorn)."""
    import uvicorn

    uvicorn.run(create_app(loaded, config), host=config.host, port=config.port,
                log_level="info", ws_max_size=MAX_MESSAGE_BYTES + 1024)


__all__ = ["Close", "ProtocolError", "ServeConfig", "StartRequest", "create_app",
           "open_session", "parse_start", "resolve_token", "serve"]
