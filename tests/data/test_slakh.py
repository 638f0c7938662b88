"""Slakh2100 reader: layout, class mapping, metadata quirks, decoding and clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from slakh_fixture import SR, sine, stem_meta, write_fake_slakh, write_track

from stemstream.data.instruments import INSTRUMENT_CLASSES, PERCUSSIVE, UNKNOWN, VOCAL
from stemstream.data.slakh import SlakhCorpus
from stemstream.errors import CorpusError


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    return write_fake_slakh(tmp_path_factory.mktemp("slakh"))


@pytest.fixture()
def corpus(corpus_root) -> SlakhCorpus:
    return SlakhCorpus(corpus_root)


def _track(corpus: SlakhCorpus, split: str, name: str):
    (track,) = [t for t in corpus.tracks(split) if t.name == name]
    return track


def _cls(name: str) -> int:
    return INSTRUMENT_CLASSES.index(name)


def test_splits_and_sorted_tracks_ignore_partial_dirs(corpus):
    assert corpus.splits == ["train", "validation", "test", "extra"]
    names = [t.name for t in corpus.tracks("train")]
    assert names == ["Track00001", "Track00002", "Track00003", "Track00004", "Track00005"]
    assert all(t.split == "train" for t in corpus.tracks("train"))
    with pytest.raises(CorpusError, match="no split 'omitted'"):
        corpus.tracks("omitted")


def test_classes_programs_and_unrendered_stems(corpus):
    track = _track(corpus, "train", "Track00001")
    stems = {s.stem_id: s for s in track.stems}
    assert list(stems) == ["S00", "S01", "S03", "S04"], "audio_rendered: false must be skipped"
    assert stems["S00"].inst_class == _cls("Guitar") and stems["S00"].program == 30
    assert stems["S01"].inst_class == PERCUSSIVE and stems["S01"].is_drum
    assert stems["S01"].program == 128
    assert stems["S03"].inst_class == _cls("Ensemble")  # "Strings (continued)" = GM 48-55
    assert stems["S04"].inst_class == _cls("Chromatic Percussion")
    assert stems["S00"].audio_path == track.path / "stems" / "S00.flac"
    assert stems["S00"].midi_path == track.path / "MIDI" / "S00.mid"
    assert track.mix_path == track.path / "mix.flac"
    assert track.info == {}


def test_vocal_unknown_and_missing_files_are_handled(corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="stemstream.data.slakh"):
        fresh = SlakhCorpus(corpus.root)
        track = _track(fresh, "train", "Track00002")
        test_track = _track(fresh, "test", "Track00007")
    classes = {s.stem_id: s.inst_class for s in track.stems}
    assert classes == {"S00": _cls("Bass"), "S01": VOCAL, "S02": UNKNOWN,
                       "S03": _cls("Sound Effects")}
    assert "Theremin" in caplog.text
    assert [s.stem_id for s in test_track.stems] == ["S00", "S02"]
    assert "S01" in caplog.text and "Track00007" in caplog.text
    assert track.mix_path is None


def test_load_stems_pads_and_resamples(corpus):
    track = _track(corpus, "train", "Track00001")
    stems = track.load_stems(SR)
    assert set(stems) == {"S00", "S01", "S03", "S04"}
    assert {w.shape for w in stems.values()} == {(3 * SR,)}
    assert all(w.dtype == np.float32 for w in stems.values())
    short = stems["S03"]
    assert np.all(short[int(2.5 * SR):] == 0.0) and np.abs(short[: int(2.4 * SR)]).max() > 0.25
    np.testing.assert_allclose(stems["S00"], sine(440.0), atol=1e-5)
    resampled = _track(corpus, "validation", "Track00006").load_stems(SR)
    assert {w.shape for w in resampled.values()} == {(3 * SR,)}
    np.testing.assert_allclose(resampled["S00"][SR:2 * SR], sine(262.0)[SR:2 * SR], atol=2e-3)


def test_mix_is_sum_of_stems_when_mix_flac_is_missing(corpus):
    track = _track(corpus, "train", "Track00002")
    stems = track.load_stems(SR)
    np.testing.assert_allclose(track.load_mix(SR), sum(stems.values()), atol=1e-6)
    with_mix = _track(corpus, "train", "Track00001")
    np.testing.assert_allclose(with_mix.load_mix(SR), sum(with_mix.load_stems(SR).values()),
                               atol=1e-4)


def test_stemstream_info_is_exposed(corpus):
    track = _track(corpus, "validation", "Track00006")
    assert track.info["tempo_bpm"] == 120.0
    assert track.info["chords"] == [[0.0, "C"], [1.5, "G"]]
    assert hash(track) == hash(track)  # the info dict does not make tracks unhashable


@pytest.mark.parametrize("text, what", [
    ("stems: [unclosed\n", "cannot read metadata"),
    ("- just\n- a list\n", "not a mapping"),
    ("UUID: x\nstems: [S00, S01]\n", "'stems' mapping"),
    ("stems:\n  S00: {inst_class: Piano, program_num: piano, audio_rendered: true}\n",
     "non-integer program_num"),
    ("stems:\n  S00: 5\n", "stem 'S00' is not a mapping"),
])
def test_malformed_metadata_names_the_file(tmp_path, text, what):
    track = write_track(tmp_path, "train", "Track00001",
                        {"S00": (stem_meta("Piano", 0), sine(262.0, seconds=0.5))})
    (track / "metadata.yaml").write_text(text)
    corpus = SlakhCorpus(tmp_path)
    with pytest.raises(CorpusError, match=what) as err:
        corpus.tracks("train")
    assert str(track / "metadata.yaml") in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_roots_give_one_line_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        SlakhCorpus(tmp_path / "nope")
    with pytest.raises(CorpusError, match="not a Slakh-layout corpus"):
        SlakhCorpus(tmp_path)
    write_track(tmp_path, "train", "Track00001",
                {"S00": (stem_meta("Piano", 0), sine(262.0, seconds=0.5))})
    with pytest.raises(CorpusError, match="pass the corpus root"):
        SlakhCorpus(tmp_path / "train")
    assert SlakhCorpus(tmp_path).splits == ["train"]


def test_missing_class_name_falls_back_to_program(tmp_path):
    meta = stem_meta("Piano", 33)
    del meta["inst_class"]
    drum = stem_meta("Percussion", 128, is_drum=True)
    write_track(tmp_path, "train", "Track00001", {"S00": (meta, sine(55.0, seconds=0.5)),
                                                   "S01": (drum, sine(55.0, seconds=0.5))})
    (track,) = SlakhCorpus(tmp_path).tracks("train")
    assert [s.inst_class for s in track.stems] == [_cls("Bass"), PERCUSSIVE]
