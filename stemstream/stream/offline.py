"""Generate a stem for a whole file with any trained model family (`stemstream generate`).

Streaming decoders run their own streaming loop over the file — chunk by chunk with the KV
cache, exactly as live — only without a clock; the offline baselines (prefix decoder, StemGen)
see the whole input at once. The real-time engine with clocks and latency accounting is
``stemstream.stream`` proper (issue 6).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stemstream import audio
from stemstream.codec.registry import codec_for
from stemstream.config import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from stemstream.data.instruments import class_name, playable_class
from stemstream.errors import ConfigError
from stemstream.guidance import Guidance
from stemstream.mixing import check_mix_channels, mix_with_input
from stemstream.model.sampling import SamplingConfig
from stemstream.model.streaming import StreamingDecoder
from stemstream.outputs import all_or_nothing, check_outputs
from stemstream.stream.inputs import model_input
from stemstream.stream.models import frames_from_seconds, shipped_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateResult:
    stem_path: Path
    mix_path: Path | None
    seconds: float
    family: str
    instrument: str


@torch.inference_mode()
def generate_codes(
    model: torch.nn.Module,
    latents: torch.Tensor,
    inst: torch.Tensor,
    sampling: SamplingConfig,
    generator: torch.Generator,
    num_frames: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Output codes ``[B, K, T]`` for input latents ``[B, D_in, T_in]`` with any family
    (``T = num_frames``, default ``T_in``; input frames past ``T`` are the look-ahead a
    ``t_f > 0`` model hears at the end of the window). ``progress``: a bar over decoding
    steps on stderr (streaming families)."""
    from tqdm import tqdm

    frames = latents.shape[-1] if num_frames is None else num_frames
    if not isinstance(model, StreamingDecoder):
        if sampling.guided:
            raise ConfigError("input guidance applies to streaming models, not "
                              f"{type(model).__name__}")
        return model.generate(latents, inst, sampling, generator, num_frames=num_frames)
    steps = model.delay.num_steps(frames)
    k = model.config.chunk_frames
    state = model.new_state(inst, max_steps=steps + k, guided=sampling.guided)
    chunks = []
    with tqdm(total=steps, desc="generate", unit="step", disable=not progress) as bar:
        while state.step < steps:
            chunks.append(
                model.generate_chunk(state, latents, sampling, generator, input_complete=True)
            )
            bar.update(min(k, steps - bar.n))
    delayed = torch.cat(chunks, dim=-1)[..., :steps]
    return model.delay.revert(delayed)


@torch.inference_mode()
def generate_codes_many(
    model: torch.nn.Module,
    latents: Sequence[torch.Tensor],
    insts: Sequence[int],
    sampling: SamplingConfig,
    generators: Sequence[torch.Generator],
    num_frames: Sequence[int],
) -> list[torch.Tensor]:
    """:func:`generate_codes` of several inputs (each ``[1, D_in, T_in]``, its own instrument
    class, generator and length), advanced together: a streaming decoder with ``k = 1`` runs
    every stream's position in one batched forward
    (:class:`~stemstream.model.batched.StreamPool`: a GEMM instead of one GEMV per stream,
    each stream sampling from its own generator); other models one input after another.

    A batch gives each stream what :func:`generate_codes` gives it alone up to float rounding
    (greedy: the same tokens; sampled: a draw that falls within rounding of a boundary can
    differ), and the same batch gives the same codes every time. Returns ``[1, K, T]`` each.
    """
    from stemstream.model.batched import StreamPool, StreamStep

    items = list(zip(latents, insts, generators, num_frames, strict=True))
    if (len(items) == 1 or not isinstance(model, StreamingDecoder)
            or model.config.chunk_frames != 1):
        return [generate_codes(model, x, torch.tensor([inst]), sampling, gen, num_frames=n)
                for x, inst, gen, n in items]
    steps = [model.delay.num_steps(n) for n in num_frames]
    window = max(steps) + 1  # no stream wraps the ring: every position sees its whole past
    pool = StreamPool(model, len(items) * (2 if sampling.guided else 1), window)
    streams = []
    for x, inst, gen, _ in items:
        state = model.new_state(torch.tensor([inst]), window=window, guided=sampling.guided)
        pool.adopt(state)
        streams.append(StreamStep(state, x, 0, True, sampling, gen))
    chunks: list[list[torch.Tensor]] = [[] for _ in items]
    while True:
        active = [i for i, item in enumerate(streams) if item.state.step < steps[i]]
        if not active:
            break
        for i, chunk in zip(active, pool.step([streams[i] for i in active]), strict=True):
            chunks[i].append(chunk[..., None])
    return [model.delay.revert(torch.cat(c, dim=-1)[..., :n])
            for c, n in zip(chunks, steps, strict=True)]


