"""Live accompaniment on sound devices (``stemstream live``; needs the ``live`` extra).

The audio callback (PortAudio's thread, via :mod:`sounddevice`) never waits for the model: it
copies captured input into a queue and fills the output from a playback ring, with silence
where the accompaniment is not ready yet. A worker thread pulls input blocks, pushes them
through a :class:`~stemstream.stream.session.Session` driven by a wall clock, and writes the
returned audio into the ring at its sample position. Output sample ``n`` is played
``L`` seconds after input sample ``n`` was captured (plus the device's own I/O latency,
which PortAudio reports and the summary prints).

:class:`LiveEngine` holds that logic without any sound device, so it is tested by calling
:meth:`LiveEngine.callback` directly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from stemstream.errors import StemstreamError

log = logging.getLogger(__name__)


class LiveError(StemstreamError):
    """PortAudio or a sound device is missing or unusable."""


def import_sounddevice() -> Any:
    """:mod:`sounddevice`, or a :class:`LiveError` saying what to install."""
    try:
        import sounddevice
    except ImportError:
        raise LiveError(
            "live mode needs the `sounddevice` package: pip install 'stemstream[live]'"
        ) from None
    except OSError as err:  # the package is there but libportaudio is not
        raise LiveError(
            f"PortAudio is missing ({err}); install it, e.g. `apt-get install libportaudio2`"
        ) from None
    return sounddevice


@dataclass
class LiveStats:
    callbacks: int = 0
    input_overflows: int = 0  # blocks dropped because the worker fell too far behind
    underrun_samples: int = 0  # output samples played as silence (not ready in time)
    played_samples: int = 0
    status_flags: int = 0  # callbacks where PortAudio reported an xrun


class LiveEngine:
    """Device-independent core of live mode.

    Args:
        session: a session built with a :class:`~stemstream.stream.clock.WallClock`,
            ``input_sample_rate`` = the device rate and ``output_sample_rate`` = the device rate.
        latency: ``L`` in seconds (output delay behind the input).
        ring_seconds: size of the playback ring (must exceed ``L`` plus the model's lead).
        max_queue: input blocks buffered for the worker before new ones are dropped.
    """

    def __init__(self, session, latency: float, ring_seconds: float = 10.0,
                 max_queue: int = 256) -> None:
        self.session = session
        self.rate = session.out_rate
        self.delay = int(round(latency * self.rate))
        self.ring = np.zeros(int(ring_seconds * self.rate) + self.delay, dtype=np.float32)
        self.ready_upto = 0  # output samples [0, ready_upto) are in the ring (absolute)
        self.captured = 0  # input samples captured (absolute)
        self.played = 0  # output-timeline samples handed to the device (absolute)
        self.inbox: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=max_queue)
        self.stats = LiveStats()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ audio thread
    def callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int,
                 status: Any = None) -> None:
        """PortAudio callback: never blocks, never raises."""
        self.stats.callbacks += 1
        if status:
            self.stats.status_flags += 1
        try:
            self.inbox.put_nowait(np.array(indata, dtype=np.float32, copy=True))
        except queue.Full:
            self.stats.input_overflows += 1
        self.captured += frames
        # The device plays output-timeline sample (captured - delay) now.
        start = self.captured - frames - self.delay
        block = np.zeros(frames, dtype=np.float32)
        with self._lock:
            idx = np.arange(start, start + frames)
            ok = (idx >= 0) & (idx < self.ready_upto) & (idx >= self.ready_upto - len(self.ring))
            block[ok] = self.ring[idx[ok] % len(self.ring)]
        self.stats.underrun_samples += int(((idx >= 0) & ~ok).sum())
        self.played = start + frames
        self.stats.played_samples += frames
        outdata[:] = block[:, None] if outdata.ndim == 2 else block

    # ---------------------------------------------------------------- worker thread
    def process_pending(self, timeout: float | None = None) -> bool:
        """Push one queued input block through the session; False when stopped (``None``)."""
        block = self.inbox.get(timeout=timeout)
        if block is None:
            return False
        out = self.session.push(block)
        self._write(out)
        return True

    def _write(self, out: np.ndarray) -> None:
        with self._lock:
            n = len(self.ring)
            idx = (self.ready_upto + np.arange(out.shape[0])) % n
            self.ring[idx] = out
            self.ready_upto += out.shape[0]

    def start_worker(self) -> None:
        def run() -> None:
            try:
                while self.process_pending():
                    pass
            except BaseException as err:  # surfaced by stop()
                self.error = err

        self._worker = threading.Thread(target=run, name="stemstream-live", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self.inbox.put(None)
        if self._worker is not None:
            self._worker.join(timeout=10)
        if self.error is not None:
            raise self.error


def list_devices() -> str:
    """The sound devices PortAudio sees (``stemstream live --list-devices``), or a sentence
    saying there are none."""
    devices = import_sounddevice().query_devices()
    if len(devices) == 0:
        return ("no sound devices found (PortAudio sees no input or output; on a server or "
                "in a container there is usually none: use `stemstream accompany` on a file)")
    return str(devices)


def alignment_warning(future_frames: int, frame_rate: float, latency: float) -> str | None:
    """Why the accompaniment will not sound in time with the player, or None when it can.

    A model with ``t_f >= 0`` must hear input frame ``t`` (and ``t_f`` more) before it plays
    frame ``t``, so the player hears it ``latency`` seconds late; only a model trained with
    ``t_f < 0`` (it predicts ``-t_f`` frames ahead) can play in time, with ``latency`` at most
    ``-t_f`` frames."""
    tf_seconds = future_frames / frame_rate
    if future_frames >= 0:
        return (
            f"this model has t_f = {tf_seconds:+.2f} s: it must hear the music before "
            f"accompanying it, so you will hear its part {latency * 1e3:.0f} ms behind your "
            "playing (--latency). For accompaniment in time with you, use a model trained "
            "with t_f < 0 (e.g. t_f = -1 s) and --latency at most -t_f."
        )
    if latency > -tf_seconds + 1e-9:
        return (
            f"--latency {latency * 1e3:.0f} ms exceeds this model's look-ahead "
            f"(-t_f = {-tf_seconds * 1e3:.0f} ms): its part will sound "
            f"{(latency + tf_seconds) * 1e3:.0f} ms behind your playing; lower --latency."
        )
    return None


def run_live(
    model: str = "default",
    instrument: str = "bass",
    codec: str | None = None,
    tf_seconds: float | None = None,
    chunk_frames: int | None = None,
    latency: float | None = None,
    sample_rate: int | None = None,
    block_ms: float = 10.0,
    input_device: str | int | None = None,
    output_device: str | int | None = None,
    duration: float | None = None,
    report_out: str | None = None,
    seed: int = 0,
    weights: str = "fp32",
    route: str = "auto",
) -> dict[str, Any]:
    """Play along with the input device until Ctrl-C (or ``duration`` seconds); return the
    session report plus device statistics.

    ``model="default"`` means the shipped live model (``default-live``: ``t_f < 0``, plays in
    time). ``latency=None`` picks ``L = 0`` (in time) for a model with ``t_f < 0`` and 200 ms
    otherwise. The decode step runs compiled where it can (``route="auto"``,
:mod:`stemstream.model.routes`)."""
    sd = import_sounddevice()
    from stemstream.stream.clock import WallClock
    from stemstream.stream.models import resolve_stream_model
    from stemstream.stream.report import write_report
    from stemstream.stream.session import Session, SessionConfig

    try:
        device_info = sd.query_devices(input_device, "input")
    except Exception as err:  # PortAudioError, ValueError
        raise LiveError(f"no usable input device ({err}); see --list-devices") from None
    try:
        sd.query_devices(output_device, "output")
    except Exception as err:
        raise LiveError(f"no usable output device ({err}); see --list-devices") from None
    rate = int(sample_rate or device_info["default_samplerate"])
    if model == "default":
        model = "default-live"
    loaded = resolve_stream_model(model, codec, tf_seconds, chunk_frames, weights, route)
    log.info("routes: %s", loaded.describe_routes())
    future_frames = loaded.model.config.future_frames
    if latency is None:
        latency = 0.0 if future_frames < 0 else 0.2
    session = Session(
        loaded.model,
        loaded.codec,
        SessionConfig(instrument=instrument, input_sample_rate=rate, latency=latency,
                      seed=seed, output_sample_rate=rate, guidance=loaded.guidance),
        clock=WallClock(),
    )
    message = alignment_warning(future_frames, loaded.codec.frame_rate, latency)
    if message:
        warnings.warn(message, stacklevel=2)
    engine = LiveEngine(session, latency)
    engine._write(session.preroll())  # a model that plays ahead is ready at time 0
    engine.start_worker()
    blocksize = max(1, int(rate * block_ms / 1000))
    log.info("live: %s at %d Hz, blocks of %d samples, L = %.0f ms", loaded.source, rate,
             blocksize, latency * 1e3)
    began = time.monotonic()
    io_latency = None
    try:
        with sd.Stream(samplerate=rate, blocksize=blocksize, channels=1, dtype="float32",
                       device=(input_device, output_device), callback=engine.callback) as stream:
            io_latency = stream.latency
            while duration is None or time.monotonic() - began < duration:
                time.sleep(0.1)
                if engine.error is not None:
                    break
    except KeyboardInterrupt:
        pass
    except Exception as err:
        if isinstance(err, StemstreamError):
            raise
        raise LiveError(f"sound device failed: {err}") from None
    finally:
        engine.stop()
    report = session.report()
    report["device"] = {
        "sample_rate": rate,
        "blocksize": blocksize,
        "io_latency_s": list(io_latency) if isinstance(io_latency, tuple) else io_latency,
        **engine.stats.__dict__,
    }
    if report_out:
        write_report(report, report_out)
    return report
