"""`stemstream serve`: the WebSocket protocol end to end (FastAPI's test client, an untrained
tiny model over the mock codec, a virtual clock): a served stream equals a session alone, bit
for bit; every protocol violation gets an error message and its close code."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from stemstream.serve.app import Close, ServeConfig, create_app, resolve_token
from stemstream.stream.models import load_stream_model
from stemstream.stream.session import Session, SessionConfig, run_blocks

RATE = 22050


@pytest.fixture(scope="module")
def loaded():
    return load_stream_model("random-tiny-mock")


def _client(loaded, **config) -> TestClient:
    return TestClient(create_app(loaded, ServeConfig(realtime=False, **config)))


def _music(seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    mono = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    wave = np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1)
    return wave.astype(np.float32)


def _drain(ws) -> tuple[np.ndarray, list[dict], dict]:
    """Every message until the close: the audio, the JSON messages, the close event."""
    audio, texts = [], []
    while True:
        message = ws.receive()
        if message["type"] == "websocket.close":
            return (np.concatenate(audio) if audio else np.zeros(0, np.float32)), texts, message
        if message.get("bytes") is not None:
            audio.append(np.frombuffer(message["bytes"], dtype="<f4"))
        else:
            texts.append(json.loads(message["text"]))


def _stream(client, wave: np.ndarray, sizes: list[int], start: dict) -> tuple:
    with client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps(start))
        ready = ws.receive_json()
        at, i = 0, 0
        while at < len(wave):
            size = sizes[i % len(sizes)]
            ws.send_bytes(np.ascontiguousarray(wave[at : at + size]).astype("<f4").tobytes())
            at, i = at + size, i + 1
        ws.send_text(json.dumps({"type": "stop"}))
        audio, texts, close = _drain(ws)
    return ready, audio, texts, close


@pytest.mark.parametrize("channels", [1, 2])
def test_a_served_stream_is_the_session_alone_bit_for_bit(loaded, channels):
    wave = _music(1.3, channels)
    start = {"type": "start", "instrument": "Bass", "sample_rate": RATE, "channels": channels}
    ready, audio, texts, close = _stream(_client(loaded), wave, [1000, 333, 4410], start)
    assert ready["type"] == "ready" and ready["sample_rate"] == RATE
    assert ready["instrument"] == "Bass" and ready["latency"] == 0.2
    assert close["code"] == Close.NORMAL
    kinds = [t["type"] for t in texts]
    assert kinds[-1] == "done" and "stats" in kinds and "error" not in kinds
    done = texts[-1]["report"]
    assert done["chunks"] > 0 and "records" not in done
    alone = Session(loaded.model, loaded.codec, SessionConfig(
        instrument="Bass", input_sample_rate=RATE, output_sample_rate=RATE, latency=0.2))
    block = wave[:, 0] if channels == 1 else wave
    expected = run_blocks(alone, block, [1000, 333, 4410])
    assert audio.dtype == np.float32 and audio.shape == expected.shape == (len(wave),)
    np.testing.assert_array_equal(audio, expected)
    stats = [t for t in texts if t["type"] == "stats"][-1]
    assert stats["seconds"] == pytest.approx(len(wave) / RATE)
    assert stats["chunks"] == done["chunks"] and stats["missed"] == done["missed_chunks"]


def test_a_served_stream_keeps_the_servers_kv_ring(loaded):
    """`serve --window`: every served session attends over that ring (it wraps in this
    stream), exactly as a session alone with it, and /health says so."""
    wave = _music(1.3)
    start = {"type": "start", "instrument": "Bass", "sample_rate": RATE, "channels": 1}
    client = _client(loaded, window=24)
    assert client.get("/health").json()["kv_ring"] == 24
    _, audio, texts, _ = _stream(client, wave, [1000], start)
    assert texts[-1]["type"] == "done"

    def alone(window):
        session = Session(loaded.model, loaded.codec, SessionConfig(
            instrument="Bass", input_sample_rate=RATE, output_sample_rate=RATE, latency=0.2,
            window=window))
        return run_blocks(session, wave[:, 0], [1000])

    np.testing.assert_array_equal(audio, alone(24))
    assert not np.array_equal(audio, alone(None))  # the ring mattered


def test_health_and_page(loaded):
    client = _client(loaded, max_sessions=3)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["capacity"] == 3 and health["sessions"] == 0
    assert "Bass" in health["instruments"] and health["token_required"] is False
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert "stemstream" in page.text.lower()
    assert client.get("/static/app.js").status_code == 200


BAD_STARTS = [
    ("not json", "must be JSON"),
    (json.dumps({"type": "hello"}), '{"type": "start"'),
    (json.dumps({"type": "start", "sample_rate": 44100, "instrument": "Kazoo"}), "Kazoo"),
    (json.dumps({"type": "start", "sample_rate": 100}), "sample_rate"),
    (json.dumps({"type": "start", "sample_rate": "48000"}), "sample_rate"),
    (json.dumps({"type": "start", "sample_rate": 48000, "channels": 0}), "channels"),
    (json.dumps({"type": "start", "sample_rate": 48000, "latency": -1}), "latency"),
    (json.dumps({"type": "start", "sample_rate": 48000, "future_seconds": 1e9}), "outside"),
    (json.dumps({"type": "start", "sample_rate": 48000, "colour": "red"}), "colour"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_STARTS)
def test_a_bad_start_is_refused_with_policy_close(loaded, text, fragment):
    with _client(loaded).websocket_connect("/ws") as ws:
        ws.send_text(text)
        _, texts, close = _drain(ws)
    assert texts == [{"type": "error", "message": texts[0]["message"]}]
    assert fragment in texts[0]["message"] and close["code"] == Close.POLICY


GOOD_START = json.dumps({"type": "start", "sample_rate": RATE, "channels": 2})
BAD_AUDIO = [
    (b"\x00\x00\x80", "whole number", Close.UNSUPPORTED_DATA),  # 3 bytes
    (np.zeros(3, "<f4").tobytes(), "whole number", Close.UNSUPPORTED_DATA),  # 1.5 frames
    (np.array([0, np.nan], "<f4").tobytes(), "NaN", Close.UNSUPPORTED_DATA),
    (np.zeros(300_000, "<f4").tobytes(), "limit", Close.TOO_BIG),
]


@pytest.mark.parametrize(("data", "fragment", "code"), BAD_AUDIO)
def test_bad_audio_is_refused_with_its_close_code(loaded, data, fragment, code):
    with _client(loaded).websocket_connect("/ws") as ws:
        ws.send_text(GOOD_START)
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(data)
        _, texts, close = _drain(ws)
    assert texts[-1]["type"] == "error" and fragment in texts[-1]["message"]
    assert close["code"] == code


def test_audio_before_start_and_stray_text_are_refused(loaded):
    with _client(loaded).websocket_connect("/ws") as ws:
        ws.send_bytes(np.zeros(4, "<f4").tobytes())
        _, texts, close = _drain(ws)
    assert "start message" in texts[0]["message"] and close["code"] == Close.UNSUPPORTED_DATA
    with _client(loaded).websocket_connect("/ws") as ws:
        ws.send_text(GOOD_START)
        ws.receive_json()
        ws.send_text(json.dumps({"type": "pause"}))
        _, texts, close = _drain(ws)
    assert '"stop"' in texts[0]["message"] and close["code"] == Close.UNSUPPORTED_DATA


def test_token_and_capacity(loaded):
    client = _client(loaded, token="s3cret", max_sessions=1)
    for query in ("", "?token=wrong"):
        with client.websocket_connect(f"/ws{query}") as ws:
            _, texts, close = _drain(ws)
        assert "token" in texts[0]["message"] and close["code"] == Close.POLICY
    assert client.get("/health").json()["token_required"] is True
    with client.websocket_connect("/ws?token=s3cret") as first:
        first.send_text(GOOD_START)
        assert first.receive_json()["type"] == "ready"
        assert client.get("/health").json()["sessions"] == 1
        with client.websocket_connect("/ws?token=s3cret") as second:
            _, texts, close = _drain(second)
        assert "busy" in texts[0]["message"] and close["code"] == Close.TRY_LATER
        first.send_text(json.dumps({"type": "stop"}))
        _, texts, close = _drain(first)
        assert texts[-1]["type"] == "done" and close["code"] == Close.NORMAL
    assert client.get("/health").json()["sessions"] == 0


def test_a_server_beyond_localhost_always_has_a_token():
    assert resolve_token("127.0.0.1", None) is None
    assert resolve_token("0.0.0.0", "given") == "given"
    made = resolve_token("0.0.0.0", None)
    assert made and len(made) >= 16 and made != resolve_token("0.0.0.0", None)


def test_the_command_serves_over_real_sockets(served_url):
    """`stemstream serve` under uvicorn: /health over HTTP, then a short stream over a real
    WebSocket (the `websockets` client) to its done message."""
    import urllib.request

    from websockets.sync.client import connect

    with urllib.request.urlopen(f"{served_url}/health", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"
    wave = _music(0.5)
    with connect(served_url.replace("http://", "ws://") + "/ws") as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": RATE, "channels": 1}))
        assert json.loads(ws.recv())["type"] == "ready"
        ws.send(wave.astype("<f4").tobytes())
        ws.send(json.dumps({"type": "stop"}))
        received, last = 0, None
        for message in ws:
            if isinstance(message, bytes):
                received += len(message) // 4
            else:
                last = json.loads(message)
    assert last["type"] == "done" and received == len(wave)


def _interleave_to_the_end(sockets, waves, size: int, start: int = 0) -> list[tuple]:
    """Each client's wave from sample ``start`` in blocks of ``size``, the clients' blocks
    interleaved, then stop; every client's drained messages."""
    for at in range(start, max(len(w) for w in waves), size):
        for ws, wave in zip(sockets, waves, strict=True):
            if at < len(wave):
                ws.send_bytes(np.ascontiguousarray(wave[at : at + size]).tobytes())
    for ws in sockets:
        ws.send_text(json.dumps({"type": "stop"}))
    return [_drain(ws) for ws in sockets]


