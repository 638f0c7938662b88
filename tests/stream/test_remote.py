"""Engines in child processes (`stemstream serve --engines N`): a remote engine's sessions give
exactly what the same engine gives in this process (batched and one by one), its views carry
the sessions' counters, records and report, a bad block fails only its call, and a dead child
is a clear error."""

from __future__ import annotations

import dataclasses
import os
import signal

import numpy as np
import pytest

from stemstream.errors import ConfigError, StreamError
from stemstream.stream.engine import Engine, EngineWorker
from stemstream.stream.models import load_stream_model
from stemstream.stream.remote import OneByOne, RemoteEngine, RemoteSession
from stemstream.stream.session import SessionConfig

BLOCK = 400


@pytest.fixture(scope="module")
def loaded():
    return load_stream_model("random-tiny-mock", route="eager")


def _music(rate: int, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 110 * (seed + 1) * t)
            + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _play(engine, configs, waves) -> tuple[list[np.ndarray], list]:
    """Every session opened, its wave pushed in rounds of one block each, then finished."""
    sessions = [engine.open(c) for c in configs]
    out = [[] for _ in sessions]
    for at in range(0, max(w.shape[0] for w in waves), BLOCK):
        blocks = {s: w[at : at + BLOCK] for s, w in zip(sessions, waves, strict=True)
                  if at < w.shape[0]}
        for s, audio in engine.push(blocks).items():
            out[sessions.index(s)].append(audio)
    for s, audio in engine.finish(sessions).items():
        out[sessions.index(s)].append(audio)
    return [np.concatenate(o) for o in out], sessions


@pytest.mark.parametrize("batched", [True, False])
def test_a_remote_engine_plays_what_the_engine_plays_here(loaded, batched):
    rate = loaded.codec.sample_rate
    configs = [SessionConfig(instrument=inst, input_sample_rate=rate, seed=seed,
                             temperature=1.0, guidance=guidance)
               for inst, seed, guidance in [(1, 0, 1.0), (5, 1, 2.0), (9, 2, 1.0)]]
    waves = [_music(rate, seconds, seed) for seed, seconds in enumerate([0.9, 0.6, 1.1])]
    kind = Engine if batched else OneByOne
    here, local = _play(kind(loaded.model, loaded.codec, 3, guided=True), configs, waves)
    remote = RemoteEngine(loaded.loader, 3, guided=True, batched=batched)
    try:
        there, views = _play(remote, configs, waves)
    finally:
        remote.stop()
    for a, b, session, view in zip(here, there, local, views, strict=True):
        np.testing.assert_array_equal(a, b)
        assert _counters(view.stats) == _counters(session.stats)  # times are each run's own
        assert view.samples_in == session.samples_in
        assert view.finished and view.report()["chunks"] == session.stats.chunks
        assert [(r.index, r.step, r.frames) for r in view.records] == [
            (r.index, r.step, r.frames) for r in session.records[-50:]]


def _counters(stats) -> dict:
    return {k: v for k, v in dataclasses.asdict(stats).items() if not k.endswith("_s")}


def test_a_bad_block_fails_its_call_and_the_engine_goes_on(loaded):
    rate = loaded.codec.sample_rate
    remote = RemoteEngine(loaded.loader, 2, window=64)
    worker = EngineWorker(remote)
    try:
        config = SessionConfig(instrument=3, input_sample_rate=rate)
        good, bad = (worker.call(remote.open, config).result() for _ in range(2))
        assert remote.window == 64 and remote.route.name == "eager"
        wave = _music(rate, 0.2, 0)
        broken = wave.copy()
        broken[7] = np.nan
        with worker.paused():
            fine, failed = worker.push(good, wave), worker.push(bad, broken)
        assert fine.result().dtype == np.float32
        with pytest.raises(StreamError, match="NaN"):
            failed.result()
        assert worker.push(bad, wave).result().shape == fine.result().shape
        with pytest.raises(ConfigError, match="does not belong"):
            remote.push({RemoteSession(99, config): wave})
        os.kill(remote._process.pid, signal.SIGKILL)
        remote._process.join()
        with pytest.raises(StreamError, match="engine process died"):
            remote.push({good: wave})
    finally:
        worker.stop()


def test_a_child_that_cannot_load_its_model_says_why():
    from functools import partial

    with pytest.raises(Exception, match="no such file"):
        RemoteEngine(partial(load_stream_model, "/nonexistent/model.safetensors"), 1)
