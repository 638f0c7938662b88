"""Resolve what ``--model`` options of the streaming front ends accept.

* ``default`` — the shipped model for files
  (``stemstream/assets/models/streaming-listen-self-distill.safetensors``: 6 blocks,
  ``t_f = +100 ms``, conv input encoder, with the shipped codec; card
  ``models/streaming-listen-self-distill-g25``): ``default-v4`` (below) taught, on a CPU,
  to give in one pass the distribution it samples from under input guidance 2.5 / 1.6 / 1.6
  / 1.6, so it leans on its input harder (0.50 nats at onsets against 0.43) and follows the
  beat better, for a noisier stem (FAD 0.255 against 0.186). The previous defaults stay
  shipped: ``default-v4`` (``streaming-listen-gpu-distill.safetensors``: ``default-v3``
  taught on a GPU to give in one pass what it samples under input guidance 6 / 2 / 2 / 2; card
  ``models/streaming-listen-gpu-distill``), ``default-v3``
  (``streaming-listen-more.safetensors``, sampled with input guidance 2; card
  ``models/streaming-listen-more``), ``default-v2`` (``streaming-listen.safetensors``, the
  same design with fewer steps, plain sampling) and ``default-v1``
  (``streaming-cpu.safetensors``, the paper's fusion at ``t_f = 0``). Without a shipped
  default, an *untrained* ``cpu``-preset streaming decoder over the shipped codec (random
  weights, seed 0) stands in, with a warning: timings are real, the music is noise.
* ``default-live`` — the shipped live model (``streaming-live-distill.safetensors``: 3 blocks,
  ``t_f = -120 ms``, so it can play in time with the musician, fast enough for a laptop CPU;
  it hears onset, loudness, chroma and the tracked beat phase advanced to the frame it
  decides; card ``models/streaming-live-distill``): the model below taught to give, in one
  pass, the distribution it samples from under input guidance 3, so it samples plainly at
  about half the model work per frame. ``stemstream live`` resolves ``default`` to it. Falls
  back to ``default`` (with a warning) where it is not shipped. The previous live models stay
  shipped: ``default-live-v2`` (``streaming-live-beat.safetensors``, the same network sampled
  with input guidance 3; card ``models/streaming-listen-live-beat``) and ``default-live-v1``
  (``streaming-live.safetensors``: the paper's fusion, no features).
* ``random-cpu`` / ``random-tiny`` / ``random-paper`` — untrained decoders of that preset over
  the shipped codec (``random-tiny-mock``: over :class:`~stemstream.codec.mock.MockCodec`, for
  tests; ``random-paper``: the paper's 218M-parameter backbone, for speed measurements);
* a model checkpoint (exported or training) of the ``streaming`` family.

``t_f`` and ``k`` may be overridden; a model run at values it was not trained for warns.
``route`` picks how the decode step runs (:mod:`stemstream.model.routes`: ``eager``,
``compiled`` (AOTInductor), ``onnx`` (ONNX Runtime) or ``auto``); ``weights="int8"`` runs it on
ONNX Runtime with int8 weights (its dynamic quantisation of every MatMul). The codec stays
float32 so its tokens are the ones the model was trained on.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from stemstream.codec.base import Codec
from stemstream.codec.compiled import accelerate_codec
from stemstream.errors import ConfigError
from stemstream.guidance import Guidance
from stemstream.model.routes import RouteInfo, accelerate
from stemstream.model.streaming import StreamingDecoder, StreamingDecoderConfig
from stemstream.model.transformer import TransformerConfig

log = logging.getLogger(__name__)

MODEL_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"
DEFAULT_MODEL = MODEL_ASSETS / "streaming-listen-self-distill.safetensors"
FOURTH_DEFAULT = MODEL_ASSETS / "streaming-listen-gpu-distill.safetensors"
THIRD_DEFAULT = MODEL_ASSETS / "streaming-listen-more.safetensors"
SECOND_DEFAULT = MODEL_ASSETS / "streaming-listen.safetensors"
PREVIOUS_DEFAULT = MODEL_ASSETS / "streaming-cpu.safetensors"
LIVE_MODEL = MODEL_ASSETS / "streaming-live-distill.safetensors"
SECOND_LIVE = MODEL_ASSETS / "streaming-live-beat.safetensors"
PREVIOUS_LIVE = MODEL_ASSETS / "streaming-live.safetensors"
RANDOM_SPECS = ("random-cpu", "random-tiny", "random-tiny-mock", "random-paper")


@dataclass(frozen=True)
class StreamModel:
    """A streaming decoder ready for a session, its codec, and where it came from."""

    model: StreamingDecoder
    codec: Codec
    source: str
    trained: bool
    route: RouteInfo = RouteInfo("eager")
    codec_route: RouteInfo = RouteInfo("eager")
    guidance: Guidance = 1.0  # the input guidance the model is meant to be sampled with
    weights: str = "fp32"  # what the decode step runs with (fp32, or int8 on onnx)
    # the same model loaded again (picklable: an engine process loads its own copy)
    loader: Callable[[], StreamModel] | None = None

    def describe_routes(self) -> str:
        """One line: how the decode step and the codec run."""
        return f"decode step {self.route.describe()}; codec {self.codec_route.describe()}"


def random_model(preset: str, codec: Codec, num_codebooks: int = 4, seed: int = 0,
                 future_frames: int = 0, chunk_frames: int = 1) -> StreamingDecoder:
    """An untrained streaming decoder of a backbone ``preset`` shaped for ``codec``."""
    torch.manual_seed(seed)
    config = StreamingDecoderConfig(
        backbone=TransformerConfig.preset(preset),
        num_codebooks=min(num_codebooks, codec.num_codebooks),
        codebook_size=codec.codebook_size,
        input_dim=codec.latent_dim,
        future_frames=future_frames,
        chunk_frames=chunk_frames,
    )
    return StreamingDecoder(config).eval()


def _shipped() -> dict[str, Path]:
    """Each shipped model name and its file (read at call time: tests swap the files)."""
    return {"default": DEFAULT_MODEL, "default-live": LIVE_MODEL,
            "default-live-v2": SECOND_LIVE, "default-live-v1": PREVIOUS_LIVE,
            "default-v1": PREVIOUS_DEFAULT, "default-v2": SECOND_DEFAULT,
            "default-v3": THIRD_DEFAULT, "default-v4": FOURTH_DEFAULT}


def shipped_path(spec: str | Path) -> str:
    """The file behind a shipped model name (``default``, ``default-live``, ``default-v1``,
    ...); any other spec unchanged."""
    return str(_shipped().get(str(spec), spec))


def load_stream_model(
    spec: str | Path = "default",
    codec_spec: str | None = None,
    future_frames: int | None = None,
    chunk_frames: int | None = None,
    weights: str = "fp32",
    route: str | None = None,
) -> StreamModel:
    """Resolve ``spec`` (see the module docstring), apply ``t_f`` / ``k`` overrides and put
    the decode step on ``route`` (default: ``eager``, or ``onnx`` for int8 weights).

    Raises:
        ConfigError / CheckpointError / CodecError: unknown spec, a checkpoint of another
            family or codec, invalid ``t_f`` / ``k``, a route that cannot run here.
    """
    from stemstream.model.quantize import WEIGHT_MODES

    if weights not in WEIGHT_MODES:
        raise ConfigError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}")
    route = route or ("onnx" if weights == "int8" else "eager")
    loaded = _load(str(spec), codec_spec, future_frames, chunk_frames)
    model, source = loaded.model, loaded.source
    if weights != "fp32":
        source = f"{source} ({weights})"
    chosen = accelerate(model, route, weights=weights)
    if chosen.note:
        log.warning("decode step: %s", chosen.describe())
    # the codec stays float32: its tokens are the ones the model was trained on
    codec_route = accelerate_codec(loaded.codec, model.config.num_codebooks, route)
    if codec_route.note:
        log.info("codec: %s", codec_route.describe())
    loader = functools.partial(load_stream_model, spec, codec_spec, future_frames,
                               chunk_frames, weights, route)
    return StreamModel(model, loaded.codec, source, loaded.trained, chosen, codec_route,
                       loaded.guidance, weights, loader)


def _load(spec: str, codec_spec: str | None, future_frames: int | None,
          chunk_frames: int | None) -> StreamModel:
    from stemstream.codec.registry import get_codec
    from stemstream.stream.session import with_stream_args

    if spec == "default-live":
        if LIVE_MODEL.exists():
            spec = str(LIVE_MODEL)
        else:
            warnings.warn("no live model is shipped: using the default (file) model",
                          stacklevel=2)
            spec = "default"
    if spec == "default" and not DEFAULT_MODEL.exists():
        warnings.warn(
            "no trained default model is shipped yet: using an untrained `cpu` model "
            "(real timings, meaningless audio)",
            stacklevel=2,
        )
        spec = "random-cpu"
    tf0 = 0 if future_frames is None else future_frames
    k0 = 1 if chunk_frames is None else chunk_frames
    if spec in RANDOM_SPECS:
        preset = spec.split("-")[1]
        if spec.endswith("-mock"):
            from stemstream.codec.mock import MockCodec, MockCodecConfig

            codec = MockCodec(MockCodecConfig())
        else:
            codec = get_codec(codec_spec or "default")
        model = random_model(preset, codec, future_frames=tf0, chunk_frames=k0)
        return StreamModel(model, codec.eval(), spec, trained=False)
    spec = shipped_path(spec)
    path = Path(spec)
    if not path.exists():
        raise ConfigError(
            f"--model {spec!r}: no such file; use {', '.join(_shipped())}, "
            f"{', '.join(RANDOM_SPECS)} or a streaming model checkpoint"
        )
    from stemstream.codec.registry import codec_for
    from stemstream.model.checkpoints import load_model

    loaded = load_model(path)
    if loaded.family != "streaming":
        raise ConfigError(
            f"{path} holds a {loaded.family!r} model; real-time accompaniment needs the "
            "'streaming' family (offline families run with `stemstream generate`)"
        )
    codec = codec_for(loaded.codec, codec_spec)
    model = with_stream_args(loaded.model, future_frames, chunk_frames)
    return StreamModel(model, codec.eval(), str(path), trained=True, guidance=loaded.guidance)


def frames_from_seconds(seconds: float | None, frame_rate: float, what: str) -> int | None:
    """Seconds (CLI) -> whole frames; an inexact value is rounded with a log line."""
    if seconds is None:
        return None
    if not math.isfinite(seconds):
        raise ConfigError(f"{what} must be a finite number of seconds, got {seconds}")
    frames = round(seconds * frame_rate)
    if abs(frames - seconds * frame_rate) > 1e-6:
        log.info("%s %.4f s rounded to %d frames (%.4f s)", what, seconds, frames,
                 frames / frame_rate)
    return frames


def resolve_stream_model(spec: str | Path = "default", codec_spec: str | None = None,
                         tf_seconds: float | None = None, chunk_frames: int | None = None,
                         weights: str = "fp32", route: str | None = None) -> StreamModel:
    """:func:`load_stream_model` with ``t_f`` given in seconds (converted with the codec's
    frame rate, known once it is loaded) and ``k`` applied; an untrained model has no trained
    visibility to warn about, so its overrides are silent."""
    from stemstream.stream.session import with_stream_args

    loaded = load_stream_model(spec, codec_spec, weights=weights, route=route)
    future_frames = frames_from_seconds(tf_seconds, loaded.codec.frame_rate, "--tf")
    with warnings.catch_warnings():
        if not loaded.trained:
            warnings.simplefilter("ignore")
        model = with_stream_args(loaded.model, future_frames, chunk_frames)
    loader = functools.partial(resolve_stream_model, spec, codec_spec, tf_seconds,
                               chunk_frames, weights, route)
    return dataclasses.replace(loaded, model=model, loader=loader)
