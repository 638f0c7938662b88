"""A block-by-block resampler with explicit, serialisable state.

Live input comes at whatever rate the sound card or browser uses (44.1 or 48 kHz, often); the
codec wants 16 kHz. :class:`StreamResampler` converts arbitrary blocks with a polyphase
windowed-sinc (Kaiser) filter. Its output for a stream cut into any blocks is bit-identical to
the output for the whole stream in one block, and its state (:meth:`state_dict`) is a few
tensors, so a session holding one can be saved and restored exactly (``soxr``'s stream objects
cannot be serialised, which is why this is not a thin wrapper over them).

Output sample ``j`` sits at input position ``j * rate_in / rate_out``; it is emitted once
``half_width`` input samples past that position have arrived (the filter's look-ahead, about
0.3 ms at 16 kHz -> 44.1 kHz). :meth:`flush` pads the end with zeros. The first output sample
is aligned with the first input sample, as in :func:`stemstream.audio.resample`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from stemstream.errors import StemstreamError


class StreamResampler:
    """Resample a mono stream from ``rate_in`` to ``rate_out`` Hz, block by block.

    Args:
        rate_in: input rate in Hz.
        rate_out: output rate in Hz.
        half_width: filter half-length in input samples at the lower of the two rates
            (more = sharper anti-aliasing, more look-ahead).
        beta: Kaiser window shape.
    """

    def __init__(self, rate_in: int, rate_out: int, half_width: int = 16, beta: float = 8.6):
        if rate_in < 1 or rate_out < 1:
            raise StemstreamError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
        gcd = math.gcd(int(rate_in), int(rate_out))
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        self.up, self.down = self.rate_out // gcd, self.rate_in // gcd
        self.identity = self.up == self.down
        # Cut-off at the lower Nyquist; widen the filter (in input samples) when downsampling.
        cutoff = min(1.0, self.up / self.down)
        self.taps_half = int(math.ceil(half_width / cutoff))
        taps = 2 * self.taps_half
        # phase p: output at input position base + p / up; tap i touches input base - half + 1 + i
        offsets = np.arange(taps) - self.taps_half + 1
        phases = np.arange(self.up)[:, None] / self.up
        x = offsets[None, :] - phases  # distance from the output position, in input samples
        window = np.kaiser(2 * self.taps_half + 1, beta)
        # Evaluate the Kaiser window continuously by interpolation over its support.
        w = np.interp(x, np.arange(-self.taps_half, self.taps_half + 1), window, left=0, right=0)
        self.filters = (cutoff * np.sinc(cutoff * x) * w).astype(np.float64)
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self._buffer = np.zeros(self.taps_half - 1, dtype=np.float64)  # history (zeros)
        self._buffer_start = -(self.taps_half - 1)  # input index of _buffer[0]
        self._next_out = 0  # index of the next output sample
        self._received = 0  # input samples received

    @property
    def latency_samples(self) -> int:
        """Input samples of look-ahead before an output sample can be emitted."""
        return 0 if self.identity else self.taps_half

    def process(self, block: np.ndarray) -> np.ndarray:
        """Feed ``block`` (float ``[n]``); return the output samples now computable."""
        block = np.asarray(block, dtype=np.float64).reshape(-1)
        if self.identity:
            self._received += block.shape[0]
            self._next_out += block.shape[0]
            return block.astype(np.float32)
        self._buffer = np.concatenate([self._buffer, block])
        self._received += block.shape[0]
        return self._emit(self._received)

    def flush(self) -> np.ndarray:
        """End the stream: emit the remaining output (input padded with zeros) so that the
        total output length is ``ceil(input_length * rate_out / rate_in)``; then reset."""
        if self.identity:
            self.reset()
            return np.zeros(0, dtype=np.float32)
        total = -(-self._received * self.up // self.down)
        self._buffer = np.concatenate([self._buffer, np.zeros(self.taps_half + 1)])
        out = self._emit(self._received + self.taps_half + 1, limit=total)
        self.reset()
        return out

    def _emit(self, available: int, limit: int | None = None) -> np.ndarray:
        # Output j needs input up to floor(j * down / up) + taps_half < available.
        newest = available - 1 - self.taps_half
        stop = -(-(newest + 1) * self.up // self.down) if newest >= 0 else 0
        if limit is not None:
            stop = min(stop, limit)
        if stop <= self._next_out:
            return np.zeros(0, dtype=np.float32)
        j = np.arange(self._next_out, stop)
        base = j * self.down // self.up
        phase = j * self.down % self.up
        first = base - self.taps_half + 1 - self._buffer_start
        index = first[:, None] + np.arange(2 * self.taps_half)[None, :]
        out = np.einsum("nt,nt->n", self._buffer[index], self.filters[phase])
        self._next_out = stop
        # Keep what the next output still needs.
        keep_from = self._next_out * self.down // self.up - self.taps_half + 1
        drop = max(0, keep_from - self._buffer_start)
        self._buffer = self._buffer[drop:]
        self._buffer_start += drop
        return out.astype(np.float32)

    # --------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The stream's state as tensors (see :meth:`load_state_dict`)."""
        counters = [self._buffer_start, self._next_out, self._received]
        return {
            "buffer": torch.from_numpy(self._buffer.copy()),
            "counters": torch.tensor(counters, dtype=torch.long),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue a stream saved with :meth:`state_dict`."""
        self._buffer = state["buffer"].numpy().astype(np.float64).copy()
        self._buffer_start, self._next_out, self._received = (
            int(v) for v in state["counters"].tolist()
        )
