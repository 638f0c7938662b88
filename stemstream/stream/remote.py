"""Engines in child processes (issue 18): one Python process runs one engine round at a time
(the session glue around each batched step holds the interpreter lock, so a second engine on
a second thread gains nothing); a server with ``P`` cores runs ``P`` engines, each in its own
process, each batching the sessions it holds.

:class:`RemoteEngine` has the interface of :class:`~stemstream.stream.engine.Engine`
(``open``, ``push``, ``finish``, ``close``, ``route``, ``window``), so an
:class:`~stemstream.stream.engine.EngineWorker` drives either. Its sessions are
:class:`RemoteSession` views: the session itself lives in the child; each reply carries its
counters and newest chunk records, so a view answers what a server shows (``stats``,
``samples_in``, ``records``, and ``report()`` once the stream has finished).

The child loads its own copy of the model from a picklable ``loader`` (e.g.
``functools.partial(load_stream_model, "default-live", weights="int8")``); compiled decode
steps come from the on-disk cache the parent filled. Each session runs on its own clock in the
child (wall clock when ``realtime``): time its blocks spend in the pipe before the child takes
them counts as input arriving late, so deadlines stay honest.

    engine = RemoteEngine(partial(load_stream_model, "default-live"), max_sessions=6)
    a = engine.open(SessionConfig(instrument="Bass", input_sample_rate=48000))
    out = engine.push({a: block})[a]
    ...
    engine.stop()
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from stemstream.errors import ConfigError, StreamError
from stemstream.stream.clock import Clock
from stemstream.stream.session import ChunkRecord, Session, SessionConfig, SessionStats, kv_ring

RECENT_RECORDS = 50  # chunk records a view keeps (what a server's stats message reads)
START_TIMEOUT_S = 300.0  # loading a model (and building its compiled step) in the child


@dataclasses.dataclass(eq=False)
class RemoteSession:
    """What the parent sees of a session that runs in an engine's child process; updated by
    every reply that concerns it."""

    id: int
    config: SessionConfig
    stats: SessionStats = dataclasses.field(default_factory=SessionStats)
    samples_in: int = 0
    finished: bool = False
    records: list[ChunkRecord] = dataclasses.field(default_factory=list)  # the newest
    final_report: dict[str, Any] | None = None

    def report(self) -> dict[str, Any]:
        """The session's report (:meth:`Session.report`), available once it has finished."""
        if self.final_report is None:
            raise StreamError("a remote session's report is available once it has finished")
        return self.final_report

    def _update(self, progress: dict[str, Any]) -> None:
        self.stats = progress["stats"]
        self.samples_in = progress["samples_in"]
        self.finished = progress["finished"]
        self.records = (self.records + progress["records"])[-RECENT_RECORDS:]
        if progress.get("report") is not None:
            self.final_report = progress["report"]


class OneByOne:
    """Sessions of one model run one by one, each with its own model step (the unbatched
    baseline), behind an engine's interface."""

    def __init__(self, model, codec, max_sessions: int, window: int | None = None, **_) -> None:
        self.model, self.codec = model, codec
        self.max_sessions, self.window, self.route = max_sessions, kv_ring(model, window), None
        self.sessions: list[Session] = []

    def open(self, config: SessionConfig, clock: Clock | None = None) -> Session:
        if len(self.sessions) >= self.max_sessions:
            raise ConfigError(f"the engine is full ({self.max_sessions} sessions)")
        session = Session(self.model, self.codec,
                          dataclasses.replace(config, window=self.window), clock)
        self.sessions.append(session)
        return session

    def push(self, blocks: Mapping[Session, np.ndarray]) -> dict[Session, np.ndarray]:
        return {session: session.push(block) for session, block in blocks.items()}

    def finish(self, sessions: Iterable[Session]) -> dict[Session, np.ndarray]:
        return {session: session.finish() for session in sessions if not session.finished}

    def close(self, session: Session) -> None:
        self.sessions.remove(session)

    def stop(self) -> None:
        """Nothing to release."""


