"""``stemstream eval run``: generate for N test windows and score every system side by side.

For each window (appendix A.1 selection on a Slakh-layout corpus) the run writes, under
``OUT/examples/NNNN/``::

    input.wav                  the input mixture (all other stems; plus look-ahead for t_f > 0)
    ground_truth.wav           the real target stem
    codec_reconstruction.wav   the target through the codec (the ceiling of any token model)
    random_pairing.wav         a real stem of the same class from another window
    <system>.wav               each model's prediction
    <system>_mix.wav           appendix-A.7 mix of the input and that stem (for every system)
    meta.json                  provenance (track, stem, start, class, the random pairing's source)

then scores each system's stem against the input mixture: COCOLA harmonic / percussive / both,
beat F-measure (beats of the stem vs beats of the input mix, +-70 ms), and FAD of each system's
stems against the ground-truth stems (one embedding set per system). Results: ``metrics.json``
(system -> metric -> mean, with bootstrap 95% intervals in ``metrics_ci.json``),
``per_example.csv``, ``summary.csv`` and ``summary.md``.

A run is resumable: audio already written is reused (delete a system's files to regenerate).
Systems are named ``model`` for ``--checkpoint`` and by ``NAME=CKPT`` for ``--systems``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from stemstream import audio
from stemstream.config import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from stemstream.errors import ConfigError
from stemstream.guidance import Guidance, format_guidance, guidance_json, is_guided, parse_guidance
from stemstream.mixing import mix_stem
from stemstream.outputs import open_atomic, prepare_output_dir, write_text
from stemstream.stream.inputs import model_input

log = logging.getLogger(__name__)

ANCHORS = ("ground_truth", "codec_reconstruction", "random_pairing")
METRICS = ("cocola", "beat", "fad")
COCOLA_MODES = ("harmonic", "percussive", "both")


@dataclass(frozen=True)
class EvalConfig:
    """What ``stemstream eval run`` does (see the module docstring).

    Attributes:
        corpus: Slakh-layout corpus root.
        out: run directory.
        systems: ``{name: checkpoint}``; ``default`` = the shipped streaming model.
        split: corpus split.
        num_examples: windows scored (one per track, tracks in corpus order, spread evenly).
        seconds: output window length.
        seed: window selection, random pairing and sampling seed.
        metrics: subset of :data:`METRICS`.
        cocola: COCOLA checkpoint (``None`` = shipped).
        fad_embedding: ``cocola`` or ``codec`` (see :mod:`stemstream.eval.fad`).
        beat_tracker: see :func:`stemstream.beats.beat_f_measure`.
        temperature, top_k: sampling.
        codec: codec spec for the anchors (default: the first system's, else ``default``).
        look_ahead_seconds: future input every window keeps beyond its end, for systems with
            ``t_f > 0``. Fixed per run, not taken from the systems, so that the windows (the
            test set) do not change when a system with another ``t_f`` is added to a run;
            a system that needs more is refused.
        stemgen_steps: StemGen iterations per RVQ level (``None``: each model's own schedule,
            A.5's 128/64/32/32; fewer cost proportionally less CPU time).
        batch: windows a streaming model with ``k = 1`` generates together, in one batched
            forward per position (:func:`~stemstream.stream.offline.generate_codes_many`);
            windows are grouped in order (``0..batch-1``, ...), so the same ``batch`` gives
            the same audio, resumed or not; 1 = one window at a time.
    """

    corpus: Path
    out: Path
    systems: dict[str, str] = field(default_factory=dict)
    split: str = "test"
    num_examples: int = 64
    seconds: float = 10.0
    seed: int = 0
    metrics: tuple[str, ...] = METRICS
    cocola: str | None = None
    fad_embedding: str = "cocola"
    beat_tracker: str = "auto"
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    codec: str | None = None
    look_ahead_seconds: float = 1.0
    stemgen_steps: tuple[int, ...] | None = None
    batch: int = 8

    def __post_init__(self) -> None:
        if self.stemgen_steps is not None and (
                not self.stemgen_steps or min(self.stemgen_steps) < 1):
            raise ConfigError(f"stemgen_steps must be ints >= 1, got {self.stemgen_steps}")
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown:
            raise ConfigError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
        if self.num_examples < 1:
            raise ConfigError(f"num_examples must be >= 1, got {self.num_examples}")
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}")
        if not self.look_ahead_seconds >= 0:
            raise ConfigError(f"look_ahead_seconds must be >= 0, got {self.look_ahead_seconds}")
        clash = sorted(set(self.systems) & set(ANCHORS))
        if clash:
            raise ConfigError(f"system names {clash} are reserved for the anchors")
        for name in self.systems:
            if not name or "/" in name or name.endswith("_mix"):
                raise ConfigError(f"bad system name {name!r}")


@dataclass
class _System:
    name: str
    spec: str
    model: Any
    codec: Any
    family: str
    future_frames: int
    chunk_frames: int
    guidance: Guidance = 1.0

    def describe(self) -> dict[str, Any]:
        out = {"checkpoint": self.spec, "family": self.family,
               "future_frames": self.future_frames, "chunk_frames": self.chunk_frames,
               "future_seconds": self.future_frames / self.codec.frame_rate}
        if is_guided(self.guidance):
            out["guidance"] = guidance_json(self.guidance)
        config = getattr(self.model, "config", None)
        backbone = getattr(config, "backbone", None)
        if backbone is not None:  # claims compare t_f and k only within one size
            out["backbone"] = f"{backbone.num_layers}x{backbone.dim}"
        schedule = getattr(config, "schedule", None)
        if schedule is not None:
            out["steps_per_level"] = list(schedule.steps_per_level)
        variant = _variant(config)
        if is_guided(self.guidance):  # sampled otherwise: its own line too
            variant = ", ".join(filter(None, [variant,
                                              f"input guidance {format_guidance(self.guidance)}"]))
        if variant:  # designed or trained otherwise: its own t_f / k line
            out["variant"] = variant
        return out


def _variant(config: Any) -> str:
    """What sets a streaming model apart from the paper's design and training, in words
    (empty for the paper's)."""
    parts = []
    if getattr(config, "input_encoder", "frame") != "frame":
        parts.append(f"{config.input_encoder} input")
    if getattr(config, "history_dropout", 0):
        parts.append(f"history dropout {config.history_dropout:g}")
    if getattr(config, "history_noise", 0) or getattr(config, "history_span", 0):
        parts.append(f"history noise {config.history_noise:g} span {config.history_span:g}")
    if getattr(config, "history_shift", 0):
        parts.append(f"history shift {config.history_shift:g}")
    if getattr(config, "onset_loss_weight", 0):
        parts.append("onset head")
    if getattr(config, "anticipation_frames", 0):
        parts.append(f"anticipation head ({config.anticipation_frames} frames)")
    if getattr(config, "input_dropout", 0):
        parts.append(f"input dropout {config.input_dropout:g}")
    return ", ".join(parts)


def parse_systems(checkpoint: str | None, systems: Sequence[str]) -> dict[str, str]:
    """``--checkpoint CKPT`` (named ``model``) and ``--systems NAME=CKPT ...`` (a streaming
    system may add ``,guidance=W`` or one ``W`` per codebook, ``,guidance=6,2,2,2``: sampled
    with that input guidance instead of the model's own)."""
    out: dict[str, str] = {}
    if checkpoint:
        out["model"] = checkpoint
    for item in systems:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"--systems takes NAME=CHECKPOINT, got {item!r}")
        if name in out:
            raise ConfigError(f"system {name!r} given twice")
        out[name] = spec
    return out


def split_guidance(spec: str) -> tuple[str, Guidance | None]:
    """``CKPT`` or ``CKPT,guidance=W`` (``W``: a number or ``6,2,2,2``, one per codebook) ->
    (``CKPT``, ``W``; ``None`` when absent: the model's own)."""
    path, sep, option = spec.rpartition(",guidance=")
    if not sep:
        return spec, None
    try:
        return path, parse_guidance(option)
    except ConfigError as err:
        raise ConfigError(f"{err} in {spec!r}") from None


def _load_system(name: str, spec: str, codec_spec: str | None,
                 stemgen_steps: tuple[int, ...] | None = None) -> _System:
    from stemstream.codec.registry import codec_for
    from stemstream.model.checkpoints import load_model
    from stemstream.model.stemgen import StemGenModel
    from stemstream.model.streaming import StreamingDecoder

    path, guidance = split_guidance(spec)

    if path == "default":
        from stemstream.stream.models import load_stream_model

        loaded = load_stream_model("default", codec_spec)
        model, codec, family = loaded.model, loaded.codec, "streaming"
    else:
        loaded = load_model(path)
        model, codec = loaded.model, codec_for(loaded.codec, codec_spec)
        family = loaded.family
    if guidance is None:
        guidance = loaded.guidance
    if isinstance(model, StreamingDecoder):
        future, chunk = model.config.future_frames, model.config.chunk_frames
    else:
        future, chunk = 0, 0
        if is_guided(guidance):
            raise ConfigError(f"system {name!r}: input guidance applies to streaming models, "
                              f"not {family!r}")
    if stemgen_steps is not None and isinstance(model, StemGenModel):
        model.use_steps(stemgen_steps)
    return _System(name, spec, model, codec, family, future, chunk, guidance)


def _check_cached_systems(out: Path, systems: list[_System]) -> None:
    """Refuse a system whose name an earlier run of ``out`` used for another checkpoint or
    setting: its cached audio would be scored as this system's."""
    info = out / "run.json"
    if not info.is_file():
        return
    before = json.loads(info.read_text()).get("systems", {})
    audio_keys = ("checkpoint", "family", "future_frames", "chunk_frames", "steps_per_level",
                  "guidance")
    for system in systems:
        old = before.get(system.name)
        new = system.describe()
        if old is not None and any(old.get(k) != new.get(k) for k in audio_keys):
            raise ConfigError(
                f"system {system.name!r} was generated in {out} as {old}, now {new}"
                ": its cached audio belongs to the other one; use another name, or delete "
                f"{out}/examples/*/{system.name}*.wav"
            )


def _bootstrap_ci(values: np.ndarray, rng: np.random.Generator, draws: int = 2000
                  ) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size < 2:
        return (float("nan"), float("nan"))
    means = rng.choice(values, size=(draws, values.size)).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


class EvalResult(TypedDict):
    """What :func:`run_eval` returns: ``metrics[system][metric]``, their bootstrap 95%
    intervals ``ci[system][metric] = [low, high]``, the wall ``seconds`` and the number of
    ``examples`` (windows) evaluated."""

    metrics: dict[str, dict[str, float]]
    ci: dict[str, dict[str, list[float]]]
    seconds: float
    examples: int


@dataclass
class _Run:
    """What rendering an example needs: the checked inputs of one evaluation."""

    config: EvalConfig
    out: Path
    systems: list[_System]
    codec: Any
    dataset: Any
    classes: list[int]
    rng: np.random.Generator
    chosen: list[int] = field(default_factory=list)  # dataset indices of the windows

    @property
    def names(self) -> list[str]:
        return [*ANCHORS, *(s.name for s in self.systems)]


def run_stems(out: str | Path, systems: Sequence[str] | None = None
              ) -> tuple[list[Path], list[str]]:
    """The window folders of a run written by :func:`run_eval`, in order, and ``systems``,
    by default those with a stem in the first window (anchors included, ``input`` and
    ``*_mix`` not).

    Raises:
        ConfigError: ``out`` holds no ``examples/NNNN`` folders.
    """
    base = Path(out) / "examples"
    windows = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if not windows:
        raise ConfigError(f"{out}: no examples/ folders (not an `stemstream eval run` output)")
    found = sorted(p.stem for p in windows[0].glob("*.wav")
                   if p.stem != "input" and not p.stem.endswith("_mix"))
    return windows, list(systems or found)


def run_eval(config: EvalConfig, progress: bool = True) -> EvalResult:
    """Run the evaluation: check every input, render the anchors and each system's stem for
    every window (resuming what an earlier run of ``--out`` left), score, aggregate, write."""
    from tqdm import tqdm

    began = time.perf_counter()
    run = _prepare(config)
    examples, windows = [], list(enumerate(run.chosen))
    with tqdm(total=len(windows), desc="generate", disable=not progress) as bar:
        for first in range(0, len(windows), config.batch):
            group = windows[first : first + config.batch]
            examples += _render(run, group)
            bar.update(len(group))
    names, rate = run.names, run.codec.sample_rate
    per_example = _score(examples, names, config, rate, progress)
    metrics, ci = _aggregate(per_example, names, config, examples, rate, run.rng, progress)
    _write_tables(run.out, per_example, metrics, ci, names)
    seconds = time.perf_counter() - began
    _write_run_info(run, len(examples), seconds)
    log.info("evaluated %d windows x %d systems in %.0f s", len(examples), len(names), seconds)
    return EvalResult(metrics=metrics, ci=ci, seconds=seconds, examples=len(examples))


def _prepare(config: EvalConfig) -> _Run:
    """Check everything a user can get wrong before any audio is generated; then create the
    output folder and choose the windows (``run.chosen``)."""
    from stemstream.codec.registry import get_codec
    from stemstream.data.dataset import WindowDataset
    from stemstream.data.windows import WindowConfig

    if "beat" in config.metrics:  # a typo must not cost a whole generation pass
        from stemstream.beats import resolve_tracker

        resolve_tracker(config.beat_tracker)
    out = Path(config.out)
    prepare_output_dir(out, "--out", create=False)  # created once every input checks out
    systems = [_load_system(n, s, config.codec, config.stemgen_steps)
               for n, s in config.systems.items()]
    _check_cached_systems(out, systems)
    codec = systems[0].codec if systems else get_codec(config.codec or "default")
    for system in systems:
        if system.codec.codec_identity() != codec.codec_identity():
            raise ConfigError(f"system {system.name!r} uses another codec than "
                              f"{systems[0].name!r}; evaluate them in separate runs")
    needed = max([0] + [s.future_frames for s in systems])
    if needed / codec.frame_rate > config.look_ahead_seconds + 1e-9:
        raise ConfigError(
            f"a system needs t_f = {needed / codec.frame_rate:g} s of future input; this run "
            f"keeps {config.look_ahead_seconds:g} s (raise --look-ahead, in a new --out)"
        )
    windows = WindowConfig(window_seconds=config.seconds,
                           future_seconds=config.look_ahead_seconds)
    log.info("selecting %s windows of %s/%s", config.split, config.corpus, windows)
    dataset = WindowDataset(config.corpus, config.split, windows, sample_rate=codec.sample_rate,
                            seed=config.seed)
    if len(dataset) < 2:
        raise ConfigError(
            f"{config.corpus}: {len(dataset)} usable window(s) in split {config.split!r}; the "
            "random-pairing anchor needs at least two (a bigger corpus or another split)"
        )
    prepare_output_dir(out, "--out")
    count = min(config.num_examples, len(dataset))
    if count < config.num_examples:
        log.warning("only %d windows in %s; evaluating all of them", count, config.split)
    classes = [dataset.window(i).inst_class for i in range(len(dataset))]
    run = _Run(config, out, systems, codec, dataset, classes,
               np.random.default_rng(config.seed))
    run.chosen = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int)).tolist()
    return run


