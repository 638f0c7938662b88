"""Live mode without a sound card: the engine's callback/worker logic, and the errors."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from stemstream.stream.clock import VirtualClock
from stemstream.stream.live import LiveEngine, LiveError, import_sounddevice, run_live
from stemstream.stream.models import load_stream_model
from stemstream.stream.session import Session, SessionConfig, run_blocks

RATE = 16000
BLOCK = 160


def _session(clock=None) -> Session:
    loaded = load_stream_model("random-tiny-mock")
    config = SessionConfig(instrument="bass", input_sample_rate=RATE, latency=0.1,
                           temperature=0.0, window=4096)
    return Session(loaded.model, loaded.codec, config, clock=clock or VirtualClock())


def _signal(seconds: float = 0.6) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_engine_plays_the_session_output_delayed_by_the_latency():
    audio = _signal()
    engine = LiveEngine(_session(), latency=0.1)
    played = []
    for start in range(0, len(audio), BLOCK):
        indata = audio[start : start + BLOCK, None]
        outdata = np.zeros((BLOCK, 1), np.float32)
        engine.callback(indata, outdata, BLOCK)
        while not engine.inbox.empty():  # a worker that is never late
            engine.process_pending()
        played.append(outdata[:, 0].copy())
    played = np.concatenate(played)
    expected = run_blocks(_session(), audio, BLOCK)
    delay = engine.delay
    # Output sample n comes out `delay` samples after input sample n was captured; with a
    # worker that keeps up, sample n is ready one block after capture.
    np.testing.assert_array_equal(played[delay:], expected[: len(played) - delay])
    assert np.all(played[:delay] == 0)
    assert engine.stats.input_overflows == 0


def test_engine_plays_silence_when_the_worker_falls_behind_and_never_blocks():
    engine = LiveEngine(_session(), latency=0.0, max_queue=4)
    out = np.ones((BLOCK, 1), np.float32)
    for _ in range(10):  # no worker at all
        engine.callback(np.zeros((BLOCK, 1), np.float32), out, BLOCK)
        assert np.all(out == 0)
    assert engine.stats.input_overflows == 6
    assert engine.stats.underrun_samples == 10 * BLOCK


def test_worker_thread_processes_blocks_and_stop_surfaces_errors():
    engine = LiveEngine(_session(), latency=0.1)
    engine.start_worker()
    out = np.zeros((BLOCK, 1), np.float32)
    for start in range(0, 3200, BLOCK):
        engine.callback(_signal()[start : start + BLOCK, None], out, BLOCK)
    engine.stop()
    assert engine.session.samples_in == 3200
    broken = LiveEngine(_session(), latency=0.1)
    broken.start_worker()
    broken.callback(np.full((BLOCK, 1), np.nan, np.float32), out, BLOCK)
    with pytest.raises(Exception, match="NaN"):
        broken.stop()


def test_missing_sounddevice_or_portaudio_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import raises ImportError
    with pytest.raises(LiveError, match="stemstream\\[live\\]"):
        import_sounddevice()

    class Broken(types.ModuleType):
        def __getattr__(self, name):
            raise AttributeError(name)

    monkeypatch.delitem(sys.modules, "sounddevice")
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(LiveError, match="libportaudio2"):
        import_sounddevice()


def test_no_device_gives_a_clear_error(monkeypatch):
    fake = types.ModuleType("sounddevice")

    def query_devices(device=None, kind=None):
        raise ValueError("No input device matching")

    fake.query_devices = query_devices
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    with pytest.raises(LiveError, match="no usable input device"):
        run_live(model="random-tiny-mock")


def test_list_devices_says_when_there_is_none(monkeypatch):
    from stemstream.stream.live import list_devices

    class NoDevices(list):  # sounddevice's DeviceList prints as "" when empty
        def __str__(self) -> str:
            return ""

    fake = types.ModuleType("sounddevice")
    fake.query_devices = lambda device=None, kind=None: NoDevices()
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    assert list_devices().startswith("no sound devices found")
    fake.query_devices = lambda device=None, kind=None: NoDevices(["0 fake, ALSA (2 in, 2 out)"])
    assert list_devices() == ""  # a non-empty list prints as sounddevice formats it


def test_run_live_with_a_fake_device(monkeypatch, tmp_path):
    """A fake duplex stream that calls the callback in real time for ~0.3 s."""
    import threading
    import time

    fake = types.ModuleType("sounddevice")
    fake.query_devices = lambda device=None, kind=None: {"default_samplerate": 16000.0}

    class Stream:
        def __init__(self, samplerate, blocksize, channels, dtype, device, callback):
            self.rate, self.block, self.callback = samplerate, blocksize, callback
            self.latency = (0.01, 0.02)
            self._stop = threading.Event()

        def __enter__(self):
            def pump():
                n = 0
                while not self._stop.is_set():
                    t = (n + np.arange(self.block)) / self.rate
                    indata = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)[:, None]
                    self.callback(indata, np.zeros((self.block, 1), np.float32), self.block,
                                  None)
                    n += self.block
                    time.sleep(self.block / self.rate)

            self._thread = threading.Thread(target=pump, daemon=True)
            self._thread.start()
            return self

        def __exit__(self, *exc):
            self._stop.set()
            self._thread.join()

    fake.Stream = Stream
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    with pytest.warns(UserWarning, match="200 ms behind your playing"):
        report = run_live(model="random-tiny-mock", duration=0.3, latency=0.2,
                          report_out=str(tmp_path / "live.json"), route="eager")
    assert report["clock"] == "wall"
    assert report["device"]["callbacks"] > 5
    assert report["chunks"] > 0
    assert (tmp_path / "live.json").exists()


def test_alignment_warning_says_when_output_cannot_be_in_time():
    from stemstream.stream.live import alignment_warning

    behind = alignment_warning(0, 50.0, 0.2)
    assert behind and "200 ms behind" in behind and "t_f < 0" in behind
    assert alignment_warning(-50, 50.0, 0.2) is None  # 1 s look-ahead, 200 ms latency
    late = alignment_warning(-5, 50.0, 0.2)  # 100 ms look-ahead
    assert late and "100 ms behind" in late


def test_live_default_is_the_live_model_in_time(monkeypatch, tmp_path):
    """`run_live(model="default")` resolves to `default-live`; with t_f < 0 and no latency
    given it plays in time (L = 0) and says nothing about alignment."""
    import warnings

    from stemstream.stream import live as live_module
    from stemstream.stream.models import load_stream_model

    asked = []

    def resolve(model, *args, **kwargs):
        asked.append(model)
        return load_stream_model("random-tiny-mock", future_frames=-4)

    fake = types.ModuleType("sounddevice")
    fake.query_devices = lambda device=None, kind=None: {"default_samplerate": 16000.0}

    class Stream:  # no callbacks: the run only needs to open and close
        def __init__(self, **kwargs):
            self.latency = (0.0, 0.0)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    fake.Stream = Stream
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    monkeypatch.setattr("stemstream.stream.models.resolve_stream_model", resolve)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an alignment warning would fail the test
        report = live_module.run_live(duration=0.05)
    assert asked == ["default-live"]
    assert report["latency_s"] == 0.0
