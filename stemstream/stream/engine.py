"""An engine that advances many sessions of one model together (issue 18): each round, the
new input of every session goes through the codec's encoders as one batch, then, while any
session has a chunk ready, the model steps of all of them run as **one batched forward**
(:class:`~stemstream.model.batched.StreamPool`) and the frames they complete through the
codec's decoders as one batch; each session accounts its own deadlines.

A session of an engine is an ordinary :class:`~stemstream.stream.session.Session` (same
resampling, codec streams, delay pattern, deadlines, report and snapshots) whose KV caches
live in a row of the engine's pool; only who runs its codec and model work changes. Its output
equals the same session run alone: the same tokens (greedy, and sampled with each session's
own generator), and audio equal to float rounding (a batched matrix product may sum in
another order than a single row's).

    engine = Engine(model, codec, max_sessions=16)
    a = engine.open(SessionConfig(instrument="bass", input_sample_rate=48000))
    b = engine.open(SessionConfig(instrument="drums", input_sample_rate=48000))
    outputs = engine.push({a: block_a, b: block_b})   # {session: audio}
    tails = engine.finish([a, b]); engine.close(a); engine.close(b)

Timing: a batched step's wall time counts for every session in it (each waited for it), on
each session's own clock.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from stemstream.codec.base import AudioStreamDecoder
from stemstream.errors import ConfigError
from stemstream.guidance import is_guided
from stemstream.model.batched import StreamPool, StreamStep
from stemstream.stream.clock import Clock
from stemstream.stream.inputs import InputStream
from stemstream.stream.session import Session, SessionConfig, kv_ring


class Engine:
    """Up to ``max_sessions`` sessions of one streaming ``model`` (``k = 1``) and ``codec``
    (``guided``: room for that many sessions with input guidance, which take two rows
    each); ``window`` is every session's KV ring (default: the sessions' default); ``route``: how
    the batched model step runs (``eager``, or ``onnx`` / ``compiled`` / ``auto`` through
    :func:`~stemstream.model.routes.rows_step`, built once and cached on disk), with
    ``weights`` (``int8``: on ``onnx``, as the single-stream step of a model loaded with
    them)."""

    def __init__(self, model: torch.nn.Module, codec, max_sessions: int,
                 window: int | None = None, route: str = "eager", quiet: bool = True,
                 guided: bool = False, weights: str = "fp32") -> None:
        from stemstream.model.routes import rows_step

        window = kv_ring(model, window)
        self.model, self.codec = model, codec
        if max_sessions >= 1 and model.config.chunk_frames == 1:
            step, self.route = rows_step(model, route, quiet, weights)
        else:  # the pool says why it cannot batch this model
            step, self.route = None, None
        self.pool = StreamPool(model, max_sessions * (2 if guided else 1), window, step)
        self.sessions: list[Session] = []

    @property
    def capacity(self) -> int:
        return self.pool.rows

    @property
    def window(self) -> int:
        """Every session's KV ring in positions."""
        return self.pool.window

    def stop(self) -> None:
        """Nothing to release (an engine in a child process ends it here)."""

    def open(self, config: SessionConfig, clock: Clock | None = None) -> Session:
        """A new session in a free row (a :class:`ConfigError` when the engine is full or the
        config asks for what batching cannot do: guidance, another KV ring)."""
        if config.window not in (None, self.pool.window):
            raise ConfigError(f"sessions of this engine use a KV ring of {self.pool.window} "
                              f"positions, not {config.window}")
        if self.pool.free_rows < (2 if is_guided(config.guidance) else 1):
            raise ConfigError(f"the engine is full ({self.capacity} rows; a guided session "
                              "takes two)")
        session = Session(self.model, self.codec,
                          dataclasses.replace(config, window=self.pool.window), clock)
        self.pool.adopt(session.state)
        self.sessions.append(session)
        return session

    def close(self, session: Session) -> None:
        """Free the session's row (zeroed: nothing leaks into the next session)."""
        self.pool.release(session.state)
        self.sessions.remove(session)

    def reset(self, session: Session) -> None:
        """Start the session's stream afresh in its row."""
        self.pool.release(session.state)
        session.reset()
        self.pool.adopt(session.state)

    def push(self, blocks: Mapping[Session, np.ndarray]) -> dict[Session, np.ndarray]:
        """Feed each session its block (as :meth:`Session.push`); return each one's new output.
        A bad block raises before any session changes."""
        accepted = {session: session._accept(block) for session, block in blocks.items()}
        return self._advance(accepted, final=False)

    def finish(self, sessions: Iterable[Session]) -> dict[Session, np.ndarray]:
        """End each session's input (as :meth:`Session.finish`); return the rest of its output."""
        ending = [s for s in sessions if not s.finished]
        out = self._advance({s: s._accept_end() for s in ending}, final=True)
        for session in ending:
            session.finished = True
        return out

    @torch.inference_mode()
    def _advance(self, accepted: Mapping[Session, tuple[np.ndarray, float]],
                 final: bool) -> dict[Session, np.ndarray]:
        for session in accepted:
            if session not in self.sessions:
                raise ConfigError("this session does not belong to this engine")
        sessions = list(accepted)
        # 1. every session's new input through the codec's encoders, as one batch
        waves = [s._input_wave(accepted[s][0], final) for s in sessions]
        began = time.perf_counter()
        latents = InputStream.step_many([s.inputs for s in sessions], waves, final)
        finished = time.perf_counter()
        before = {}
        for session, new in zip(sessions, latents, strict=True):
            arrival = accepted[session][1]
            start, end = session.clock.timed(arrival, began, finished)
            before[session] = session._took_input(new, arrival, start, end)
        # 2. chunks: the model steps of all waiting sessions in one forward, then their
        # frames through the codec's decoders in one batch, until no session has a chunk
        coroutines = {s: s._chunks(final) for s in sessions}
        audio: dict[Session, np.ndarray] = {}
        waiting: dict[Session, tuple[str, float, Any]] = {}

        def advance(session: Session, sent=None) -> None:
            try:
                chunks = coroutines[session]
                waiting[session] = next(chunks) if sent is None else chunks.send(sent)
            except StopIteration as done:
                audio[session] = done.value

        for session in sessions:
            advance(session)
        while waiting:
            for kind in ("model", "render"):
                batch = [(s, ready, codes) for s, (k, ready, codes) in waiting.items()
                         if k == kind]
                for session, _, _ in batch:
                    del waiting[session]
                if not batch:
                    continue
                began = time.perf_counter()
                if kind == "model":
                    results = self.pool.step([StreamStep(
                        s.state, s.latents, s.latent_offset, final, s.sampling, s.generator)
                        for s, _, _ in batch])
                    results = [chunk[..., None] for chunk in results]
                else:
                    results = _render_many([s for s, _, _ in batch], [c for _, _, c in batch])
                finished = time.perf_counter()
                for (session, ready, _), result in zip(batch, results, strict=True):
                    start, end = session.clock.timed(ready, began, finished)
                    advance(session, (result, start, end))
        return {s: s._give_output(audio[s], before[s], final) for s in sessions}


