"""Clocks that drive a :class:`~stemstream.stream.session.Session` (SPEC section 7).

A session asks its clock two things: when did this input block arrive, and when did a piece
of work start and end. Times are seconds on the session's timeline, whose zero is the moment
the first input sample was captured; output sample ``n`` must start playing at
``n / sample_rate + L``.

- :class:`VirtualClock` (files): input arrives exactly as fast as it would be played, the
  worker runs each piece of work as soon as both its input and the worker are free, and each
  piece takes the compute time actually measured. Content never depends on timing, so a file
  renders identically on any machine while the report shows what live use would meet.
- :class:`WallClock` (live): every time is read from the timer when it happens.

Both take a ``timer`` (default :func:`time.perf_counter`); tests pass a scripted fake timer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Timer = Callable[[], float]


class Clock(Protocol):
    """What a session needs from a clock."""

    realtime: bool

    def arrival(self, input_end: float) -> float:
        """Timeline time at which input audio up to ``input_end`` seconds has arrived."""

    def run(self, ready: float, work: Callable[[], T]) -> tuple[T, float, float]:
        """Run ``work`` no earlier than ``ready``; return ``(result, start, end)``."""

    def timed(self, ready: float, began: float, finished: float) -> tuple[float, float]:
        """``(start, end)`` on the timeline of work that ran elsewhere (e.g. one batched step
        shared by many sessions) between timer readings ``began`` and ``finished``."""

    def state(self) -> dict[str, Any]:
        """JSON-safe state (for session snapshots)."""

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""


class VirtualClock:
    """Deterministic timeline with measured compute times (see the module docstring).

    Attributes:
        busy_until: when the (single) worker is free again.
    """

    realtime = False

    def __init__(self, timer: Timer = time.perf_counter) -> None:
        self.timer = timer
        self.busy_until = 0.0

    def arrival(self, input_end: float) -> float:
        return input_end

    def run(self, ready: float, work: Callable[[], T]) -> tuple[T, float, float]:
        began = self.timer()
        result = work()
        return (result, *self.timed(ready, began, self.timer()))

    def timed(self, ready: float, began: float, finished: float) -> tuple[float, float]:
        start = max(ready, self.busy_until)
        self.busy_until = start + (finished - began)
        return start, self.busy_until

    def state(self) -> dict[str, Any]:
        return {"busy_until": self.busy_until}

    def load_state(self, state: dict[str, Any]) -> None:
        self.busy_until = float(state.get("busy_until", 0.0))


class WallClock:
    """Real time: the timeline starts when the first block arrives (minus its duration,
    since its first sample was captured that long ago)."""

    realtime = True

    def __init__(self, timer: Timer = time.perf_counter) -> None:
        self.timer = timer
        self.origin: float | None = None

    def now(self) -> float:
        if self.origin is None:
            return 0.0
        return self.timer() - self.origin

    def arrival(self, input_end: float) -> float:
        if self.origin is None:
            self.origin = self.timer() - input_end
        return self.now()

    def run(self, ready: float, work: Callable[[], T]) -> tuple[T, float, float]:
        start = self.now()
        result = work()
        return result, start, self.now()

    def timed(self, ready: float, began: float, finished: float) -> tuple[float, float]:
        if self.origin is None:
            return 0.0, finished - began
        return began - self.origin, finished - self.origin

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        self.origin = None  # a restored live session starts a new timeline


def make_clock(realtime: bool, timer: Timer = time.perf_counter) -> Clock:
    """:class:`WallClock` if ``realtime`` else :class:`VirtualClock`."""
    return WallClock(timer) if realtime else VirtualClock(timer)