def _assert_each_as_alone(loaded, results, waves, starts, size: int) -> None:
    """Every client's stream ended normally with exactly what its session gives alone."""
    for (audio, texts, close), wave, start in zip(results, waves, starts, strict=True):
        assert close["code"] == Close.NORMAL and texts[-1]["type"] == "done"
        alone = Session(loaded.model, loaded.codec, SessionConfig(
            instrument=start["instrument"], input_sample_rate=RATE, output_sample_rate=RATE,
            latency=0.2))
        np.testing.assert_array_equal(audio, run_blocks(alone, wave[:, 0], [size]))


def test_concurrent_clients_share_the_engine_and_each_gets_what_it_gets_alone(loaded):
    """Two clients streaming at once, blocks interleaved: the engine batches their steps
    (rounds with both sessions) and neither stream leaks into the other."""
    client = _client(loaded)
    waves = [_music(1.1, seed=1), _music(0.9, seed=2)]
    starts = [{"type": "start", "instrument": name, "sample_rate": RATE, "channels": 1}
              for name in ("Bass", "Piano")]
    size = 441
    worker = client.app.state.engine_worker
    with client.websocket_connect("/ws") as first, client.websocket_connect("/ws") as second:
        sockets = [first, second]
        for ws, start in zip(sockets, starts, strict=True):
            ws.send_text(json.dumps(start))
            assert ws.receive_json()["type"] == "ready"
        with worker.paused():  # both first blocks queue up: the first round holds both
            for ws, wave in zip(sockets, waves, strict=True):
                ws.send_bytes(np.ascontiguousarray(wave[:size]).tobytes())
            deadline = time.monotonic() + 30
            while worker.waiting < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert worker.waiting == 2
        results = _interleave_to_the_end(sockets, waves, size, start=size)
    assert worker.pushes > worker.rounds  # some rounds advanced both sessions together
    _assert_each_as_alone(loaded, results, waves, starts, size)
    assert client.get("/health").json()["batched"] is True