def _render_many(sessions: list[Session], codes: list[torch.Tensor]) -> list[np.ndarray]:
    """Each session's :meth:`Session._render` of its frames, the codec's decoders run as one
    batch where the codec can."""
    busy = [i for i, c in enumerate(codes) if c.shape[-1]]
    out = [np.zeros(0, dtype=np.float32) for _ in sessions]
    audio = AudioStreamDecoder.step_many([sessions[i].decoder for i in busy],
                                         [codes[i] for i in busy])
    for i, each in zip(busy, audio, strict=True):
        out[i] = each[0, 0].float().numpy()
    return out


class EngineWorker:
    """An :class:`Engine` on its own thread, for servers: sessions push from anywhere (each
    call returns a :class:`concurrent.futures.Future`), and the pushes waiting when the
    thread comes round run as **one** batched round. Opening, finishing and closing sessions
    run on the same thread, between rounds, so the engine is only ever touched there.

    A round whose push fails (a bad block) is retried session by session, so one session's
    error reaches only that session's future."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cond = threading.Condition()
        self._calls: list[tuple[Callable[[], Any], Future]] = []
        self._pushes: dict[Session, list[tuple[np.ndarray, Future]]] = {}
        self._stopped = False
        self._held = 0  # > 0: pushes wait (see paused)
        self.rounds = 0  # batched rounds run (a measure of batching: pushes / rounds)
        self.pushes = 0
        self._thread = threading.Thread(target=self._loop, name="stemstream-engine",
                                        daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on the engine's thread (e.g. ``engine.open``, ``engine.finish``)."""
        future: Future = Future()
        with self._cond:
            self._check_running()
            self._calls.append((lambda: fn(*args), future))
            self._cond.notify()
        return future

    def push(self, session: Session, block: np.ndarray) -> Future:
        """Queue ``block`` for ``session``; the future resolves to the output that became
        ready (several blocks of one session queued together run as one, and the output goes
        to the last one's future)."""
        future: Future = Future()
        with self._cond:
            self._check_running()
            self._pushes.setdefault(session, []).append((block, future))
            self._cond.notify()
        return future

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the rounds while the block runs: pushes queue up (calls still run) and go as
        one round when it ends, e.g. to gather every session's block before a round."""
        with self._cond:
            self._held += 1
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify()

    @property
    def waiting(self) -> int:
        """Sessions with blocks queued for the next round."""
        with self._cond:
            return len(self._pushes)

    def stop(self) -> None:
        """Finish what is queued, end the thread, then the engine (:meth:`Engine.stop`)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()
        self.engine.stop()

    def _check_running(self) -> None:
        if self._stopped:
            raise RuntimeError("the engine worker has stopped")

    def _loop(self) -> None:
        while True:
            with self._cond:
                held = self._held and not self._stopped
                while not (self._calls or (self._pushes and not held) or self._stopped):
                    self._cond.wait()
                    held = self._held and not self._stopped
                if self._stopped and not (self._calls or self._pushes):
                    return
                calls, self._calls = self._calls, []
                pushes = {}
                if not held:
                    pushes, self._pushes = self._pushes, {}
            for fn, future in calls:
                _settle(future, fn)
            if pushes:
                self._round(pushes)

    def _round(self, pushes: dict[Session, list[tuple[np.ndarray, Future]]]) -> None:
        blocks = {s: np.concatenate([block for block, _ in items]) if len(items) > 1
                  else items[0][0] for s, items in pushes.items()}
        self.rounds += 1
        self.pushes += len(blocks)
        try:
            outputs = self.engine.push(blocks)
        except Exception:  # isolate the session at fault
            for session, items in pushes.items():
                block = blocks[session]
                _settle(items[-1][1], lambda s=session, b=block: self.engine.push({s: b})[s])
                for _, future in items[:-1]:
                    future.set_result(np.zeros(0, dtype=np.float32))
            return
        for session, items in pushes.items():
            for _, future in items[:-1]:
                future.set_result(np.zeros(0, dtype=np.float32))
            items[-1][1].set_result(outputs[session])


def _settle(future: Future, fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except Exception as err:  # handed to the caller
        future.set_exception(err)
