"""`stemstream <command>`: a thin click layer over library functions.

Imports of heavy modules happen inside commands so `stemstream --help` stays instant. Library
errors (:class:`~stemstream.errors.StemstreamError`) become one line on stderr and exit code 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from stemstream.config import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from stemstream.errors import ConfigError, StemstreamError


class _Group(click.Group):
    """A group that turns StemstreamError into one clear line and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StemstreamError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="stemstream")
def cli(verbose: int) -> None:
    """stemstream: streaming music accompaniment."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)  # UserWarnings become one log line, not a source dump


@cli.group(cls=_Group)
def data() -> None:
    """Synthesise, inspect and window multitrack corpora (Slakh2100 layout)."""


@data.command("synth")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Corpus directory to create (Slakh2100 layout).",
)
@click.option(
    "--tracks",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Number of tracks over all splits.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--sources",
    default="procedural,chorales",
    show_default=True,
    help="Comma-separated MIDI sources: procedural, chorales.",
)
@click.option(
    "--soundfont",
    type=click.Path(path_type=Path),
    default=None,
    help="General-MIDI .sf2 (default: FluidR3_GM from fluid-soundfont-gm, "
    "else pretty_midi's TimGM6mb).",
)
@click.option("--sample-rate", type=click.IntRange(min=8000), default=16000, show_default=True)
@click.option(
    "--seconds",
    type=click.FloatRange(min=5.0),
    default=40.0,
    show_default=True,
    help="Target length of procedural songs (chorales keep their own length).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Parallel render processes (default: CPU count).",
)
@click.option(
    "--split",
    "splits",
    type=click.Choice(["train", "validation", "test"]),
    multiple=True,
    help="Render only the planned tracks of this split (repeatable; default: all). The plan "
    "is the whole corpus's, so held-out splits can be rendered first.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def data_synth(out_dir, tracks, seed, sources, soundfont, sample_rate, seconds, jobs, splits,
               progress):
    """Render a synthetic multitrack corpus with FluidSynth."""
    from stemstream.data.synth import SynthConfig, synthesize_corpus

    config = SynthConfig(
        num_tracks=tracks,
        seed=seed,
        sources=tuple(s.strip() for s in sources.split(",") if s.strip()),
        soundfont=soundfont,
        sample_rate=sample_rate,
        song_seconds=seconds,
    )
    stats = synthesize_corpus(out_dir, config, jobs=jobs, progress=progress,
                              splits=splits or None)
    click.echo(stats.format())


@data.command("stats")
@click.argument("corpus", type=click.Path(path_type=Path))
def data_stats(corpus):
    """Print per-split track counts, hours and instrument-class histogram of a corpus."""
    from stemstream.data.synth import corpus_stats

    click.echo(corpus_stats(corpus).format())


@data.command("windows")
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Window length.",
)
@click.option(
    "--tf",
    "future_seconds",
    type=float,
    default=0.0,
    show_default=True,
    help="Future visibility in seconds (t_f > 0 needs extra real input audio).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--split", "splits", multiple=True, help="Only these splits (repeatable).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def data_windows(corpus, seconds, future_seconds, seed, splits, progress):
    """Run appendix-A.1 pair/window selection; print counts, classes and rejections."""
    from stemstream.data.windows import WindowConfig, window_report

    config = WindowConfig(window_seconds=seconds, future_seconds=future_seconds)
    report = window_report(corpus, config, seed=seed, splits=splits or None, progress=progress)
    click.echo(report.format())


def _dump_options(command):
    """The corpus, codec and output folder every dump command takes."""
    for option in reversed([
        click.argument("corpus", type=click.Path(path_type=Path)),
        click.option("--codec", "codec_name", required=True,
                     help="default (shipped), mock, a codec .safetensors, a training "
                          "checkpoint or a DAC .pth."),
        click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
                     help="Dump directory."),
    ]):
        command = option(command)
    return command


@data.command("dump")
@_dump_options
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Output window length.",
)
@click.option(
    "--tf",
    "future_seconds",
    type=float,
    default=0.0,
    show_default=True,
    help="Future visibility in seconds (t_f > 0 dumps that much extra real input audio).",
)
@click.option("--windows-per-track", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--split", "splits", multiple=True, help="Only these splits (repeatable).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--overwrite/--no-overwrite",
    default=False,
    show_default=True,
    help="Redo existing splits; replace a dump made with another codec or config.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def data_dump(
    corpus,
    codec_name,
    out_dir,
    seconds,
    future_seconds,
    windows_per_track,
    splits,
    batch_size,
    seed,
    overwrite,
    progress,
):
    """Encode A.1 windows of a corpus with a codec into a token dump (codes, provenance,
    audio of validation/test windows)."""
    from stemstream.codec.dump import dump_corpus
    from stemstream.codec.registry import get_codec
    from stemstream.data.windows import WindowConfig

    config = WindowConfig(window_seconds=seconds, future_seconds=future_seconds)
    summary = dump_corpus(
        corpus,
        get_codec(codec_name),
        out_dir,
        config,
        splits=splits or None,
        windows_per_track=windows_per_track,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        overwrite=overwrite,
    )
    click.echo(summary.format())


@data.command("dump-tracks")
@_dump_options
@click.option(
    "--targets-per-track",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Target stems encoded per track (0 = every eligible stem).",
)
@click.option("--split", "splits", multiple=True, help="Only these splits (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def data_dump_tracks(corpus, codec_name, out_dir, targets_per_track, splits, seed, progress):
    """Encode whole tracks, one row per (track, target stem), for training on windows drawn
    at random at every step (rerun to resume: finished splits are kept)."""
    from stemstream.codec.registry import get_codec
    from stemstream.codec.track_dump import dump_tracks

    summary = dump_tracks(corpus, get_codec(codec_name), out_dir, splits=splits or None,
                          targets_per_track=targets_per_track, seed=seed, progress=progress)
    click.echo(summary.format())


@data.command("dump-features")
@click.argument("dump_dir", type=click.Path(path_type=Path))
@click.option("--corpus", type=click.Path(path_type=Path), default=None,
              help="The corpus the dump was made from (default: the one its meta.json names).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def data_dump_features(dump_dir, corpus, progress):
    """Add the musical input features (onset, loudness, chroma, beat) to a track dump made
    without them (rerun to resume: finished splits are kept)."""
    from stemstream.codec.track_dump import add_features

    done = add_features(dump_dir, corpus, progress=progress)
    if not done:
        click.echo(f"{dump_dir}: every split already has its features")
    for split, rows in done.items():
        click.echo(f"{split}: features of {rows} rows written")


class _GuidanceType(click.ParamType):
    """``W`` or one ``W`` per codebook, comma-separated (``6,2,2,2``)."""

    name = "W[,W...]"

    def convert(self, value, param, ctx):
        from stemstream.guidance import parse_guidance

        if not isinstance(value, str):
            return value
        try:
            return parse_guidance(value)
        except ConfigError as err:
            self.fail(str(err), param, ctx)


def _guidance_option():
    return click.option(
        "--guidance", type=_GuidanceType(), default=None,
        help="Input guidance W (streaming models): sample from u + W (c - u), the logits "
             "with (c) and without (u) the input; 1 = plain, >1 follows the input more, "
             "at twice the model's work. One W per codebook, comma-separated (6,2,2,2), "
             "guides each codebook by its own [default: the model's own, stored at export; "
             "1 when it has none].")


def _training_options(example_config: str):
    """The options every training command shares (config, overrides, resumable limits)."""

    def decorate(command):
        options = [
            click.option("--config", "config_path", type=click.Path(path_type=Path),
                         required=True, help=f"YAML, e.g. {example_config}."),
            click.argument("overrides", nargs=-1),
            click.option("--stop-after", type=click.IntRange(min=1), default=None,
                         help="Train at most this many steps in this invocation (rerun to "
                              "resume)."),
            click.option("--time-limit", "time_limit", type=click.FloatRange(min=0.1),
                         default=None, help="Stop (and checkpoint) after this many minutes."),
            click.option("--progress/--no-progress", default=True, show_default=True),
        ]
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _run_training(config_class, trainer_class, config_path, overrides, stop_after, time_limit,
                  progress) -> None:
    from stemstream.config import load_config

    config = load_config(config_class, config_path, list(overrides))
    limit = None if time_limit is None else 60 * time_limit
    metrics = trainer_class(config).run(progress=progress, stop_after=stop_after,
                                        time_limit_s=limit)
    for key, value in sorted(metrics.items()):
        click.echo(f"{key:<28}{value:.4f}")


@cli.group(cls=_Group)
def codec() -> None:
    """Train, run and evaluate audio codecs (the token layer under every model)."""


_CODEC_HELP = "default (shipped), mock, a codec .safetensors, a training checkpoint or a DAC .pth"


def _route_option(default: str | None):
    """``--route``: how the model's decode step runs (stemstream.model.routes); ``None``:
    eager, or onnx with int8 weights."""
    return click.option(
        "--route", type=click.Choice(["auto", "eager", "compiled", "onnx"]), default=default,
        show_default=default or "eager; onnx with --weights int8",
        help="How the decode step and the codec run: onnx (ONNX Runtime; exported once per "
             "model in about a minute, then cached), compiled (AOTInductor; needs a C++ "
             "compiler), eager (PyTorch op by op), or auto (onnx, else eager).")


@codec.command("train", context_settings={"ignore_unknown_options": False})
@_training_options("configs/codec/cpu16k.yaml")
def codec_train(config_path, overrides, stop_after, time_limit, progress):
    """Train a codec; rerunning the same command resumes from the newest checkpoint.

    OVERRIDES are dotted key=value pairs, e.g. `steps=500 crops.max_tracks=40`.
    """
    from stemstream.codec.train import CodecTrainConfig, CodecTrainer

    _run_training(CodecTrainConfig, CodecTrainer, config_path, overrides, stop_after,
                  time_limit, progress)


@codec.command("export")
@click.argument("checkpoint_path", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True)
def codec_export(checkpoint_path, out):
    """Write the codec of a training checkpoint as a standalone .safetensors codec."""
    from stemstream.codec.registry import export_training_checkpoint

    click.echo(f"wrote {export_training_checkpoint(checkpoint_path, out)}")


@codec.command("encode")
@click.argument("audio_path", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output .npz with codes [K, T] and the codec identity.",
)
@click.option("--codec", "codec_spec", default="default", show_default=True, help=_CODEC_HELP)
@click.option("--num-codebooks", type=click.IntRange(min=1), default=None)
@click.option("--progress/--no-progress", default=True, show_default=True)
def codec_encode(audio_path, out, codec_spec, num_codebooks, progress):
    """Encode an audio file (any rate/channels) to codes."""
    from stemstream.codec.tokens import encode_file

    result = encode_file(audio_path, out, codec_spec, num_codebooks, progress=progress)
    click.echo(
        f"wrote {out}: {result.num_codebooks} codebooks x {result.frames} frames "
        f"({result.seconds:.2f} s at {result.frame_rate:g} Hz)"
    )


@codec.command("decode")
@click.argument("codes_path", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True)
@click.option("--codec", "codec_spec", default="default", show_default=True, help=_CODEC_HELP)
@click.option("--progress/--no-progress", default=True, show_default=True)
def codec_decode(codes_path, out, codec_spec, progress):
    """Decode a codes .npz (from `codec encode`) to audio."""
    from stemstream.codec.tokens import decode_file

    seconds = decode_file(codes_path, out, codec_spec, progress=progress)
    click.echo(f"wrote {out} ({seconds:.2f} s)")


@codec.command("eval")
@click.option("--codec", "codec_spec", default="default", show_default=True, help=_CODEC_HELP)
@click.option(
    "--corpus", type=click.Path(path_type=Path), default=Path("corpora/synth20h"), show_default=True
)
@click.option("--split", default="test", show_default=True)
@click.option("--tracks", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=1.0), default=8.0, show_default=True)
@click.option(
    "--codebooks",
    default="4,8",
    show_default=True,
    help="Comma-separated codebook counts to evaluate.",
)
@click.option("--baselines/--no-baselines", default=True, show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("out/codec-eval"),
    show_default=True,
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def codec_eval(codec_spec, corpus, split, tracks, seconds, codebooks, baselines, out_dir, progress):
    """Pitch/rhythm/timbre metrics of a codec vs baselines; writes JSON, markdown and a PNG."""
    from stemstream.codec import evaluate
    from stemstream.codec.registry import get_codec

    model = get_codec(codec_spec)
    ks = sorted({min(int(k), model.num_codebooks) for k in codebooks.split(",") if k.strip()})
    clips = evaluate.collect_clips(corpus, split, model.sample_rate, tracks, seconds)
    if not clips:
        raise click.UsageError(f"no clips of {seconds} s found in {corpus} split {split}")
    report = evaluate.evaluate_codec(model, clips, ks, baselines=baselines, progress=progress)
    evaluate.write_report(report, out_dir)
    png = evaluate.spectrogram_figure(model, clips, out_dir / "spectrograms.png", max(ks))
    click.echo(report.markdown())
    click.echo(f"wrote {out_dir}/codec_eval.json, codec_eval.md and {png.name}")


@cli.command("train", context_settings={"ignore_unknown_options": False})
@_training_options("configs/model/cpu_k1_tf0.yaml")
def train(config_path, overrides, stop_after, time_limit, progress):
    """Train a model on a token dump; rerunning the same command resumes from the newest
    checkpoint. Under `torchrun` it trains with DistributedDataParallel.

    OVERRIDES are dotted key=value pairs, e.g. `steps=500 model.chunk_frames=4`.
    """
    from stemstream.train import ModelTrainConfig, ModelTrainer

    _run_training(ModelTrainConfig, ModelTrainer, config_path, overrides, stop_after,
                  time_limit, progress)


@cli.command("export")
@click.argument("checkpoint_path", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="Store the weights in this type (float16: half the file; loading casts "
                   "back to float32). Also accepts an exported checkpoint.")
@click.option("--guidance", type=_GuidanceType(), default=None,
              help="Store the input guidance the model is meant to be sampled with, one W "
                   "or one per codebook (streaming models; generate, accompany, demo, live, "
                   "serve and eval use it unless told otherwise). Also accepts an exported "
                   "checkpoint.")
def export_model(checkpoint_path, out, dtype, guidance):
    """Write the model of a training checkpoint as an inference checkpoint (no optimizer)."""
    from stemstream.model.checkpoints import export_checkpoint

    click.echo(f"wrote {export_checkpoint(checkpoint_path, out, dtype, guidance)}")


def _model_option(help_text: str, default: str | None = None):
    """``--model`` (the name every command uses) with ``--checkpoint``, the older spelling,
    as a hidden alias; the command receives ``model``."""

    def decorate(command):
        command = click.option("--checkpoint", "checkpoint_alias", default=None, hidden=True)(
            command)
        return click.option("--model", default=default, show_default=default is not None,
                            help=help_text)(command)

    return decorate


def _chosen_model(model: str | None, alias: str | None, required: bool = True) -> str | None:
    if model is not None and alias is not None and model != alias:
        raise click.UsageError("give --model or --checkpoint (its older name), not both")
    chosen = model if model is not None else alias
    if chosen is None and required:
        raise click.UsageError("Missing option '--model'.")
    return chosen


@cli.command("generate")
@_model_option("default (the shipped file model), default-live, or a model checkpoint "
               "(training or exported) of any family [default: default].")
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True,
              help="The input mix (any format, rate and channel count).")
@click.option("--instrument", required=True, help="Class to play, e.g. Bass, Piano, Drums.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True)
@click.option("--mix", "mix_out", type=click.Path(path_type=Path), default=None,
              help="Also write the appendix-A.7 mix of input and stem.")
@click.option("--mix-channels", type=click.Choice(["input", "mono"]), default="input",
              show_default=True,
              help="Channels of the mix: the input's layout (the stem in the centre) or mono.")
@click.option("--codec", "codec_spec", default=None, help=_CODEC_HELP)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=DEFAULT_TEMPERATURE,
              show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=DEFAULT_TOP_K, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tf", "tf_seconds", type=float, default=None,
              help="Streaming family: run at this future visibility (seconds) instead of the "
                   "trained one (warns).")
@click.option("--chunk", "chunk_frames", type=int, default=None,
              help="Streaming family: run with this chunk size k instead of the trained one.")
@click.option("--sample-rate", type=click.IntRange(min=8000, max=384000), default=None,
              help="Rate of the stem and mix files [default: the input's].")
@_guidance_option()
@click.option("--progress/--no-progress", default=True, show_default=True)
def generate(model, checkpoint_alias, input_path, instrument, out, mix_out, mix_channels,
             codec_spec, temperature, top_k, seed, tf_seconds, chunk_frames, sample_rate,
             guidance, progress):
    """Generate an accompaniment stem for a whole file (streaming families run their
    streaming loop over it)."""
    from stemstream.stream.offline import generate_file

    chosen = _chosen_model(model, checkpoint_alias, required=False) or "default"
    result = generate_file(chosen, input_path, instrument, out,
                           codec_spec, temperature, top_k, seed, mix_out,
                           tf_seconds=tf_seconds, chunk_frames=chunk_frames,
                           progress=progress, sample_rate=sample_rate,
                           mix_channels=mix_channels, guidance=guidance)
    click.echo(f"wrote {result.stem_path} ({result.seconds:.2f} s of {result.instrument}, "
               f"{result.family} model)" + (f" and {result.mix_path}" if result.mix_path else ""))


@cli.command("instruments")
def instruments():
    """The instrument classes a model can play (`--instrument`), with their aliases."""
    from stemstream.data.instruments import NEVER_TARGET, NUM_CLASSES, aliases_of, class_name

    for class_id in range(NUM_CLASSES):
        aliases = aliases_of(class_id)
        note = " (never a target: no model is trained to play it)" if class_id in NEVER_TARGET \
            else ""
        click.echo(f"{class_id:>2}  {class_name(class_id)}"
                   + (f"  (also: {', '.join(aliases)})" if aliases else "") + note)


@cli.command("demo")
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True
)
@click.option("--instrument", default="Bass", show_default=True)
@click.option("--model", default="default", show_default=True)
@click.option("--corpus/--no-corpus", default=False, show_default=True,
              help="Also synthesise a 6-track corpus and print its statistics and A.1 report.")
@_route_option("auto")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Torch threads (the engine is one worker; a frame is too small to split).")
def demo(out_dir, instrument, model, corpus, route, threads):
    """The README's main job: the shipped model accompanies the bundled example (a band
    without its bass) through the real-time engine; writes the stem, the A.7 mix, the latency
    report and its timeline plot."""
    import torch

    from stemstream.stream.accompany import accompany_file

    torch.set_num_threads(threads)

    example = Path(__file__).resolve().parent / "assets" / "examples" / "band_without_bass.flac"
    result = accompany_file(
        example, instrument, out_dir / f"{instrument.lower()}.wav", model=model,
        mix_out=out_dir / "mix.wav", report_out=out_dir / "latency.json",
        plot_out=out_dir / "latency.png", progress=True, route=route,
    )
    click.echo(result.summary())
    click.echo(f"routes: {result.report['model']['route']}")
    from stemstream.stream.picture import picture_of_files

    picture = out_dir / "picture.png"
    beats = picture_of_files(example, result.stem_path, picture,
                             title=f"{result.instrument} for {example.name}")
    click.echo(f"beats: input {beats['input_bpm']:.0f} BPM, accompaniment "
               f"{beats['stem_bpm']:.0f} BPM, beat F {beats['beat_f']:.2f}")
    for path in (result.stem_path, result.mix_path, result.report_path, result.plot_path,
                 picture):
        click.echo(f"wrote {path}")
    if corpus:
        from stemstream.data.synth import SynthConfig, synthesize_corpus
        from stemstream.data.windows import WindowConfig, window_report

        root = out_dir / "corpus"
        stats = synthesize_corpus(root, SynthConfig(num_tracks=6, seed=0), progress=True)
        click.echo(stats.format())
        click.echo(window_report(root, WindowConfig(), seed=0, progress=False).format())
        click.echo(f"corpus written to {root}")


# --- accompany
@cli.command("accompany")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--instrument", required=True, help="Class to play, e.g. Bass, Piano, Drums.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="The stem to write (mono, at INPUT's rate unless --sample-rate, as long as "
                   "INPUT).")
@click.option("--model", default="default", show_default=True,
              help="default (t_f = +0.1 s, for files), default-live (t_f < 0), default-v4 / "
                   "default-v3 / default-v2 / default-v1 / default-live-v2 / default-live-v1 "
                   "(earlier defaults), random-cpu, "
                   "random-tiny, "
                   "random-tiny-mock "
                   "or a streaming model checkpoint.")
@click.option("--codec", "codec_spec", default=None, help=_CODEC_HELP)
@click.option("--tf", "tf_seconds", type=float, default=None,
              help="Future visibility t_f in seconds (negative: play ahead); default: the "
                   "model's.")
@click.option("--chunk", "chunk_frames", type=click.IntRange(min=1), default=None,
              help="Chunk size k in frames; default: the model's.")
@click.option("--latency", type=click.FloatRange(min=0.0), default=0.2, show_default=True,
              help="Output delay L in seconds that deadlines are measured against.")
@click.option("--realtime/--no-realtime", default=False, show_default=True,
              help="Feed the file in real time on a wall clock (misses play silence) instead "
                   "of a virtual clock (deterministic stem, measured timings).")
@click.option("--mix", "mix_out", type=click.Path(path_type=Path), default=None,
              help="Also write the appendix-A.7 mix of input and stem.")
@click.option("--mix-channels", type=click.Choice(["input", "mono"]), default="input",
              show_default=True,
              help="Channels of the mix: the input's layout (the stem in the centre) or mono.")
@click.option("--report", "report_out", type=click.Path(path_type=Path), default=None,
              help="Also write the latency report (JSON).")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path), default=None,
              help="Also write the slack timeline (PNG).")
@click.option("--picture", "picture_out", type=click.Path(path_type=Path), default=None,
              help="Also write spectrograms of input and stem with their beat grids (PNG) "
                   "and print both tempi and the beat F-measure.")
@click.option("--temperature", type=click.FloatRange(min=0.0), default=DEFAULT_TEMPERATURE,
              show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=DEFAULT_TOP_K, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--block-ms", type=click.FloatRange(min=0.1), default=20.0, show_default=True,
              help="Input block size pushed per step, in milliseconds.")
@click.option("--window", type=click.IntRange(min=1), default=None,
              help="KV-cache ring size in positions (default: the model's context).")
@click.option("--weights", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="Model weights: int8 = ONNX Runtime with int8 MatMul weights (the onnx "
                   "route; validation loss +0.0007 nats on the default).")
@click.option("--sample-rate", type=click.IntRange(min=8000, max=384000), default=None,
              help="Rate of the stem and mix files [default: the input's].")
@_guidance_option()
@click.option("--progress/--no-progress", default=True, show_default=True)
@_route_option(None)
def accompany(input_path, instrument, out, model, codec_spec, tf_seconds, chunk_frames, latency,
              realtime, mix_out, mix_channels, report_out, plot_out, picture_out, temperature,
              top_k, seed, block_ms, window, weights, sample_rate, guidance, progress, route):
    """Accompany an audio file through the real-time engine: write the stem (and optionally
    the mix, a latency report and its plot, a picture) and print RTF and deadline misses."""
    from stemstream.outputs import check_outputs
    from stemstream.stream.accompany import accompany_file

    check_outputs([input_path], audio={"-o": out, "--mix": mix_out},
                  json={"--report": report_out}, plots={"--plot": plot_out,
                                                         "--picture": picture_out})

    result = accompany_file(
        input_path, instrument, out, model=model, codec=codec_spec, tf_seconds=tf_seconds,
        chunk_frames=chunk_frames, latency=latency, realtime=realtime, mix_out=mix_out,
        report_out=report_out, plot_out=plot_out, block_seconds=block_ms / 1000,
        temperature=temperature, top_k=top_k, seed=seed, window=window, progress=progress,
        weights=weights, sample_rate=sample_rate, route=route, mix_channels=mix_channels,
        guidance=guidance,
    )
    click.echo(result.summary())
    for path in (result.mix_path, result.report_path, result.plot_path):
        if path is not None:
            click.echo(f"wrote {path}")
    if picture_out is not None:
        from stemstream.stream.picture import picture_of_files

        beats = picture_of_files(input_path, result.stem_path, picture_out,
                                 title=f"{result.instrument} for {Path(input_path).name}")
        click.echo(f"beats: input {beats['input_bpm']:.0f} BPM, accompaniment "
                   f"{beats['stem_bpm']:.0f} BPM, beat F {beats['beat_f']:.2f}")
        click.echo(f"wrote {picture_out}")


# --- bench: `stemstream bench` (stemstream.stream.bench)
@cli.command("bench")
@click.option("--model", default="default", show_default=True,
              help="default (t_f = +0.1 s, for files), default-live (t_f < 0), default-v4 / "
                   "default-v3 / default-v2 / default-v1 / default-live-v2 / default-live-v1 "
                   "(earlier defaults), random-cpu, "
                   "random-tiny, "
                   "random-tiny-mock "
                   "or a streaming checkpoint.")
@click.option("--codec", "codec_spec", default=None, help=_CODEC_HELP)
@click.option("--seconds", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Test audio streamed in the model's own (t_f, k).")
@click.option("--grid-seconds", type=click.FloatRange(min=0.1), default=4.0, show_default=True,
              help="Test audio per (t_f, k) of the feasibility grid.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--grid/--no-grid", default=True, show_default=True,
              help="Measure the (t_f, k, L) feasibility grid.")
@click.option("--weights", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="Model weights: int8 = ONNX Runtime with int8 MatMul weights (the onnx "
                   "route; validation loss +0.0007 nats on the default).")
@_route_option("auto")
def bench(model, codec_spec, seconds, grid_seconds, threads, seed, as_json, grid, weights, route):
    """Real-time factor, per-frame latency percentiles and which (t_f, k, L) are feasible for
    a streaming model on this machine (generated test audio, virtual clock)."""
    import json

    from stemstream.stream.bench import format_bench, run_bench

    result = run_bench(model=model, codec=codec_spec, seconds=seconds,
                       configs=None if grid else (), threads=threads, seed=seed,
                       grid_seconds=grid_seconds, weights=weights, route=route)
    click.echo(json.dumps(result) if as_json else format_bench(result))


# --- live
@cli.command("live")
@click.option("--instrument", default="Bass", show_default=True, help="Class to play.")
@click.option("--model", default="default", show_default=True,
              help="default (= the shipped live model, t_f < 0), default-live, random-cpu, "
                   "random-tiny or a streaming model checkpoint.")
@click.option("--codec", "codec_spec", default=None, help=_CODEC_HELP)
@click.option("--tf", "tf_seconds", type=float, default=None,
              help="Future visibility t_f in seconds; default: the model's.")
@click.option("--chunk", "chunk_frames", type=click.IntRange(min=1), default=None)
@click.option("--latency", type=click.FloatRange(min=0.0), default=None,
              help="Output delay L in seconds behind the input (plus device I/O latency); "
                   "default 0 (in time) for a model with t_f < 0, else 0.2.")
@click.option("--sample-rate", type=click.IntRange(min=8000), default=None,
              help="Device rate (default: the input device's).")
@click.option("--block-ms", type=click.FloatRange(min=1.0), default=10.0, show_default=True)
@click.option("--input-device", default=None, help="PortAudio input device (name or index).")
@click.option("--output-device", default=None, help="PortAudio output device.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=None,
              help="Stop after this many seconds (default: Ctrl-C).")
@click.option("--report", "report_out", type=click.Path(path_type=Path), default=None)
@click.option("--list-devices", is_flag=True, help="List sound devices and exit.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--weights", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="Model weights: int8 = ONNX Runtime with int8 MatMul weights (the onnx "
                   "route; validation loss +0.0007 nats on the default).")
@_route_option("auto")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Torch threads (the engine is one worker; a frame is too small to split).")
def live(instrument, model, codec_spec, tf_seconds, chunk_frames, latency, sample_rate,
         block_ms, input_device, output_device, duration, report_out, list_devices, seed,
         weights, route, threads):
    """Play along with a sound device in real time (needs `pip install 'stemstream[live]'`
    and PortAudio)."""
    import torch

    from stemstream.stream.live import list_devices as devices

    torch.set_num_threads(threads)
    from stemstream.stream.live import run_live

    if list_devices:
        click.echo(devices())
        return

    def device(value):
        return int(value) if value is not None and value.isdigit() else value

    report = run_live(
        model=model, instrument=instrument, codec=codec_spec, tf_seconds=tf_seconds,
        chunk_frames=chunk_frames, latency=latency, sample_rate=sample_rate, block_ms=block_ms,
        input_device=device(input_device), output_device=device(output_device),
        duration=duration, report_out=report_out, seed=seed, weights=weights, route=route,
    )
    dev = report["device"]
    click.echo(
        f"played {dev['played_samples'] / dev['sample_rate']:.1f} s | RTF {report['rtf'] or 0:.3f}"
        f" | missed {report['missed_chunks']}/{report['chunks']} chunks | underruns "
        f"{dev['underrun_samples'] / dev['sample_rate']:.2f} s | dropped input blocks "
        f"{dev['input_overflows']}"
    )


# --- serve
@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; beyond localhost a token is always required.")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8765, show_default=True)
@click.option("--model", default="default-live", show_default=True,
              help="default-live (t_f < 0: in time with a player at L = 0, the most sessions), "
                   "default (the file model), random-cpu, random-tiny or a streaming "
                   "checkpoint.")
@click.option("--codec", "codec_spec", default=None, help=_CODEC_HELP)
@click.option("--max-sessions", type=click.IntRange(min=1), default=4, show_default=True,
              help="Streams served at once; more are refused (close code 1013).")
@click.option("--token", default=None,
              help="Required as ?token= on /ws [default: none on localhost, a random one "
                   "printed at start elsewhere].")
@click.option("--latency", type=click.FloatRange(min=0.0, max=10.0), default=0.2,
              show_default=True, help="Default output delay L in seconds (a client may ask "
                                      "for another).")
@click.option("--weights", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True)
@click.option("--window", type=click.IntRange(min=16), default=None,
              help="Every session's KV ring in positions [default: 512, ~10 s]; a shorter "
                   "ring serves more sessions at once (docs/serve.md: what it costs).")
@click.option("--engines", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batched engines; more than one run in child processes, one per core "
                   "serves the most sessions (docs/serve.md).")
@_route_option("auto")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
def serve_command(host, port, model, codec_spec, max_sessions, token, latency, weights, window,
                  engines, route, threads):
    """Serve the accompanist over a WebSocket with a web page (microphone or file in,
    accompaniment out); protocol in docs/serve.md."""
    import torch

    from stemstream.serve.app import ServeConfig, resolve_token, serve
    from stemstream.stream.models import load_stream_model

    torch.set_num_threads(threads)
    token = resolve_token(host, token)
    loaded = load_stream_model(model, codec_spec, weights=weights, route=route)
    click.echo(f"model {loaded.source} ({loaded.describe_routes()})")
    query = f"?token={token}" if token else ""
    click.echo(f"open http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/"
               f"{query}")
    serve(loaded, ServeConfig(host=host, port=port, max_sessions=max_sessions, token=token,
                              latency=latency, window=window, engines=engines))


# --- eval
@cli.group("eval", cls=_Group)
def eval_group() -> None:
    """Evaluate accompaniment: metrics runs, figures, listening studies."""


def _int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    """``"16,8,4,4"`` -> ``(16, 8, 4, 4)``; a clear usage error otherwise."""
    if text is None:
        return None
    try:
        return tuple(int(item) for item in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}",
                                 param_hint=option) from None


@eval_group.command("run")
@_model_option("A model checkpoint (any family), or `default` (the shipped model); named "
               "`model` in the tables.")
@click.option("--systems", "system_specs", multiple=True, metavar="NAME=CKPT",
              help="More systems evaluated in the same run (repeatable); a streaming one "
                   "may end in ,guidance=W (sampled with input guidance W).")
@click.option("--corpus", type=click.Path(path_type=Path), required=True,
              help="Slakh-layout corpus (e.g. corpora/synth20h).")
@click.option("--split", default="test", show_default=True)
@click.option("--num-examples", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=1.0), default=10.0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--metrics", default="cocola,beat,fad", show_default=True,
              help="Comma-separated subset of cocola, beat, fad.")
@click.option("--cocola", "cocola_path", default=None,
              help="COCOLA checkpoint (default: the shipped one).")
@click.option("--fad-embedding", type=click.Choice(["cocola", "codec", "vggish"]),
              default="cocola", show_default=True)
@click.option("--beat-tracker", default="auto", show_default=True,
              help="auto, librosa, madmom or beat_this:CHECKPOINT.")
@click.option("--codec", "codec_spec", default=None, help=_CODEC_HELP)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=DEFAULT_TEMPERATURE,
              show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=DEFAULT_TOP_K, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--look-ahead", "look_ahead", type=click.FloatRange(min=0.0), default=1.0,
              show_default=True,
              help="Seconds of future input every window keeps (the largest t_f a system of "
                   "this run may have); fixed per run so that adding systems keeps the windows.")
@click.option("--stemgen-steps", default=None, metavar="N,N,N,N",
              help="StemGen iterations per RVQ level (default: the model's own, A.5's "
                   "128,64,32,32); fewer for a CPU budget.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Windows a k = 1 streaming model generates together (one batched forward "
                   "per position); the same --batch gives the same audio, resumed or not.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def eval_run(model, checkpoint_alias, system_specs, corpus, split, num_examples, seconds, out,
             metrics, cocola_path, fad_embedding, beat_tracker, codec_spec, temperature, top_k,
             seed, look_ahead, stemgen_steps, batch, progress):
    """Generate for N windows and score every system beside ground truth, codec
    reconstruction and random pairing (OUT/metrics.json, summary.md, per_example.csv)."""
    from stemstream.eval.run import EvalConfig, parse_systems, run_eval

    config = EvalConfig(
        corpus=corpus, out=out, split=split,
        systems=parse_systems(_chosen_model(model, checkpoint_alias, False), system_specs),
        num_examples=num_examples, seconds=seconds, seed=seed,
        metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()),
        cocola=cocola_path, fad_embedding=fad_embedding, beat_tracker=beat_tracker,
        temperature=temperature, top_k=top_k, codec=codec_spec, look_ahead_seconds=look_ahead,
        stemgen_steps=_int_list(stemgen_steps, "--stemgen-steps"), batch=batch,
    )
    result = run_eval(config, progress=progress)
    click.echo((out / "summary.md").read_text())
    click.echo(f"{result['examples']} windows in {result['seconds']:.0f} s -> {out}")


@eval_group.command("plot")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True)
def eval_plot(runs, out):
    """The paper's figures (metric vs t_f, one line per k) from eval runs, CSV beside each."""
    from stemstream.eval.plots import plot_runs

    for path in plot_runs(runs, out):
        click.echo(f"wrote {path}")