def test_two_engine_processes_share_the_clients_and_each_gets_what_it_gets_alone(loaded):
    """`serve --engines 2`: each client goes to the engine holding the fewest sessions (here
    one each, in two child processes) and gets exactly its stream alone."""
    waves = [_music(0.9, seed=3), _music(0.8, seed=4)]
    starts = [{"type": "start", "instrument": name, "sample_rate": RATE, "channels": 1}
              for name in ("Bass", "Drums")]
    size = 500
    with TestClient(create_app(loaded, ServeConfig(realtime=False, engines=2,
                                                   max_sessions=2))) as client:
        assert client.get("/health").json()["engines"] == 2
        with client.websocket_connect("/ws") as first, client.websocket_connect("/ws") as second:
            sockets = [first, second]
            for ws, start in zip(sockets, starts, strict=True):
                ws.send_text(json.dumps(start))
                assert ws.receive_json()["type"] == "ready"
            assert client.get("/health").json()["engine_sessions"] == [1, 1]
            results = _interleave_to_the_end(sockets, waves, size)
        _assert_each_as_alone(loaded, results, waves, starts, size)
        assert all(texts[-1]["report"]["chunks"] > 0 for _, texts, _ in results)
        workers = client.app.state.engine_workers
    assert all(not w.engine._process.is_alive() for w in workers)  # stopped with the app
