"""Token dumps: layout, code/audio alignment via provenance, t_f > 0 input, audio files,
determinism, skip/mismatch on re-run, TokenDataset and the CLI."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from slakh_fixture import write_fake_slakh
from torch.utils.data import DataLoader

from stemstream import audio
from stemstream.cli import cli
from stemstream.codec.dump import DumpError, TokenDataset, collate, dump_corpus
from stemstream.codec.mock import MockCodec, MockCodecConfig
from stemstream.data.slakh import SlakhCorpus
from stemstream.data.windows import (
    REASON_NO_TARGET,
    REASON_NO_WINDOW,
    REASON_SINGLE_STEM,
    WindowConfig,
    mix_pair,
)
from stemstream.errors import ConfigError, CorpusError

WINDOW = WindowConfig(window_seconds=1.0, future_seconds=0.5)  # 50 output, 75 input frames
SPLITS = ("train", "validation", "test", "extra")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> SlakhCorpus:
    return SlakhCorpus(write_fake_slakh(tmp_path_factory.mktemp("slakh")))


@pytest.fixture(scope="module")
def codec() -> MockCodec:
    return MockCodec().eval()


@pytest.fixture(scope="module")
def dump(corpus, codec, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("dump") / "tokens"
    summary = dump_corpus(
        corpus, codec, out, WINDOW, windows_per_track=2, batch_size=3, progress=False
    )
    return out, summary


def _split(out: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    arrays = [
        np.load(out / split / name, allow_pickle=False)
        for name in ("input_codes.npy", "target_codes.npy", "inst_class.npy")
    ]
    lines = (out / split / "provenance.jsonl").read_text().splitlines()
    return (*arrays, [json.loads(line) for line in lines])


def _recut(corpus: SlakhCorpus, prov: dict, codec: MockCodec, window: WindowConfig):
    """Input ``[N_in]`` and target ``[N]`` re-cut from the corpus as the provenance says."""
    track = next(t for t in corpus.tracks(prov["split"]) if t.name == prov["track"])
    stems = track.load_stems(codec.sample_rate)
    assert sorted(prov["input_stems"]) == sorted(set(stems) - {prov["target_stem"]})
    assert prov["inst_class"] == track.stem(prov["target_stem"]).inst_class
    mixture, target = mix_pair(stems, prov["target_stem"])
    start = round(prov["start_seconds"] * codec.sample_rate)
    assert start == prov["start_frame"] * codec.hop_length
    return (
        mixture[start : start + window.input_frames * codec.hop_length],
        target[start : start + window.window_frames * codec.hop_length],
    )


def _encode(codec: MockCodec, wave: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return codec.encode(torch.from_numpy(np.ascontiguousarray(wave))[None, None])[0].numpy()


def test_layout_meta_and_dtypes(dump, codec):
    out, summary = dump
    meta = json.loads((out / "meta.json").read_text())
    assert meta["codec"] == json.loads(json.dumps(codec.codec_identity()))
    assert (meta["sample_rate"], meta["hop_length"], meta["frame_rate_hz"]) == (16000, 320, 50)
    assert (meta["num_codebooks"], meta["codebook_size"], meta["dtype"]) == (4, 1024, "int16")
    assert meta["window"]["input_frames"] == 75 and meta["window"]["window_frames"] == 50
    assert {s: meta["splits"][s]["rows"] for s in SPLITS} == {
        "train": 4,
        "validation": 2,
        "test": 2,
        "extra": 2,
    }
    assert meta["splits"]["train"]["rejections"] == {  # 3 tracks x 2 draws
        REASON_SINGLE_STEM: 2,
        REASON_NO_WINDOW: 2,
        REASON_NO_TARGET: 2,
    }
    assert meta["stemstream_version"]
    for split in SPLITS:
        inputs, targets, classes, prov = _split(out, split)
        rows = meta["splits"][split]["rows"]
        assert inputs.shape == (rows, 4, 75) and inputs.dtype == np.int16
        assert targets.shape == (rows, 4, 50) and targets.dtype == np.int16
        assert classes.shape == (rows,) and classes.dtype == np.int16
        assert [p["row"] for p in prov] == list(range(rows))
        assert targets.min() >= 0 and targets.max() < 1024
    text = summary.format()
    assert "train" in text and "x real time" in text and REASON_SINGLE_STEM in text
    assert summary.realtime_factor > 0
    assert not list(out.glob(".*"))  # no partial split directory or tmp meta left behind


def test_codes_equal_encoding_of_recut_corpus_audio(dump, corpus, codec):
    out, _ = dump
    for split in SPLITS:
        inputs, targets, classes, provenance = _split(out, split)
        for row, prov in enumerate(provenance):
            assert prov["split"] == split
            mixture, target = _recut(corpus, prov, codec, WINDOW)
            np.testing.assert_array_equal(inputs[row], _encode(codec, mixture))
            np.testing.assert_array_equal(targets[row], _encode(codec, target))
            assert classes[row] == prov["inst_class"]


def test_future_input_frames_are_real_audio(dump, corpus, codec, tmp_path):
    out, _ = dump
    inputs, targets, _, provenance = _split(out, "train")
    assert inputs.shape[-1] - targets.shape[-1] == WINDOW.future_frames == 25
    silence = _encode(codec, np.zeros(25 * codec.hop_length, dtype=np.float32))
    for row, prov in enumerate(provenance):
        mixture, _ = _recut(corpus, prov, codec, WINDOW)
        future = mixture[50 * codec.hop_length :]
        assert future.shape[0] == 25 * codec.hop_length
        assert np.sqrt(np.mean(future**2)) > 1e-3  # real audio, not padding
        np.testing.assert_array_equal(inputs[row, :, 50:], _encode(codec, future))
        assert (inputs[row, :, 50:] != silence).any()
    for future_seconds in (0.0, -0.5):  # no look-ahead: input and output windows coincide
        window = WindowConfig(window_seconds=1.0, future_seconds=future_seconds)
        dump_corpus(
            corpus, codec, tmp_path / str(future_seconds), window, splits=["test"], progress=False
        )
        inputs, targets, _, _ = _split(tmp_path / str(future_seconds), "test")
        assert inputs.shape == targets.shape == (1, 4, 50)


def test_audio_files_for_validation_and_test_only(dump, corpus, codec):
    out, _ = dump
    suffixes = {p.suffix for p in out.rglob("*") if p.is_file()}
    assert suffixes == {".json", ".npy", ".jsonl", ".flac"}  # nothing pickled
    for split in ("train", "extra"):
        assert not (out / split / "audio").exists()
        assert all("audio" not in p for p in _split(out, split)[3])
    for split in ("validation", "test"):
        provenance = _split(out, split)[3]
        assert len(list((out / split / "audio").glob("*.flac"))) == 2 * len(provenance)
        for row, prov in enumerate(provenance):
            assert prov["audio"] == {
                "input": f"audio/{row:06d}_input.flac",
                "target": f"audio/{row:06d}_target.flac",
            }
            mixture, target = _recut(corpus, prov, codec, WINDOW)
            for key, expected in (("input", mixture), ("target", target)):
                stored = audio.load(out / split / prov["audio"][key])
                assert stored.sample_rate == codec.sample_rate
                np.testing.assert_allclose(stored.samples[0], expected, atol=2e-7)


def test_deterministic_from_seed(dump, corpus, codec, tmp_path):
    out, _ = dump
    same = dump_corpus(
        corpus,
        codec,
        tmp_path / "same",
        WINDOW,
        splits=["train", "test"],
        windows_per_track=2,
        batch_size=4,
        progress=False,
    )
    assert not any(s.skipped for s in same.splits.values())
    for split in ("train", "test"):
        for name in ("input_codes.npy", "target_codes.npy", "inst_class.npy", "provenance.jsonl"):
            assert (out / split / name).read_bytes() == (
                tmp_path / "same" / split / name
            ).read_bytes()
    dump_corpus(
        corpus,
        codec,
        tmp_path / "other",
        WINDOW,
        splits=["train"],
        windows_per_track=2,
        seed=1,
        progress=False,
    )
    starts = [(p["track"], p["target_stem"], p["start_frame"]) for p in _split(out, "train")[3]]
    other = [
        (p["track"], p["target_stem"], p["start_frame"])
        for p in _split(tmp_path / "other", "train")[3]
    ]
    assert len(other) == len(starts) and other != starts


def test_rerun_skips_complete_splits(corpus, codec, tmp_path, caplog):
    out = tmp_path / "d"
    dump_corpus(corpus, codec, out, WINDOW, splits=["train"], progress=False)
    stamp = (out / "train" / "input_codes.npy").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="stemstream.codec.dump"):
        summary = dump_corpus(corpus, codec, out, WINDOW, splits=["train", "test"], progress=False)
    assert summary.splits["train"].skipped and not summary.splits["test"].skipped
    assert summary.splits["train"].rows == 2 and "skipped" in summary.format()
    assert "already dumped" in caplog.text
    assert (out / "train" / "input_codes.npy").stat().st_mtime_ns == stamp
    assert set(json.loads((out / "meta.json").read_text())["splits"]) == {"train", "test"}
    # a split whose files went missing is not complete: it is dumped again
    (out / "test" / "target_codes.npy").unlink()
    again = dump_corpus(corpus, codec, out, WINDOW, splits=["test"], progress=False)
    assert not again.splits["test"].skipped and (out / "test" / "target_codes.npy").is_file()


def test_other_codec_or_config_raises_unless_overwrite(corpus, codec, tmp_path):
    out = tmp_path / "d"
    dump_corpus(corpus, codec, out, WINDOW, splits=["train", "test"], progress=False)
    other = MockCodec(MockCodecConfig(seed=1)).eval()
    with pytest.raises(DumpError, match="different codec"):
        dump_corpus(corpus, other, out, WINDOW, splits=["train"], progress=False)
    with pytest.raises(DumpError, match="different window"):
        dump_corpus(corpus, codec, out, WindowConfig(window_seconds=1.0), progress=False)
    with pytest.raises(DumpError, match="different seed"):
        dump_corpus(corpus, codec, out, WINDOW, seed=5, progress=False)
    dump_corpus(corpus, other, out, WINDOW, splits=["train"], overwrite=True, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["codec"]["weights_hash"] == other.codec_identity()["weights_hash"]
    assert set(meta["splits"]) == {"train"} and not (out / "test").exists()


def test_refuses_foreign_directory_and_mismatched_frame_rate(corpus, codec, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DumpError, match="not a token dump"):
        dump_corpus(corpus, codec, foreign, WINDOW, overwrite=True, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    slow = MockCodec(MockCodecConfig(hop_length=400)).eval()  # 40 frames/s
    with pytest.raises(ConfigError, match="frames/s"):
        dump_corpus(corpus, slow, tmp_path / "slow", WINDOW, progress=False)


def test_rates_and_dtype_follow_the_codec(corpus, tmp_path):
    codec = MockCodec(MockCodecConfig(sample_rate=8000, hop_length=160, codebook_size=40000))
    out = tmp_path / "d"
    dump_corpus(corpus, codec.eval(), out, WINDOW, splits=["validation"], progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["sample_rate"], meta["hop_length"], meta["dtype"]) == (8000, 160, "int32")
    inputs, targets, _, provenance = _split(out, "validation")
    assert inputs.dtype == targets.dtype == np.int32 and inputs.shape == (1, 4, 75)
    mixture, target = _recut(corpus, provenance[0], codec, WINDOW)
    np.testing.assert_array_equal(inputs[0], _encode(codec, mixture))
    np.testing.assert_array_equal(targets[0], _encode(codec, target))
    stored = audio.load(out / "validation" / provenance[0]["audio"]["target"])
    assert stored.sample_rate == 8000 and stored.samples.shape[-1] == 50 * 160


def test_token_dataset_items_slicing_and_collate(dump):
    out, _ = dump
    inputs, targets, classes, provenance = _split(out, "train")
    dataset = TokenDataset(out, "train")
    assert len(dataset) == 4 and dataset.meta["num_codebooks"] == 4
    example = dataset[1]
    assert example.input_codes.dtype == torch.long and example.input_codes.shape == (4, 75)
    assert example.target_codes.shape == (4, 50) and example.index == 1
    np.testing.assert_array_equal(example.input_codes.numpy(), inputs[1])
    np.testing.assert_array_equal(example.target_codes.numpy(), targets[1])
    assert example.inst_class == classes[1] and isinstance(example.inst_class, int)
    assert dataset[-1].index == 3 and dataset.provenance(2) == provenance[2]
    with pytest.raises(IndexError):
        dataset[4]
    two = TokenDataset(out, "train", num_codebooks=2)
    assert two[1].input_codes.shape == (2, 75)
    np.testing.assert_array_equal(two[1].target_codes.numpy(), targets[1, :2])
    batch = collate([two[0], two[3]])
    assert batch.input_codes.shape == (2, 2, 75) and batch.target_codes.shape == (2, 2, 50)
    assert batch.inst_class.dtype == torch.long and batch.index.tolist() == [0, 3]
    restored = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < inputs.nbytes  # workers re-open the maps, no copy
    assert torch.equal(restored[2].input_codes, dataset[2].input_codes)
    rows = [b.index for b in DataLoader(dataset, batch_size=3, collate_fn=collate)]
    assert torch.cat(rows).tolist() == [0, 1, 2, 3]


def test_token_dataset_errors(dump, tmp_path):
    out, _ = dump
    for bad in (0, 5):
        with pytest.raises(DumpError, match="num_codebooks"):
            TokenDataset(out, "train", num_codebooks=bad)
    with pytest.raises(DumpError, match="not a token dump"):
        TokenDataset(tmp_path / "nowhere", "train")
    with pytest.raises(DumpError, match="no dumped split 'omitted'"):
        TokenDataset(out, "omitted")
    copy = shutil.copytree(out, tmp_path / "copy")
    (copy / "train" / "target_codes.npy").unlink()
    with pytest.raises(DumpError, match="missing"):
        TokenDataset(copy, "train")
    np.save(copy / "test" / "input_codes.npy", np.zeros((2, 4, 10), dtype=np.int16))
    with pytest.raises(DumpError, match="meta.json says"):
        TokenDataset(copy, "test")
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps(meta | {"window": "ten seconds"}))
    with pytest.raises(DumpError, match="corrupt"):
        TokenDataset(copy, "validation")
    (copy / "meta.json").write_text("{not json")
    with pytest.raises(DumpError, match="corrupt"):
        TokenDataset(copy, "validation")


def test_cli_data_dump(corpus, tmp_path):
    out = tmp_path / "cli"
    args = [
        "data",
        "dump",
        str(corpus.root),
        "--codec",
        "mock",
        "--out",
        str(out),
        "--seconds",
        "1",
        "--tf",
        "0.5",
        "--split",
        "train",
        "--split",
        "test",
        "--windows-per-track",
        "2",
        "--batch-size",
        "3",
        "--no-progress",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "x real time" in result.output
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta["splits"]) == {"train", "test"} and meta["windows_per_track"] == 2
    assert TokenDataset(out, "test")[0].input_codes.shape == (4, 75)
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "skipped" in again.output
    reseeded = CliRunner().invoke(cli, [*args, "--seed", "3"])
    assert reseeded.exit_code == 1 and "error:" in reseeded.output and "seed" in reseeded.output
    forced = CliRunner().invoke(cli, [*args, "--seed", "3", "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "meta.json").read_text())["seed"] == 3


def test_unknown_split_or_no_window_is_refused_without_leaving_a_dump(corpus, codec, tmp_path):
    with pytest.raises(CorpusError, match="no split 'tset'"):
        dump_corpus(corpus, codec, tmp_path / "a", WINDOW, splits=("tset",), progress=False)
    assert not (tmp_path / "a").exists()
    long = WindowConfig(window_seconds=60.0)
    with pytest.raises(DumpError, match="gives a window of 60 s"):
        dump_corpus(corpus, codec, tmp_path / "b", long, splits=("train",), progress=False)
    assert not (tmp_path / "b" / "train").exists()