def _random_pair(run: _Run, index: int) -> tuple[int, bool]:
    """Another window's target for the random-pairing anchor: same instrument class from
    another track where one exists (``True``), else any other window."""
    dataset, classes = run.dataset, run.classes
    track = dataset.window(index).track
    same = [j for j in range(len(dataset)) if j != index and classes[j] == classes[index]
            and dataset.window(j).track != track]
    pool = same or [j for j in range(len(dataset)) if j != index]
    return int(run.rng.choice(pool)), bool(same)


def _render(run: _Run, group: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Windows ``n`` (dataset items ``index``) of one group: each one's input, anchors, every
    system's stem (the group's windows generated together) and their mixes, each written once
    to ``examples/NNNN/`` and read back."""
    rate = run.codec.sample_rate
    examples = [_anchors(run, n, index) for n, index in group]
    for k, system in enumerate(run.systems):
        paths = [example["folder"] / f"{system.name}.wav" for example in examples]
        if not all(path.exists() for path in paths):
            # the whole group, so a resumed run draws exactly what an uninterrupted one did
            seeds = [run.config.seed * 1000 + n * 10 + k for n, _ in group]
            stems = _predict(run, system, examples, seeds)
            for path, stem in zip(paths, stems, strict=True):
                if not path.exists():
                    audio.save(path, np.asarray(stem, dtype=np.float32), rate)
        for example, path in zip(examples, paths, strict=True):
            example["stems"][system.name] = _cached(path, None, rate)
    for example in examples:
        del example["model_input"]  # the look-ahead too: scoring needs the window alone
        for name in run.names:
            _cached(example["folder"] / f"{name}_mix.wav",
                    lambda s=example["stems"][name], x=example["input"]: mix_stem([x], s, rate),
                    rate)
    return examples


def _anchors(run: _Run, n: int, index: int) -> dict[str, Any]:
    """Window ``n`` (dataset item ``index``): its folder, provenance, input and the three
    anchors, written once and read back."""
    import torch

    codec, dataset = run.codec, run.dataset
    rate, hop = codec.sample_rate, codec.hop_length
    folder = run.out / "examples" / f"{n:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    example = dataset[index]
    frames = dataset.window(index).num_frames
    length = frames * hop
    input_audio = example.input_audio[0].numpy()
    target = example.target_audio[0].numpy()
    pair_index, same_class = _random_pair(run, index)
    meta = {**example.provenance, "inst_class": example.inst_class,
            "random_pairing": {"index": pair_index, "same_class": same_class,
                               **dataset[pair_index].provenance}}
    meta = json.loads(json.dumps(meta))  # as it reads back from the file
    _check_example_meta(folder, meta)
    _cached(folder / "input.wav", lambda: input_audio, rate)
    stems: dict[str, np.ndarray] = {
        "ground_truth": _cached(folder / "ground_truth.wav", lambda: target, rate)
    }

    def reconstruct() -> np.ndarray:
        with torch.inference_mode():
            wave = torch.from_numpy(target)[None, None]
            return codec.decode(codec.encode(wave))[0, 0, :length].numpy()

    stems["codec_reconstruction"] = _cached(folder / "codec_reconstruction.wav",
                                            reconstruct, rate)
    stems["random_pairing"] = _cached(
        folder / "random_pairing.wav",
        lambda: dataset[pair_index].target_audio[0].numpy()[:length], rate)
    return {"folder": folder, "input": input_audio[:length], "stems": stems, "meta": meta,
            "model_input": input_audio, "inst_class": example.inst_class, "frames": frames}


def _check_example_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Write the window's provenance, or refuse a folder an earlier run filled with another
    window (its audio would be scored against the wrong input)."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    elif json.loads(meta_path.read_text()) != meta:
        raise ConfigError(
            f"{folder} holds another window than this run selects (other corpus, split, "
            "seconds, seed or look-ahead?): its audio would be scored against the wrong "
            "input. Evaluate into a new --out."
        )


def _predict(run: _Run, system: _System, examples: list[dict[str, Any]],
             seeds: list[int]) -> list[np.ndarray]:
    """``system``'s stems for windows, each sampled with its own seed (a group at a time:
    :func:`~stemstream.stream.offline.generate_codes_many`)."""
    import torch

    from stemstream.model.sampling import SamplingConfig
    from stemstream.stream.offline import generate_codes_many

    codec = run.codec
    sampling = SamplingConfig(run.config.temperature, run.config.top_k, system.guidance)
    with torch.inference_mode():
        latents = [model_input(codec, system.model.config,
                               torch.from_numpy(example["model_input"])[None, None])
                   for example in examples]
        codes = generate_codes_many(
            system.model, latents, [example["inst_class"] for example in examples], sampling,
            [torch.Generator().manual_seed(seed) for seed in seeds],
            [example["frames"] for example in examples])
        return [codec.decode(c)[0, 0, : example["frames"] * codec.hop_length].numpy()
                for c, example in zip(codes, examples, strict=True)]


def _write_run_info(run: _Run, examples: int, seconds: float) -> None:
    config, tracker = run.config, None
    if "beat" in config.metrics:
        from stemstream.beats import resolve_tracker

        tracker = resolve_tracker(config.beat_tracker)
    write_text(run.out / "run.json", json.dumps({
        "config": {k: str(v) if isinstance(v, Path) else v
                   for k, v in config.__dict__.items()},
        "beat_tracker": tracker,  # what `auto` resolved to
        "examples": examples, "seconds": seconds,
        "systems": {s.name: s.describe() for s in run.systems},
        "codec": run.codec.codec_identity(),
    }, indent=1, default=str) + "\n")


def _cached(path: Path, make, rate: int) -> np.ndarray:
    """Compute, write and return ``path`` unless it exists (resume; ``make`` may be ``None``
    for a file known to exist). The samples returned are always those read back from the
    file, so a resumed run scores exactly what a fresh one did."""
    import soundfile as sf

    if not path.exists():
        audio.save(path, np.asarray(make(), dtype=np.float32), rate)
    samples, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    if file_rate != rate:
        raise ConfigError(f"{path} is at {file_rate} Hz, expected {rate}: delete it to redo it")
    return samples.mean(axis=1)


def _digest(samples: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()


def _score(examples, names, config: EvalConfig, rate: int, progress: bool) -> list[dict]:
    """Per-window metrics of every system. Each example folder keeps its scores
    (``scores.json``, keyed by the audio and the metric settings), so a resumed run or one
    that adds a system with ``--systems`` scores only what is new."""
    from tqdm import tqdm

    rows = []
    cocola = None
    if "cocola" in config.metrics:
        from stemstream.eval.cocola import load_cocola

        cocola = load_cocola(config.cocola)
    if "beat" in config.metrics:
        from stemstream.beats import beat_f_measure, track_beats
    settings = {"metrics": sorted(set(config.metrics) - {"fad"}),
                "cocola": str(config.cocola), "beat_tracker": config.beat_tracker}
    for n, example in enumerate(tqdm(examples, desc="score", disable=not progress)):
        cache_path = example["folder"] / "scores.json"
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
        input_digest = _digest(example["input"])
        mix_beats, changed = None, False
        for name in names:
            stem = example["stems"][name]
            key = {**settings, "input": input_digest, "stem": _digest(stem)}
            if cache.get(name, {}).get("key") == key:
                rows.append(cache[name]["row"])
                continue
            row: dict[str, Any] = {"example": n, "system": name,
                                   "track": example["meta"]["track"],
                                   "inst_class": example["meta"]["inst_class"]}
            if cocola is not None:
                from stemstream.eval.cocola import cocola_score

                for mode in COCOLA_MODES:
                    row[f"cocola_{mode}"] = cocola_score(cocola, stem, example["input"], rate,
                                                         mode=mode)
            if "beat" in config.metrics:
                if mix_beats is None:
                    mix_beats = track_beats(example["input"], rate, config.beat_tracker)
                row["beat_f"] = beat_f_measure(stem, example["input"], rate,
                                               tracker=config.beat_tracker,
                                               reference_beats=mix_beats)
            rows.append(row)
            cache[name] = {"key": key, "row": row}
            changed = True
        if changed:
            partial = cache_path.with_suffix(".json.partial")
            write_text(partial, json.dumps(cache, indent=1) + "\n")
            partial.replace(cache_path)
    return rows


def _aggregate(rows, names, config: EvalConfig, examples, rate, rng, progress):
    metrics: dict[str, dict[str, float]] = {name: {} for name in names}
    ci: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    keys = [k for k in (rows[0] if rows else {}) if k.startswith(("cocola_", "beat_"))]
    for name in names:
        for key in keys:
            values = np.array([r[key] for r in rows if r["system"] == name], dtype=np.float64)
            metrics[name][key] = float(np.nanmean(values))
            ci[name][key] = list(_bootstrap_ci(values, rng))
    if "fad" in config.metrics:
        from stemstream.eval.fad import fad, get_embedder

        embedder = get_embedder(config.fad_embedding,
                                config.cocola if config.fad_embedding == "cocola" else None)
        embeddings = {
            name: np.concatenate([embedder.embed(e["stems"][name], rate) for e in examples])
            for name in names
        }
        key = f"fad_{config.fad_embedding}"
        for name in names:
            metrics[name][key] = float(fad(embeddings[name], embeddings["ground_truth"]))
    return metrics, ci


def _write_tables(out: Path, rows, metrics, ci, names) -> None:
    write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    write_text(out / "metrics_ci.json", json.dumps(ci, indent=1) + "\n")
    if rows:
        with open_atomic(out / "per_example.csv", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    keys = sorted({k for m in metrics.values() for k in m})
    with open_atomic(out / "summary.csv", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["system", *keys])
        for name in names:
            writer.writerow([name, *(metrics[name].get(k, float("nan")) for k in keys)])
    lines = ["| system | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in names:
        cells = []
        for key in keys:
            value = metrics[name].get(key, float("nan"))
            low_high = ci[name].get(key)
            cells.append(f"{value:.3f}" + (f" [{low_high[0]:.3f}, {low_high[1]:.3f}]"
                                           if low_high and np.isfinite(low_high[0]) else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    write_text(out / "summary.md", "\n".join(lines) + "\n")
