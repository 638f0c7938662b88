"""The batched engine: sessions advanced together in one forward per round equal each session
run alone (greedy and sampled; different instruments, rates, block sizes, joins and leaves, ring
wraps), a snapshot of an engine session continues alone, and the engine refuses what it cannot
batch."""

from __future__ import annotations

import numpy as np
import pytest
from test_session import SR, make_codec, make_model, noise  # the session tests' tiny setup

from stemstream.errors import ConfigError
from stemstream.stream.engine import Engine
from stemstream.stream.session import Session, SessionConfig

WINDOW = 16  # positions: every stream below wraps its ring


def _blocks(audio: np.ndarray, size: int) -> list[np.ndarray]:
    return [audio[i : i + size] for i in range(0, audio.shape[0], size)]


def _alone(model, codec, config: SessionConfig, blocks) -> np.ndarray:
    session = Session(model, codec, config)
    return np.concatenate([session.push(b) for b in blocks] + [session.finish()])


CASES = [  # instrument, input rate, output rate, block size, seed, joins at round, leaves after
    (3, SR, None, 40, 1, 0, None),
    (7, 8000, 16000, 77, 2, 3, None),
    (0, 44100, None, 441, 3, 0, 9),
    (12, SR, 8000, 13, 4, 11, None),
]


@pytest.mark.parametrize(("t_f", "encoder"),
                         [(-3, "conv"), (0, "conv"), (2, "conv"), (-3, "conv+features")])
@pytest.mark.parametrize(("temperature", "guidance"),
                         [(0.0, 1.0), (1.0, 1.0), (1.0, 2.0), (1.0, (3.0, 1.0, 2.0, 0.5))])
def test_engine_sessions_equal_each_session_alone(t_f, encoder, temperature, guidance):
    model, codec = make_model(t_f, 1, encoder=encoder), make_codec()
    engine = Engine(model, codec, max_sessions=3, window=WINDOW, guided=guidance != 1)
    configs, streams = [], []
    for n, (inst, rate, out_rate, size, seed, _, _) in enumerate(CASES):
        configs.append(SessionConfig(instrument=inst, input_sample_rate=rate,
                                     output_sample_rate=out_rate, temperature=temperature,
                                     seed=seed, window=WINDOW,
                                     guidance=guidance if n % 2 else 1.0))  # mixed
        streams.append(_blocks(noise(int(0.3 * rate), seed=seed), size))
    expected = [_alone(model, codec, c, b) for c, b in zip(configs, streams, strict=True)]

    sessions: list[Session | None] = [None] * len(CASES)
    outputs: list[list[np.ndarray]] = [[] for _ in CASES]
    for tick in range(120):
        blocks = {}
        for n, (*_, join, leave) in enumerate(CASES):
            if tick == join:
                sessions[n] = engine.open(configs[n])
            session = sessions[n]
            if session is None or session.finished:
                continue
            if leave is not None and tick > leave:  # leaves early: ends and frees its row
                outputs[n].append(engine.finish([session])[session])
                engine.close(session)
                continue
            index = tick - join
            if index < len(streams[n]):
                blocks[session] = streams[n][index]
            elif index == len(streams[n]):
                outputs[n].append(engine.finish([session])[session])
        for session, out in engine.push(blocks).items():
            outputs[n_of(sessions, session)].append(out)
    for n, (*_, leave) in enumerate(CASES):
        got = np.concatenate(outputs[n])
        if leave is None:
            assert got.shape == expected[n].shape, n
            assert np.array_equal(got, expected[n]), f"session {n} differs from alone"
        else:  # the same stream, ended after `leave - join + 1` blocks
            cut = streams[n][: leave - CASES[n][5] + 1]
            assert np.array_equal(got, _alone(model, codec, configs[n], cut)), n
    # the leaver's row went to the late joiner (guided sessions 1 and 3 hold two rows each)
    assert engine.pool.free_rows == (0 if guidance == 1 else 1)


def n_of(sessions, session) -> int:
    return next(i for i, s in enumerate(sessions) if s is session)


def test_a_snapshot_of_an_engine_session_continues_alone(tmp_path):
    model, codec = make_model(2, 1, encoder="conv"), make_codec()
    config = SessionConfig(instrument=3, input_sample_rate=SR, temperature=1.0, seed=9,
                           window=WINDOW)
    blocks = _blocks(noise(int(0.4 * SR), seed=5), 40)
    engine = Engine(model, codec, max_sessions=2, window=WINDOW)
    other = engine.open(SessionConfig(instrument=1, input_sample_rate=SR, window=WINDOW))
    mine = engine.open(config)
    head = []
    for block in blocks[:20]:
        head.append(engine.push({mine: block, other: block[::-1].copy()})[mine])
    path = mine.save(tmp_path / "mid.safetensors")
    tail_engine = [engine.push({mine: b})[mine] for b in blocks[20:]]
    tail_engine.append(engine.finish([mine])[mine])
    alone = Session(model, codec, config)
    alone.load(path)
    tail_alone = [alone.push(b) for b in blocks[20:]] + [alone.finish()]
    assert np.array_equal(np.concatenate(tail_engine), np.concatenate(tail_alone))
    assert np.array_equal(np.concatenate(head + tail_engine), _alone(model, codec, config, blocks))


def test_engine_refuses_what_it_cannot_batch():
    codec = make_codec()
    with pytest.raises(ConfigError, match="k = 1"):
        Engine(make_model(0, 2), codec, max_sessions=2)
    engine = Engine(make_model(0, 1), codec, max_sessions=1, window=WINDOW)
    with pytest.raises(ConfigError, match="two"):  # a guided session takes two rows
        engine.open(SessionConfig(instrument=1, input_sample_rate=SR, guidance=2.0))
    with pytest.raises(ConfigError, match="ring"):
        engine.open(SessionConfig(instrument=1, input_sample_rate=SR, window=WINDOW * 2))
    session = engine.open(SessionConfig(instrument=1, input_sample_rate=SR))
    with pytest.raises(ConfigError, match="full"):
        engine.open(SessionConfig(instrument=1, input_sample_rate=SR))
    alone = Session(make_model(0, 1), codec, SessionConfig(instrument=1, input_sample_rate=SR))
    with pytest.raises(ConfigError, match="does not belong"):
        engine.push({alone: noise(40)})
    engine.close(session)
    assert engine.pool.free_rows == 1