class RemoteEngine:
    """An engine (batched, or :class:`OneByOne` with ``batched=False``) in a child process;
    see the module docstring. Calls are not thread-safe: drive it from one thread (an
    :class:`~stemstream.stream.engine.EngineWorker` does)."""

    def __init__(self, loader: Callable[[], Any], max_sessions: int,
                 window: int | None = None, guided: bool = False, batched: bool = True,
                 threads: int = 1, quiet: bool = True) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        self._conn, child = context.Pipe()
        settings = {"max_sessions": max_sessions, "window": window, "guided": guided,
                    "batched": batched, "threads": threads, "quiet": quiet}
        self._process = context.Process(target=_child, args=(child, loader, settings),
                                        name="stemstream-engine", daemon=True)
        self._process.start()
        child.close()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._views: dict[int, RemoteSession] = {}
        if not self._conn.poll(START_TIMEOUT_S):
            self.stop()
            raise StreamError(f"the engine process did not start within {START_TIMEOUT_S:g} s")
        ready = self._reply()
        self.max_sessions = max_sessions
        self.window, self.route, self.source = ready["window"], ready["route"], ready["source"]

    @property
    def sessions(self) -> list[RemoteSession]:
        return list(self._views.values())

    def open(self, config: SessionConfig, clock: Clock | None = None) -> RemoteSession:
        """A new session in the child, on a wall clock if ``clock`` is real time (a clock's
        state cannot cross processes: the child makes its own of the same kind)."""
        view = RemoteSession(next(self._ids), config)
        realtime = bool(clock is not None and clock.realtime)
        view.config = self._call("open", view.id, config, realtime)
        self._views[view.id] = view
        return view

    def push(self, blocks: Mapping[RemoteSession, np.ndarray]
             ) -> dict[RemoteSession, np.ndarray]:
        return self._outputs(self._call("push", {self._id(v): np.asarray(b)
                                                 for v, b in blocks.items()}))

    def finish(self, sessions: Iterable[RemoteSession]) -> dict[RemoteSession, np.ndarray]:
        return self._outputs(self._call("finish", [self._id(v) for v in sessions]))

    def close(self, session: RemoteSession) -> None:
        self._call("close", self._id(session))
        del self._views[session.id]

    def stop(self) -> None:
        """End the child (its sessions with it)."""
        try:
            with self._lock:
                self._conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._conn.close()

    def _died(self, err: Exception) -> StreamError:
        self._process.join(timeout=1)
        return StreamError(f"the engine process died (exit code {self._process.exitcode}; "
                           f"{type(err).__name__}); its sessions are lost")

    def _id(self, view: RemoteSession) -> int:
        if self._views.get(view.id) is not view:
            raise ConfigError("this session does not belong to this engine")
        return view.id

    def _outputs(self, reply: dict[int, tuple[np.ndarray, dict]]
                 ) -> dict[RemoteSession, np.ndarray]:
        out = {}
        for sid, (audio, progress) in reply.items():
            view = self._views[sid]
            view._update(progress)
            out[view] = audio
        return out

    def _call(self, op: str, *args: Any) -> Any:
        with self._lock:
            try:
                self._conn.send((op, *args))
            except (OSError, ValueError) as err:
                raise self._died(err) from None
            return self._reply()

    def _reply(self) -> Any:
        try:
            ok, value = self._conn.recv()
        except (EOFError, OSError) as err:
            raise self._died(err) from None
        if not ok:
            raise value
        return value


def _progress(session: Session, sent: int, final: bool) -> tuple[dict[str, Any], int]:
    """A session's counters and the chunk records newer than index ``sent``."""
    new = []
    for record in reversed(session.records):
        if record.index <= sent:
            break
        new.append(record)
    new.reverse()
    progress = {"stats": session.stats, "samples_in": session.samples_in,
                "finished": session.finished, "records": new[-RECENT_RECORDS:],
                "report": session.report() if final else None}
    return progress, (new[-1].index if new else sent)


def _child(conn, loader: Callable[[], Any], settings: dict[str, Any]) -> None:
    """The child's loop: load the model, make the engine, answer calls until ``stop``."""
    import torch

    from stemstream.stream.clock import make_clock
    from stemstream.stream.engine import Engine

    torch.set_num_threads(settings["threads"])
    try:
        loaded = loader()
        kind = Engine if settings["batched"] else OneByOne
        engine = kind(loaded.model, loaded.codec, settings["max_sessions"],
                      window=settings["window"], route=loaded.route.name,
                      quiet=settings["quiet"], guided=settings["guided"],
                      weights=loaded.weights)
        conn.send((True, {"window": engine.window,
                          "route": engine.route, "source": loaded.source}))
    except Exception as err:  # the parent raises it
        conn.send((False, _picklable(err)))
        return
    sessions: dict[int, Session] = {}
    sent: dict[int, int] = {}

    def replies(outputs: dict[Session, np.ndarray], final: bool) -> dict[int, Any]:
        ids = {id(s): sid for sid, s in sessions.items()}
        out = {}
        for session, audio in outputs.items():
            sid = ids[id(session)]
            progress, sent[sid] = _progress(session, sent[sid], final)
            out[sid] = (audio, progress)
        return out

    with torch.inference_mode():
        while True:
            try:
                op, *args = conn.recv()
            except EOFError:  # the parent is gone
                return
            if op == "stop":
                return
            try:
                if op == "open":
                    sid, config, realtime = args
                    session = engine.open(config, clock=make_clock(realtime))
                    sessions[sid], sent[sid] = session, -1
                    result = session.config
                elif op == "push":
                    blocks = {sessions[sid]: block for sid, block in args[0].items()}
                    result = replies(engine.push(blocks), final=False)
                elif op == "finish":
                    result = replies(engine.finish([sessions[sid] for sid in args[0]]),
                                     final=True)
                elif op == "close":
                    engine.close(sessions.pop(args[0]))
                    sent.pop(args[0])
                    result = None
                else:
                    raise StreamError(f"unknown engine call {op!r}")
            except Exception as err:  # handed to the caller
                conn.send((False, _picklable(err)))
                continue
            conn.send((True, result))


def _picklable(err: Exception) -> Exception:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return StreamError(f"{type(err).__name__}: {err}")
