"""`stemstream <command>`: a thin click layer over library functions.

Imports of heavy modules happen inside commands so `stemstream --help` stays instant. Library
errors (:class:`~stemstream.errors.StemstreamError`) become one line on stderr and exit code 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from stemstream.errors import StemstreamError


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
@click.option("--progress/--no-progress", default=True, show_default=True)
def data_synth(out_dir, tracks, seed, sources, soundfont, sample_rate, seconds, jobs, progress):
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
    stats = synthesize_corpus(out_dir, config, jobs=jobs, progress=progress)
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


@data.command("dump")
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option(
    "--codec",
    "codec_name",
    required=True,
    help="default (shipped), mock, a codec .safetensors, a training checkpoint or a DAC .pth.",
)
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Dump directory."
)
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
    from stemstream.codec.registry import get_codec
    from stemstream.data.dump import dump_corpus
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
def codec_encode(audio_path, out, codec_spec, num_codebooks):
    """Encode an audio file (any rate/channels) to codes."""
    from stemstream.codec.tokens import encode_file

    result = encode_file(audio_path, out, codec_spec, num_codebooks)
    click.echo(
        f"wrote {out}: {result.num_codebooks} codebooks x {result.frames} frames "
        f"({result.seconds:.2f} s at {result.frame_rate:g} Hz)"
    )


@codec.command("decode")
@click.argument("codes_path", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True)
@click.option("--codec", "codec_spec", default="default", show_default=True, help=_CODEC_HELP)
def codec_decode(codes_path, out, codec_spec):
    """Decode a codes .npz (from `codec encode`) to audio."""
    from stemstream.codec.tokens import decode_file

    seconds = decode_file(codes_path, out, codec_spec)
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


@cli.command("generate")
@click.option("--checkpoint", "checkpoint_path", type=click.Path(path_type=Path), required=True,
              help="A model checkpoint (training or exported) of any family.")
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True,
              help="The input mix (any format, rate and channel count).")
@click.option("--instrument", required=True, help="Class to play, e.g. Bass, Piano, Drums.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True)
@click.option("--mix", "mix_out", type=click.Path(path_type=Path), default=None,
              help="Also write input + stem.")
@click.option("--codec", "codec_spec", default=None, help=_CODEC_HELP)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=1.0, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def generate(checkpoint_path, input_path, instrument, out, mix_out, codec_spec, temperature,
             top_k, seed):
    """Generate an accompaniment stem for a whole file (streaming families run their
    streaming loop over it)."""
    from stemstream.stream.offline import generate_file

    result = generate_file(checkpoint_path, input_path, instrument, out, codec_spec,
                           temperature, top_k, seed, mix_out)
    click.echo(f"wrote {result.stem_path} ({result.seconds:.2f} s of {result.instrument}, "
               f"{result.family} model)" + (f" and {result.mix_path}" if result.mix_path else ""))


@cli.command("demo")
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True
)
@click.option("--tracks", type=click.IntRange(min=1), default=6, show_default=True)
def demo(out_dir, tracks):
    """The README's main job. Until the streaming model ships: synthesise a small corpus,
    print its statistics and the A.1 window report."""
    from stemstream.data.synth import SynthConfig, synthesize_corpus
    from stemstream.data.windows import WindowConfig, window_report

    corpus = out_dir / "corpus"
    stats = synthesize_corpus(corpus, SynthConfig(num_tracks=tracks, seed=0), progress=True)
    click.echo(stats.format())
    click.echo(window_report(corpus, WindowConfig(), seed=0, progress=False).format())
    click.echo(f"corpus written to {corpus}")


def main() -> None:
    cli(prog_name="stemstream")


if __name__ == "__main__":
    sys.exit(main())
