"""Musically explicit input features, computed causally at the codec's frame rate.

A model hears its input as codec latents, which carry timbre and pitch in a form it must learn
to read. These features say outright what an accompanist needs: where the onsets are, how loud
the input is, which pitch classes sound, and where the beat is. Frame ``t`` (samples
``t * hop .. (t + 1) * hop``) depends on samples before ``(t + 1) * hop`` only, exactly like a
codec frame, so a model's visibility rules cover the features unchanged.

=============  ====  ==========================================================================
name           dims  meaning
=============  ====  ==========================================================================
``onset``      1     spectral flux: the summed rise of log band energies since the last frame
``loudness``   1     level of the newest 32 ms in dB, mapped from [-80, 0] dB to [0, 1]
``chroma``     12    energy per pitch class (C, C#, ...) over 55 Hz-5 kHz, summing to 1 (0 if
                     silent), from a 128 ms window
``beat``       4     ``sin``/``cos`` of the beat phase (0 on a beat), ``log2`` of the beat period
                     over 0.5 s, and the tempo's confidence in [0, 1]
=============  ====  ==========================================================================

The beat is tracked causally from the onset envelope of the last 6 s: the period is the lag in
60-200 BPM whose autocorrelation plus half its double's, weighted by a prior centred on
120 BPM, is largest (refined between frames); the phase is the offset since the last beat
whose comb over the last four periods collects the most onset strength.

:class:`FeatureStream` computes them from audio pushed in pieces of any size; :func:`features`
is one push of a whole signal plus the flush, so streaming equals offline by construction
(and the tests check it bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from stemstream.errors import ConfigError

BEAT_UNIT_SECONDS = 0.5  # the beat's log2-period channel is 0 at this period (120 BPM)
FEATURE_DIMS = {"onset": 1, "loudness": 1, "chroma": 12, "beat": 4}
FEATURE_NAMES = tuple(FEATURE_DIMS)

_SHORT_SECONDS = 0.032  # onset and loudness window
_LONG_SECONDS = 0.128  # chroma window
_BAND_EDGES_HZ = (0, 60, 120, 180, 250, 330, 420, 520, 640, 780, 940, 1120, 1330, 1580, 1870,
                  2200, 2600, 3050, 3600, 4250, 5000, 5900, 6950, 8200)
_CHROMA_HZ = (55.0, 5000.0)
_HISTORY_SECONDS = 6.0  # onset envelope the beat tracker reads
_BPM_RANGE = (60.0, 200.0)
_PRIOR_BPM, _PRIOR_OCTAVES = 120.0, 1.0
_COMB_BEATS = 4


def check_features(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple, or a :class:`ConfigError` for an unknown or repeated name."""
    names = tuple(names)
    for name in names:
        if name not in FEATURE_DIMS:
            raise ConfigError(f"unknown input feature {name!r}; choose from "
                              f"{', '.join(FEATURE_NAMES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"input features repeat a name: {list(names)}")
    return names


def feature_dim(names: Sequence[str]) -> int:
    """Channels of the named features."""
    return sum(FEATURE_DIMS[name] for name in check_features(names))


def feature_channels(names: Sequence[str], within: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
    """Indices of the channels of ``names`` inside an array holding the features ``within``
    (in that order): picks a model's features out of a dump that stores them all."""
    within = check_features(within)
    starts = np.cumsum([0, *(FEATURE_DIMS[n] for n in within)])
    index = []
    for name in check_features(names):
        if name not in within:
            raise ConfigError(f"input feature {name!r} is not among {list(within)}")
        i = within.index(name)
        index.extend(range(starts[i], starts[i + 1]))
    return np.asarray(index, dtype=np.int64)


def feature_offset(names: Sequence[str], name: str) -> int:
    """The first channel of feature ``name`` among the features ``names`` (in that order)."""
    return int(feature_channels([name], names)[0])


class _Groups:
    """Sums FFT bins in groups with one gather and one ``np.add.reduceat``."""

    def __init__(self, groups: list[np.ndarray]):
        groups = [g for g in groups if g.size]
        self.count = len(groups)
        self.order = np.concatenate(groups)
        self.starts = np.cumsum([0, *(g.size for g in groups[:-1])])

    def __call__(self, power: np.ndarray) -> np.ndarray:
        """``[..., bins]`` -> ``[..., groups]``."""
        return np.add.reduceat(power[..., self.order], self.starts, axis=-1)


def _bands(edges_hz: Sequence[float], n_fft: int, sample_rate: int) -> _Groups:
    """Bins of each band (bands without a bin are left out)."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    return _Groups([np.flatnonzero((freqs >= lo) & (freqs < hi))
                    for lo, hi in zip(edges_hz[:-1], edges_hz[1:], strict=True)])


def _pitch_classes(n_fft: int, sample_rate: int) -> _Groups:
    """Bins of each pitch class C, C#, ... B within :data:`_CHROMA_HZ`."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    inside = np.flatnonzero((freqs >= _CHROMA_HZ[0]) & (freqs <= _CHROMA_HZ[1]))
    midi = 69 + 12 * np.log2(freqs[inside] / 440.0)
    pitch_class = np.round(midi).astype(np.int64) % 12
    groups = [inside[pitch_class == c] for c in range(12)]
    if any(g.size == 0 for g in groups):
        raise ConfigError(f"sample rate {sample_rate} Hz is too low for chroma features")
    return _Groups(groups)


def _fft_size(seconds: float, sample_rate: int, hop: int) -> int:
    size = 1 << int(np.ceil(np.log2(max(seconds * sample_rate, hop))))
    return max(size, hop)


class FeatureStream:
    """Causal features of one audio stream, pushed in pieces.

    Args:
        sample_rate: Hz of the pushed audio (the codec's).
        hop: samples per frame (the codec's hop length).
        names: features to compute, in output order (default all of :data:`FEATURE_NAMES`).
    """

    def __init__(self, sample_rate: int, hop: int, names: Sequence[str] = FEATURE_NAMES):
        if sample_rate < 1 or hop < 1:
            raise ConfigError(f"sample_rate and hop must be >= 1, got {sample_rate}, {hop}")
        self.names = check_features(names)
        self.dim = feature_dim(self.names)
        self.sample_rate, self.hop = sample_rate, hop
        self.frame_rate_hz = sample_rate / hop
        self.short_fft = _fft_size(_SHORT_SECONDS, sample_rate, hop)
        self.long_fft = _fft_size(_LONG_SECONDS, sample_rate, hop)
        self._short_window = np.hanning(self.short_fft + 2)[1:-1]
        self._long_window = np.hanning(self.long_fft + 2)[1:-1]
        self._bands = _bands(_BAND_EDGES_HZ, self.short_fft, sample_rate)
        self._chroma = _pitch_classes(self.long_fft, sample_rate)
        rate = self.frame_rate_hz
        self._lags = np.arange(int(np.floor(60 * rate / _BPM_RANGE[1])),
                               int(np.ceil(60 * rate / _BPM_RANGE[0])) + 1)
        prior_lag = 60 * rate / _PRIOR_BPM
        self._prior = np.exp(-0.5 * (np.log2(self._lags / prior_lag) / _PRIOR_OCTAVES) ** 2)
        self._unit_lag = BEAT_UNIT_SECONDS * rate
        self.history_frames = max(int(round(_HISTORY_SECONDS * rate)),
                                  _COMB_BEATS * int(self._lags[-1]) + 2,
                                  3 * int(self._lags[-1]))
        self._max_lag = 2 * int(self._lags[-1])
        self._kind = (sample_rate, hop, self.names)  # streams computed together share it
        self.reset()

    def _lagged(self, centred: np.ndarray) -> np.ndarray:
        """``centred [..., n]`` -> ``[..., max_lag, n - max_lag]``: row ``i`` is ``centred``
        delayed by ``i + 1`` frames, aligned with ``centred[..., max_lag:]`` (a strided view,
        no copy)."""
        step = centred.strides[-1]
        return as_strided(centred[..., self._max_lag - 1 :],
                          (*centred.shape[:-1], self._max_lag, centred.shape[-1] - self._max_lag),
                          (*centred.strides[:-1], -step, step), writeable=False)

    def reset(self) -> None:
        """Back to the start of a stream."""
        self._samples = np.zeros(self.long_fft, np.float64)  # the newest long window
        self._pending = np.zeros(0, np.float64)  # samples of the unfinished frame
        self._bands_prev = np.zeros(self._bands.count, np.float64)
        self._envelope = np.zeros(self.history_frames, np.float64)
        self.frames = 0

    # ----------------------------------------------------------------------- pushing
    def push(self, samples: np.ndarray) -> np.ndarray:
        """Mono ``samples [N]`` -> ``float32 [F, n]`` for the ``n`` frames they complete."""
        pending, count = self._take(samples)
        out = np.empty((self.dim, count), np.float32)
        for i in range(count):
            out[:, i] = self._frame(pending[i * self.hop : (i + 1) * self.hop])
        return out

    @staticmethod
    def push_many(streams: Sequence[FeatureStream], samples: Sequence[np.ndarray]
                  ) -> list[np.ndarray]:
        """Each stream's :meth:`push` of its samples (an engine's sessions), the frames the
        streams complete together computed in one numpy call per operation for all of them
        (:meth:`_frames`; one stream alone takes the faster scalar :meth:`_frame`). Both
        compute the same float64 numbers in the same order, so a stream's features are the
        same pushed alone or with others (the tests check it bit for bit)."""
        groups: dict[tuple, list[int]] = {}  # streams of one kind are computed together
        for i, stream in enumerate(streams):
            groups.setdefault(stream._kind, []).append(i)
        out: list[np.ndarray] = [np.zeros(0)] * len(streams)
        for rows in groups.values():
            if len(rows) == 1:
                out[rows[0]] = streams[rows[0]].push(samples[rows[0]])
                continue
            frames = FeatureStream._push_together([streams[i] for i in rows],
                                                  [samples[i] for i in rows])
            for i, each in zip(rows, frames, strict=True):
                out[i] = each
        return out

    @staticmethod
    def _push_together(streams: Sequence[FeatureStream], samples: Sequence[np.ndarray]
                       ) -> list[np.ndarray]:
        first, hop = streams[0], streams[0].hop
        pendings, counts = zip(*(s._take(x) for s, x in zip(streams, samples, strict=True)),
                               strict=True)
        out = [np.empty((first.dim, count), np.float32) for count in counts]
        for i in range(max(counts)):
            rows = [j for j, count in enumerate(counts) if count > i]
            block = np.stack([pendings[j][i * hop : (i + 1) * hop] for j in rows])
            frames = first._frames([streams[j] for j in rows], block)
            for k, j in enumerate(rows):
                out[j][:, i] = frames[k]
        return out

    def _take(self, samples: np.ndarray) -> tuple[np.ndarray, int]:
        """The held and new samples, and how many whole frames they make (the rest is held
        for the next push)."""
        pending = np.concatenate([self._pending, np.asarray(samples, np.float64).reshape(-1)])
        count = pending.shape[0] // self.hop
        self._pending = pending[count * self.hop :]
        return pending, count

    def flush(self) -> np.ndarray:
        """The last partial frame zero-padded (as a codec pads), ``[F, 0 or 1]``; then the
        stream is over."""
        if self._pending.shape[0] == 0:
            return np.zeros((self.dim, 0), np.float32)
        return self.push(np.zeros(self.hop - self._pending.shape[0]))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything :meth:`load_state_dict` needs to continue bit-identically."""
        return {"samples": self._samples.copy(), "pending": self._pending.copy(),
                "bands_prev": self._bands_prev.copy(), "envelope": self._envelope.copy(),
                "frames": np.asarray(self.frames)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._samples = np.array(state["samples"], np.float64)
        self._pending = np.array(state["pending"], np.float64)
        self._bands_prev = np.array(state["bands_prev"], np.float64)
        self._envelope = np.array(state["envelope"], np.float64)
        self.frames = int(state["frames"])

    # ---------------------------------------------------------------- one frame, one stream
    def _frame(self, hop_samples: np.ndarray) -> np.ndarray:
        self._samples = np.concatenate([self._samples[self.hop :], hop_samples])
        short = self._samples[-self.short_fft :] * self._short_window
        power = np.abs(np.fft.rfft(short)) ** 2
        bands = np.log1p(1e3 * self._bands(power) / self.short_fft)
        flux = float(np.maximum(bands - self._bands_prev, 0.0).sum()) / self._bands.count
        self._bands_prev = bands
        self._envelope = np.concatenate([self._envelope[1:], [flux]])
        self.frames += 1
        parts = []
        for name in self.names:
            if name == "onset":
                parts.append([flux])
            elif name == "loudness":
                level = 10 * np.log10(np.mean(short**2) + 1e-10)
                parts.append([np.clip((level + 80.0) / 80.0, 0.0, 1.0)])
            elif name == "chroma":
                parts.append(self._chroma_frame())
            else:
                parts.append(self._beat_frame())
        return np.concatenate([np.asarray(p, np.float64) for p in parts])

    def _chroma_frame(self) -> np.ndarray:
        power = np.abs(np.fft.rfft(self._samples * self._long_window)) ** 2
        chroma = self._chroma(power)
        total = chroma.sum()
        return chroma / total if total > 1e-8 else np.zeros(12)

    def _beat_frame(self) -> np.ndarray:
        """``sin, cos`` of the phase, ``log2(period / 0.5 s)``, confidence."""
        env = self._envelope
        # smoothed, so a period between two whole frames does not split its peak
        smooth = np.convolve(env, (0.25, 0.5, 0.25), mode="same")
        centred = smooth - smooth.mean()
        tail = centred[self._max_lag :]
        energy = float(tail @ tail)
        if energy <= 1e-12:
            return np.array([0.0, 0.0, 0.0, 0.0])
        corr = self._lagged(centred) @ tail / energy  # lags 1 .. max_lag
        lags = self._lags
        # a beat's multiples are periodic too: credit each lag with its double, so the
        # prior only decides between a tempo and its half when both fit equally
        score = (corr[lags - 1] + 0.5 * corr[2 * lags - 1]) * self._prior
        best = int(np.argmax(score))
        period = float(lags[best])
        left, mid, right = corr[lags[best] - 2 : lags[best] + 1]
        curve = left - 2 * mid + right
        if curve < 0:  # parabolic refinement between whole lags
            period += float(np.clip(0.5 * (left - right) / curve, -0.5, 0.5))
        offsets = np.arange(int(np.ceil(period)))
        beats = np.round(np.arange(_COMB_BEATS) * period).astype(np.int64)
        index = env.shape[0] - 1 - offsets[:, None] - beats[None, :]  # [offsets, beats]
        score = env[index].sum(axis=1)
        since = float(offsets[int(np.argmax(score))])
        phase = 2 * np.pi * since / period
        confidence = float(np.clip(mid, 0.0, 1.0))
        return np.array([np.sin(phase), np.cos(phase), np.log2(period / self._unit_lag),
                         confidence])

    # ------------------------------------------------------------- one frame, many streams
    def _frames(self, streams: Sequence[FeatureStream], block: np.ndarray) -> np.ndarray:
        """:meth:`_frame` of each of ``streams`` at once (all of this stream's kind; ``block
        [S, hop]`` their new samples) -> ``[S, F]``, advancing their states."""
        samples = np.concatenate([_rows([s._samples for s in streams])[:, self.hop :], block],
                                 axis=1)
        short = samples[:, -self.short_fft :] * self._short_window
        power = np.abs(np.fft.rfft(short, axis=1)) ** 2
        bands = np.log1p(1e3 * self._bands(power) / self.short_fft)
        previous = _rows([s._bands_prev for s in streams])
        flux = np.maximum(bands - previous, 0.0).sum(axis=1) / self._bands.count
        envelope = np.concatenate([_rows([s._envelope for s in streams])[:, 1:],
                                   flux[:, None]], axis=1)
        for k, stream in enumerate(streams):
            stream._samples, stream._bands_prev = samples[k], bands[k]
            stream._envelope = envelope[k]
            stream.frames += 1
        parts = []
        for name in self.names:
            if name == "onset":
                parts.append(flux[:, None])
            elif name == "loudness":
                level = 10 * np.log10(np.mean(short**2, axis=1) + 1e-10)
                parts.append(np.clip((level + 80.0) / 80.0, 0.0, 1.0)[:, None])
            elif name == "chroma":
                parts.append(self._chroma_frames(samples))
            else:
                parts.append(self._beat_frames(envelope))
        return np.concatenate(parts, axis=1)

    def _chroma_frames(self, samples: np.ndarray) -> np.ndarray:
        power = np.abs(np.fft.rfft(samples * self._long_window, axis=1)) ** 2
        chroma = self._chroma(power)
        total = chroma.sum(axis=1, keepdims=True)
        sounding = total > 1e-8
        return np.where(sounding, chroma / np.where(sounding, total, 1.0), 0.0)

    def _beat_frames(self, envelope: np.ndarray) -> np.ndarray:
        """Per row: ``sin, cos`` of the phase, ``log2(period / 0.5 s)``, confidence."""
        out = np.zeros((envelope.shape[0], 4))
        # smoothed, so a period between two whole frames does not split its peak
        padded = np.zeros((envelope.shape[0], envelope.shape[1] + 2))
        padded[:, 1:-1] = envelope
        smooth = 0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:]
        centred = smooth - smooth.mean(axis=1, keepdims=True)
        tail = centred[:, self._max_lag :]
        # per row, as _beat_frame (a batched product may sum in another order)
        energy = np.array([row @ row for row in tail])
        live = energy > 1e-12  # silent rows keep zeros
        if not live.any():
            return out
        env, centred, tail, energy = envelope[live], centred[live], tail[live], energy[live]
        rows = np.arange(env.shape[0])
        lagged = self._lagged(centred)
        corr = np.stack([m @ t for m, t in zip(lagged, tail, strict=True)]) / energy[:, None]
        lags = self._lags
        # a beat's multiples are periodic too: credit each lag with its double, so the
        # prior only decides between a tempo and its half when both fit equally
        score = (corr[:, lags - 1] + 0.5 * corr[:, 2 * lags - 1]) * self._prior
        lag = lags[np.argmax(score, axis=1)]
        left, mid, right = corr[rows, lag - 2], corr[rows, lag - 1], corr[rows, lag]
        curve = left - 2 * mid + right
        bent = curve < 0  # parabolic refinement between whole lags
        shift = np.clip(0.5 * (left - right) / np.where(bent, curve, -1.0), -0.5, 0.5)
        period = lag + np.where(bent, shift, 0.0)
        offsets = np.arange(int(np.ceil(period.max())))
        beats = np.round(np.arange(_COMB_BEATS)[None, :] * period[:, None]).astype(np.int64)
        index = env.shape[1] - 1 - offsets[None, :, None] - beats[:, None, :]  # [S, O, B]
        comb = env[rows[:, None, None], index].sum(axis=2)
        comb[offsets[None, :] >= np.ceil(period)[:, None]] = -np.inf  # beyond a row's period
        since = np.argmax(comb, axis=1)
        phase = 2 * np.pi * since / period
        out[live] = np.stack([np.sin(phase), np.cos(phase), np.log2(period / self._unit_lag),
                              np.clip(mid, 0.0, 1.0)], axis=1)
        return out


def _rows(arrays: list[np.ndarray]) -> np.ndarray:
    """``arrays`` stacked as rows (one array: a view, no copy)."""
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def features(samples: np.ndarray, sample_rate: int, hop: int,
             names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
    """Offline features of a whole mono signal: ``float32 [F, ceil(N / hop)]``, frame for
    frame what a :class:`FeatureStream` gives when the same samples are pushed in pieces."""
    stream = FeatureStream(sample_rate, hop, names)
    return np.concatenate([stream.push(samples), stream.flush()], axis=1)
