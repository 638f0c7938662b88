"""Whole-track dumps and random crops: rows re-encode from the corpus, onsets come from the
target's MIDI, crops are deterministic per (seed, epoch) and differ across epochs, re-runs skip
finished splits, and the CLI."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pretty_midi
import pytest
import torch
from click.testing import CliRunner
from slakh_fixture import write_fake_slakh

from stemstream.cli import cli
from stemstream.codec.mock import MockCodec
from stemstream.codec.track_dump import dump_tracks
from stemstream.data.slakh import SlakhCorpus
from stemstream.data.tokens import DumpError, TrackCrops, collate, is_track_dump
from stemstream.data.windows import mix_pair


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    root = write_fake_slakh(tmp_path_factory.mktemp("slakh"))
    midi = pretty_midi.PrettyMIDI()
    bass = pretty_midi.Instrument(program=33)
    bass.notes += [pretty_midi.Note(100, 40, start, start + 0.2) for start in (0.0, 0.5, 1.25)]
    midi.instruments.append(bass)
    midi.write(str(root / "train" / "Track00002" / "MIDI" / "S00.mid"))
    return root


@pytest.fixture(scope="module")
def dumped(corpus_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracks") / "dump"
    summary = dump_tracks(corpus_root, MockCodec().eval(), out, splits=("train", "validation"),
                          progress=False)
    return out, summary


def _rows(out, split):
    lines = (out / split / "provenance.jsonl").read_text().splitlines()
    return np.load(out / split / "rows.npy"), [json.loads(line) for line in lines]


def test_rows_are_whole_tracks_encoded_as_the_corpus_says(dumped, corpus_root):
    out, summary = dumped
    assert is_track_dump(out) and summary.rows["train"] > 0
    codec = MockCodec().eval()
    rows, provenance = _rows(out, "train")
    inputs = np.load(out / "train" / "input_codes.npy")
    targets = np.load(out / "train" / "target_codes.npy")
    assert inputs.shape == targets.shape == (codec.num_codebooks, int(rows[:, 1].sum()))
    corpus = SlakhCorpus(corpus_root)
    for (first, frames, inst), prov in zip(rows, provenance, strict=True):
        track = next(t for t in corpus.tracks("train") if t.name == prov["track"])
        assert inst == track.stem(prov["target_stem"]).inst_class
        mixture, target = mix_pair(track.load_stems(codec.sample_rate), prov["target_stem"])
        wave = torch.from_numpy(np.stack([mixture, target])[:, None, : frames * codec.hop_length])
        with torch.no_grad():
            codes = codec.encode(wave, codec.sample_rate).numpy()
        np.testing.assert_array_equal(inputs[:, first : first + frames], codes[0])
        np.testing.assert_array_equal(targets[:, first : first + frames], codes[1])
    # every eligible stem is a target: Track00002's Bass and Sound Effects (not its Vocal, nor
    # its Theremin, read as Unknown)
    assert sorted(p["target_stem"] for p in provenance if p["track"] == "Track00002") == [
        "S00", "S03"]


def test_onsets_come_from_the_target_midi(dumped):
    out, _ = dumped
    rows, provenance = _rows(out, "train")
    onsets = np.load(out / "train" / "onsets.npy")
    (row,) = [i for i, p in enumerate(provenance)
              if p["track"] == "Track00002" and p["target_stem"] == "S00"]
    first, frames, _ = rows[row]
    assert np.flatnonzero(onsets[first : first + frames]).tolist() == [0, 25, 62]
    others = [i for i, p in enumerate(provenance) if i != row]
    assert not any(onsets[rows[i, 0] : rows[i, 0] + rows[i, 1]].any() for i in others)


def test_crops_are_deterministic_new_each_epoch_and_aligned(dumped):
    out, _ = dumped
    data = TrackCrops(out, "train", 2, window_frames=40, future_frames=10, seed=3)
    again = pickle.loads(pickle.dumps(data))
    starts = [data.start(i) for i in range(len(data))]
    assert starts == [again.start(i) for i in range(len(again))]
    data.set_epoch(1)
    assert starts != [data.start(i) for i in range(len(data))]
    inputs = np.load(out / "train" / "input_codes.npy")
    targets = np.load(out / "train" / "target_codes.npy")
    rows = np.load(out / "train" / "rows.npy")
    for i in range(len(data)):
        example = data[i]
        lo = rows[example.index, 0] + data.start(i)
        assert example.input_codes.shape == (2, 50) and example.target_codes.shape == (2, 40)
        np.testing.assert_array_equal(example.input_codes.numpy(), inputs[:2, lo : lo + 50])
        np.testing.assert_array_equal(example.target_codes.numpy(), targets[:2, lo : lo + 40])
        assert example.onsets.shape == (40,)
    batch = collate([data[0], data[1]])
    assert batch.onsets.shape == (2, 40) and batch.onsets.dtype == torch.bool


def test_crops_prefer_jointly_active_windows(dumped):
    out, _ = dumped
    data = TrackCrops(out, "train", window_frames=25, seed=0)
    joint = np.load(out / "train" / "joint_active.npy")
    rows = np.load(out / "train" / "rows.npy")
    shares = []
    for epoch in range(4):
        data.set_epoch(epoch)
        for i in range(len(data)):
            first, frames, _ = rows[data.rows[i]]
            if joint[first : first + frames].mean() > 0.9:
                lo = first + data.start(i)
                shares.append(joint[lo : lo + 25].mean())
    assert shares and min(shares) >= 0.5


def test_rerun_skips_and_other_config_is_refused(dumped, corpus_root):
    out, _ = dumped
    again = dump_tracks(corpus_root, MockCodec().eval(), out, splits=("train",), progress=False)
    assert again.skipped == ["train"]
    with pytest.raises(DumpError, match="targets_per_track"):
        dump_tracks(corpus_root, MockCodec().eval(), out, targets_per_track=1, progress=False)
    with pytest.raises(DumpError, match="no row holds"):
        TrackCrops(out, "train", window_frames=10_000)
    with pytest.raises(DumpError, match="no dumped split 'test'"):
        TrackCrops(out, "test")


def test_cli_targets_per_track(corpus_root, tmp_path):
    result = CliRunner().invoke(cli, [
        "data", "dump-tracks", str(corpus_root), "--codec", "mock", "--out",
        str(tmp_path / "d"), "--targets-per-track", "1", "--split", "train", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "train" in result.output
    _, provenance = _rows(tmp_path / "d", "train")
    tracks = [p["track"] for p in provenance]
    assert len(tracks) == len(set(tracks)) > 0


def test_input_features_are_the_mixtures_and_can_be_added_later(dumped, corpus_root, tmp_path):
    import shutil

    from stemstream.features import FEATURE_NAMES, feature_dim, features

    out, _ = dumped
    codec = MockCodec().eval()
    stored = np.load(out / "train" / "input_features.npy")
    rows, provenance = _rows(out, "train")
    assert stored.dtype == np.float16
    assert stored.shape == (feature_dim(FEATURE_NAMES), int(rows[:, 1].sum()))
    assert json.loads((out / "meta.json").read_text())["features"] == list(FEATURE_NAMES)
    corpus = SlakhCorpus(corpus_root)
    first, frames, _ = rows[0]
    track = next(t for t in corpus.tracks("train") if t.name == provenance[0]["track"])
    mixture, _ = mix_pair(track.load_stems(codec.sample_rate), provenance[0]["target_stem"])
    want = features(mixture[: frames * codec.hop_length], codec.sample_rate, codec.hop_length)
    np.testing.assert_array_equal(stored[:, first : first + frames], want.astype(np.float16))
    crop = TrackCrops(out, "train", window_frames=20, future_frames=3)[0]
    assert crop.input_features.shape == (stored.shape[0], 23)
    # a dump made before features gains them, identical, from the CLI; a rerun skips
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    for split in ("train", "validation"):
        (copy / split / "input_features.npy").unlink()
    assert TrackCrops(copy, "train", window_frames=20)[0].input_features is None
    result = CliRunner().invoke(cli, ["data", "dump-features", str(copy), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "train: features of" in result.output
    np.testing.assert_array_equal(np.load(copy / "train" / "input_features.npy"), stored)
    again = CliRunner().invoke(cli, ["data", "dump-features", str(copy), "--no-progress"])
    assert "already has its features" in again.output