def generate_file(
    checkpoint: str | Path,
    input_path: str | Path,
    instrument: str,
    out: str | Path,
    codec_spec: str | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int = DEFAULT_TOP_K,
    seed: int = 0,
    mix_out: str | Path | None = None,
    tf_seconds: float | None = None,
    chunk_frames: int | None = None,
    progress: bool = False,
    sample_rate: int | None = None,
    mix_channels: str = "input",
    guidance: Guidance | None = None,
) -> GenerateResult:
    """Accompany ``input_path`` (any rate/channels) with ``instrument``; write the stem (and
    optionally the appendix-A.7 mix of input and stem, in the input's channel layout or mono
    by ``mix_channels``) at ``sample_rate`` (default: the input's). A streaming model may run
    at another ``t_f`` (seconds) / ``k`` than trained (with a warning); other families refuse
    them. ``guidance``: input guidance, one ``w`` or one per codebook (streaming models; see
    :class:`~stemstream.model.sampling.SamplingConfig`; default: the model's own)."""
    from stemstream.model.checkpoints import load_model
    from stemstream.stream.session import with_stream_args

    check_outputs([input_path], audio={"-o": out, "--mix": mix_out})  # before the model loads
    check_mix_channels(mix_channels)

    loaded = load_model(shipped_path(checkpoint))
    codec = codec_for(loaded.codec, codec_spec)
    model = loaded.model
    if tf_seconds is not None or chunk_frames is not None:
        if not isinstance(model, StreamingDecoder):
            raise ConfigError(f"--tf / --chunk apply to streaming models, not {loaded.family!r}")
        future = frames_from_seconds(tf_seconds, codec.frame_rate, "--tf")
        model = with_stream_args(model, future, chunk_frames)
    inst_id = playable_class(instrument)
    num_classes = getattr(loaded.config, "num_classes", 18)
    if inst_id >= num_classes:
        raise ConfigError(
            f"instrument {instrument!r} is outside this model's {num_classes} classes"
        )
    native = audio.load(input_path, sample_rate=None, channels=1)
    audio.check_duration(native, 1 / codec.frame_rate, str(input_path))
    rate = sample_rate or native.sample_rate
    source = audio.Audio(audio.resample(native.samples, native.sample_rate, codec.sample_rate),
                         codec.sample_rate)
    wave = torch.from_numpy(source.samples)[None]
    if guidance is None:
        guidance = loaded.guidance
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, guidance=guidance)
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        latents = model_input(codec, model.config, wave)
        codes = generate_codes(model, latents, torch.tensor([inst_id]), sampling, generator,
                               progress=progress)
        stem = codec.decode(codes)[0, :, : wave.shape[-1]].numpy()
    length = -(-native.samples.shape[-1] * rate // native.sample_rate)
    stem = audio.resample(stem, codec.sample_rate, rate)[:, :length]
    stem = np.pad(stem, ((0, 0), (0, length - stem.shape[-1])))
    with all_or_nothing() as written:
        out = audio.save(out, stem, rate)
        written.append(out)
        mix_path = None
        if mix_out is not None:
            source = audio.load(input_path, sample_rate=None, channels=None)
            mix_path = audio.save(mix_out, mix_with_input(source, stem[0], rate, mix_channels),
                                  rate)
    log.info("generated %s for %s with a %s model", class_name(inst_id), input_path, loaded.family)
    return GenerateResult(
        out, mix_path, stem.shape[-1] / rate, loaded.family, class_name(inst_id)
    )