@eval_group.command("claims")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for claims.md / claims.json (default: the run).")
@click.option("--alpha", default=0.05, show_default=True)
def eval_claims(run, out, alpha):
    """The paper's findings as paired tests on one eval run: models vs random pairing,
    coherence vs t_f, larger k, t_f < 0 (bootstrap intervals, Wilcoxon, Bonferroni)."""
    from stemstream.eval.claims import write_claims

    md, _ = write_claims(run, out, alpha)
    click.echo(md.read_text())
    click.echo(f"wrote {md}")


@eval_group.command("compare")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("pairs", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Also write the table to this markdown file.")
def eval_compare(run, pairs, out):
    """Paired tests between any systems of one eval run: PAIRS as A:B (A - B per window,
    bootstrap interval, Wilcoxon p, uncorrected)."""
    from stemstream.eval.claims import compare, compare_markdown
    from stemstream.outputs import write_text

    parsed = []
    for pair in pairs:
        a, sep, b = pair.partition(":")
        if not (sep and a and b):
            raise click.BadParameter(f"{pair!r}: write a pair as A:B", param_hint="PAIRS")
        parsed.append((a, b))
    table = compare_markdown(compare(run, parsed))
    click.echo(table)
    if out is not None:
        write_text(out, table)
        click.echo(f"wrote {out}")


@eval_group.command("listening")
@click.argument("prefs", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/listening"),
              show_default=True)
@click.option("--alpha", type=click.FloatRange(min=0.0, max=1.0), default=0.05,
              show_default=True)
@click.option("--order", default=None, help="Comma-separated system order of the table.")
def eval_listening(prefs, out, alpha, order):
    """Listening-study statistics from pairwise preferences (appendix A.6 Table 1)."""
    from stemstream.eval.listening import write_study

    result = write_study(prefs, out, alpha, order.split(",") if order else None)
    click.echo(result.table_markdown())
    click.echo(f"wrote {out}/table.md, table.tex, win_rates.csv, preferences.png")


@eval_group.command("ab-page")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--pairs-per-example", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def eval_ab_page(run_dir, out, pairs_per_example, seed):
    """A blind A/B listening page (static HTML) from an eval run; answers export as the CSV
    `stemstream eval listening` reads."""
    from stemstream.eval.abpage import make_ab_page

    click.echo(f"wrote {make_ab_page(run_dir, out, pairs_per_example, seed=seed)}")


@cli.group(cls=_Group)
def experiment() -> None:
    """Experiment grids."""


@experiment.command("grid")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@click.option("--train/--no-train", default=True, show_default=True,
              help="Train missing models (else only evaluate exported ones).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def experiment_grid(config_path, train, progress):
    """Train (resuming) and evaluate a (t_f, k) grid plus baselines; draw the figures."""
    from stemstream.eval.grid import run_grid

    result = run_grid(config_path, progress=progress, train=train)
    for path in result["figures"]:
        click.echo(f"wrote {path}")


# --- cocola
@cli.group(cls=_Group)
def cocola() -> None:
    """Our COCOLA coherence model: train it, export it, score a stem against a mix."""


@cocola.command("train")
@_training_options("configs/cocola/synth.yaml")
def cocola_train(config_path, overrides, stop_after, time_limit, progress):
    """Contrastive training on a corpus (positives: disjoint submixes of one window);
    rerunning the same command resumes."""
    from stemstream.eval.cocola_train import CocolaTrainConfig, CocolaTrainer

    _run_training(CocolaTrainConfig, CocolaTrainer, config_path, overrides, stop_after,
                  time_limit, progress)


@cocola.command("export")
@click.argument("checkpoint_path", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True)
def cocola_export(checkpoint_path, out):
    """Write the model of a COCOLA training checkpoint (or of the official Lightning .ckpt,
    converted) as a standalone safetensors file."""
    from stemstream.eval.cocola import load_cocola, save_cocola

    click.echo(f"wrote {save_cocola(load_cocola(checkpoint_path), out)}")


@cocola.command("calibrate")
@click.argument("checkpoint_path", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True)
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              default=Path("configs/cocola/synth.yaml"), show_default=True,
              help="Training config whose (cached) training pairs calibrate the statistics.")
@click.option("--pairs", default=1024, show_default=True, help="Training pairs to average.")
def cocola_calibrate(checkpoint_path, out, config_path, pairs):
    """Give a cnn COCOLA model one set of batch-norm statistics per mode (harmonic,
    percussive, both), computed exactly on training pairs; the weights stay as they are."""
    from stemstream.config import load_config
    from stemstream.eval.cocola import load_cocola, save_cocola
    from stemstream.eval.cocola_train import (
        CocolaTrainConfig,
        cached_features,
        calibrate_norms,
        with_mode_norm,
    )

    config = load_config(CocolaTrainConfig, config_path)
    model = with_mode_norm(load_cocola(checkpoint_path))
    feats = cached_features(config, "train", config.train_pairs, config.seed, progress=True)
    calibrate_norms(model, feats, count=pairs)
    click.echo(f"wrote {save_cocola(model, out, {'calibrated_pairs': min(pairs, len(feats))})}")


@cocola.command("validate")
@click.option("--corpus", type=click.Path(path_type=Path), required=True)
@click.option("--split", default="test", show_default=True)
@click.option("--pairs", type=click.IntRange(min=2), default=200, show_default=True)
@click.option("--cocola", "cocola_path", default=None, help="Checkpoint (default: shipped).")
def cocola_validate(corpus, split, pairs, cocola_path):
    """Share of windows whose real partner outscores a random pairing, per mode."""
    from stemstream.eval.cocola import load_cocola
    from stemstream.eval.cocola_train import validate

    for mode, value in validate(load_cocola(cocola_path), corpus, split, pairs).items():
        click.echo(f"{mode:<11}{value:.3f}")


@cocola.command("score")
@click.argument("stem_path", type=click.Path(path_type=Path))
@click.argument("mix_path", type=click.Path(path_type=Path))
@click.option("--cocola", "cocola_path", default=None, help="Checkpoint (default: shipped).")
def cocola_score_command(stem_path, mix_path, cocola_path):
    """COCOLA scores (harmonic, percussive, both) of STEM against MIX."""
    from stemstream import audio
    from stemstream.eval.cocola import MODES, SAMPLE_RATE, cocola_score, load_cocola

    model = load_cocola(cocola_path)
    stem = audio.load(stem_path, sample_rate=SAMPLE_RATE).samples.reshape(-1)
    mix = audio.load(mix_path, sample_rate=SAMPLE_RATE).samples.reshape(-1)
    for mode in MODES:
        click.echo(f"{mode:<11}{cocola_score(model, stem, mix, SAMPLE_RATE, mode):.4f}")


def main() -> None:
    cli(prog_name="stemstream")


if __name__ == "__main__":
    sys.exit(main())
