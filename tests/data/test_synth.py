"""Synthetic corpus: determinism, layout, mix == sum(stems), onsets vs MIDI, tempo vs metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
import yaml
from click.testing import CliRunner

from stemstream.cli import cli
from stemstream.data.render import StemRenderer
from stemstream.data.synth import SynthConfig, plan_tracks, synthesize_corpus
from stemstream.errors import ConfigError, DependencyError

SR = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    config = SynthConfig(num_tracks=10, seed=7, song_seconds=16.0, chorale_fraction=0.2)
    synthesize_corpus(out, config, jobs=2, progress=False)
    return out


def _tracks(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.glob("*/Track*") if p.is_dir())


def _read(path: Path) -> np.ndarray:
    data, sr = sf.read(str(path), dtype="float32")
    assert sr == SR
    return data


def test_plan_is_deterministic_and_chorales_stay_in_one_split():
    config = SynthConfig(num_tracks=300, seed=1)
    assert plan_tracks(config) == plan_tracks(config)
    assert plan_tracks(config) != plan_tracks(SynthConfig(num_tracks=300, seed=2))
    splits_a = {p.source_index: p.split for p in plan_tracks(config) if p.source == "chorales"}
    other = plan_tracks(SynthConfig(num_tracks=300, seed=5, chorale_fraction=0.5))
    splits_b = {p.source_index: p.split for p in other if p.source == "chorales"}
    shared = splits_a.keys() & splits_b.keys()
    assert len(shared) > 10
    assert all(splits_a[i] == splits_b[i] for i in shared)
    chorale_ids = [p.source_index for p in other if p.source == "chorales"]
    assert len(chorale_ids) == len(set(chorale_ids)), "a chorale was used twice"


def test_slakh_layout_and_metadata(corpus):
    tracks = _tracks(corpus)
    assert len(tracks) == 10
    assert {t.parent.name for t in tracks} <= {"train", "validation", "test"}
    for track in tracks:
        meta = yaml.safe_load((track / "metadata.yaml").read_text())
        assert (track / "mix.flac").is_file() and (track / "all_src.mid").is_file()
        assert len(meta["stems"]) >= 4
        for sid, stem in meta["stems"].items():
            assert (track / "stems" / f"{sid}.flac").is_file()
            assert (track / "MIDI" / f"{sid}.mid").is_file()
            assert stem["audio_rendered"] is True
            assert stem["program_num"] == 128 if stem["is_drum"] else stem["program_num"] < 128
        info = meta["stemstream"]
        assert info["meter"] in {"4/4", "3/4", "6/8"}
        assert info["chords"] and info["chords"][0]["start"] == pytest.approx(0.0, abs=0.5)


def test_mix_is_sum_of_stems(corpus):
    for track in _tracks(corpus):
        mix = _read(track / "mix.flac")
        stems = [_read(p) for p in sorted((track / "stems").glob("*.flac"))]
        total = np.sum(stems, axis=0)
        assert total.shape == mix.shape
        # 24-bit FLAC quantises each file by <= 2**-24; a few stems add up.
        assert np.max(np.abs(total - mix)) < 1e-5
        assert np.max(np.abs(mix)) <= 0.9 + 1e-6
        assert np.sqrt(np.mean(mix**2)) > 1e-3, "silent mix"


def test_rendering_is_deterministic_and_a_split_renders_alone(corpus, tmp_path):
    """The held-out splits rendered alone are exactly those tracks of the full render."""
    config = SynthConfig(num_tracks=10, seed=7, song_seconds=16.0, chorale_fraction=0.2)
    stats = synthesize_corpus(tmp_path, config, jobs=1, progress=False,
                              splits=("validation", "test"))
    held_out = [t for t in _tracks(corpus) if t.parent.name != "train"]
    assert held_out and [t.relative_to(corpus) for t in held_out] == [
        t.relative_to(tmp_path) for t in _tracks(tmp_path)]
    assert stats.rendered_tracks == len(held_out)
    for track in held_out:
        twin = tmp_path / track.parent.name / track.name
        for stem in sorted((track / "stems").glob("*.flac")):
            np.testing.assert_array_equal(_read(stem), _read(twin / "stems" / stem.name))
    with pytest.raises(ConfigError, match="unknown split"):
        synthesize_corpus(tmp_path, config, splits=("dev",))


def _onset_f(reference: np.ndarray, estimated: np.ndarray, window: float = 0.05) -> float:
    import mir_eval

    return mir_eval.onset.f_measure(reference, estimated, window=window)[0]


def _distinct(times: np.ndarray, gap: float = 0.06) -> np.ndarray:
    times = np.sort(times)
    keep = np.concatenate([[True], np.diff(times) > gap]) if len(times) else times.astype(bool)
    return times[keep]


def test_stem_onsets_line_up_with_midi(corpus):
    import librosa

    scores = []
    for track in _tracks(corpus):
        meta = yaml.safe_load((track / "metadata.yaml").read_text())
        for sid, stem in meta["stems"].items():
            if not (stem["is_drum"] or stem["inst_class"] in ("Bass", "Piano", "Guitar")):
                continue
            midi = pretty_midi.PrettyMIDI(str(track / "MIDI" / f"{sid}.mid"))
            starts = _distinct(np.array([n.start for n in midi.instruments[0].notes]))
            wave = _read(track / "stems" / f"{sid}.flac")
            onsets = librosa.onset.onset_detect(
                y=wave, sr=SR, units="time", hop_length=160, backtrack=False
            )
            scores.append(_onset_f(starts, _distinct(onsets)))
    assert len(scores) >= 5
    assert np.median(scores) >= 0.7, scores


def test_tempo_matches_metadata_on_procedural_tracks(corpus):
    import librosa

    hits = total = 0
    for track in _tracks(corpus):
        info = yaml.safe_load((track / "metadata.yaml").read_text())["stemstream"]
        if info["source"] != "procedural":
            continue
        mix = _read(track / "mix.flac")
        tempo, _ = librosa.beat.beat_track(y=mix, sr=SR, start_bpm=120.0, units="time")
        est, ref = float(np.atleast_1d(tempo)[0]), info["tempo_bpm"]
        # 6/8 is felt in dotted quarters: 2/3 and 3/2 are the same pulse.
        ratios = (1.0, 2.0, 0.5) + ((2 / 3, 3 / 2, 1 / 3) if info["meter"] == "6/8" else ())
        total += 1
        hits += any(abs(est / (ref * r) - 1) <= 0.04 for r in ratios)
    assert total >= 5
    assert hits / total >= 0.8, f"tempo recovered on {hits}/{total} tracks"


def test_resume_skips_finished_and_redoes_partial(tmp_path):
    config = SynthConfig(num_tracks=3, seed=11, sources=("chorales",))
    first = synthesize_corpus(tmp_path, config, jobs=1, progress=False)
    assert first.rendered_tracks == 3
    victim = _tracks(tmp_path)[0]
    (victim / "metadata.yaml").unlink()  # as if killed before the rename
    again = synthesize_corpus(tmp_path, config, jobs=1, progress=False)
    assert again.rendered_tracks == 1
    assert sum(again.tracks.values()) == 3
    assert (victim / "metadata.yaml").is_file()


def test_renderer_silence_before_first_note_and_sound_after():
    renderer = StemRenderer(sample_rate=SR)
    inst = pretty_midi.Instrument(program=33)
    inst.notes.append(pretty_midi.Note(100, 40, 0.5, 1.0))
    wave = renderer.render(inst)
    # FluidSynth adds ~1e-8 of anti-denormal noise, hence not exactly zero.
    assert np.max(np.abs(wave[: int(0.49 * SR)])) < 1e-6
    assert np.sqrt(np.mean(wave[int(0.5 * SR) : int(0.9 * SR)] ** 2)) > 1e-3


def test_bad_config_and_missing_soundfont(tmp_path):
    with pytest.raises(ConfigError, match="sources"):
        SynthConfig(sources=("mp3s",))
    with pytest.raises(DependencyError, match="SoundFont not found"):
        StemRenderer(tmp_path / "nope.sf2")


def test_cli_synth_and_stats(tmp_path):
    runner = CliRunner()
    out = tmp_path / "c"
    result = runner.invoke(
        cli,
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--tracks",
            "2",
            "--sources",
            "chorales",
            "--jobs",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "tracks/min" in result.output
    bad = runner.invoke(cli, ["data", "synth", "--out", str(out), "--sources", "nope"])
    assert bad.exit_code == 1 and bad.output.startswith("error: sources")
