"""WindowDataset: shapes, provenance, audio content, determinism, epochs, collate, cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from slakh_fixture import SR, write_fake_slakh
from torch.utils.data import DataLoader

from stemstream.data.dataset import WindowDataset, collate
from stemstream.data.slakh import SlakhCorpus
from stemstream.data.windows import REASON_NO_WINDOW, WindowConfig, mix_pair
from stemstream.errors import ConfigError

HOP = SR // 50


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> SlakhCorpus:
    return SlakhCorpus(write_fake_slakh(tmp_path_factory.mktemp("slakh")))


def _keys(dataset: WindowDataset) -> list[tuple]:
    return [(w.track, w.target_stem, w.start_frame)
            for w in (dataset.window(i) for i in range(len(dataset)))]


def test_shapes_provenance_and_content(corpus):
    config = WindowConfig(window_seconds=1.0, future_seconds=0.5)
    dataset = WindowDataset(corpus, "train", config, windows_per_track=3, seed=1)
    assert len(dataset) == 6  # Track00001 and Track00002; the rest are rejected
    assert {w.track for w in (dataset.window(i) for i in range(6))} == {"Track00001",
                                                                        "Track00002"}
    assert {r.track for r in dataset.rejections} == {"Track00003", "Track00004", "Track00005"}
    tracks = {t.name: t for t in corpus.tracks("train")}
    for i in range(len(dataset)):
        example = dataset[i]
        assert example.input_audio.shape == (1, 75 * HOP)
        assert example.target_audio.shape == (1, 50 * HOP)
        assert example.input_audio.dtype == torch.float32
        prov = example.provenance
        assert prov["split"] == "train" and prov["track"] in tracks
        assert prov["start_seconds"] == pytest.approx(prov["start_frame"] / 50)
        stems = tracks[prov["track"]].load_stems(SR)
        mixture, target = mix_pair(stems, prov["target_stem"])
        start = round(prov["start_seconds"] * SR)
        np.testing.assert_array_equal(example.input_audio[0].numpy(),
                                      mixture[start : start + 75 * HOP])
        np.testing.assert_array_equal(example.target_audio[0].numpy(),
                                      target[start : start + 50 * HOP])
        stem = tracks[prov["track"]].stem(prov["target_stem"])
        assert example.inst_class == stem.inst_class
        assert example.target_audio.abs().max() > 0 and example.input_audio.abs().max() > 0


def test_deterministic_from_seed_and_epochs(corpus):
    config = WindowConfig(window_seconds=1.0)
    a = WindowDataset(corpus.root, "train", config, windows_per_track=4, seed=0)
    b = WindowDataset(corpus.root, "train", config, windows_per_track=4, seed=0)
    c = WindowDataset(corpus.root, "train", config, windows_per_track=4, seed=1)
    assert _keys(a) == _keys(b)
    assert _keys(a) != _keys(c)
    epoch0 = _keys(a)
    a.set_epoch(1)
    epoch1 = _keys(a)
    assert len(epoch1) == len(epoch0) and epoch1 != epoch0
    b.set_epoch(1)
    assert _keys(b) == epoch1
    torch.testing.assert_close(a[3].target_audio, b[3].target_audio, rtol=0, atol=0)
    a.set_epoch(0)
    assert _keys(a) == epoch0


def test_collate_and_dataloader(corpus):
    dataset = WindowDataset(corpus, "train", WindowConfig(window_seconds=0.5), seed=2)
    batch = collate([dataset[0], dataset[1]])
    assert batch.input_audio.shape == (2, 1, 25 * HOP)
    assert batch.target_audio.shape == (2, 1, 25 * HOP)
    assert batch.inst_class.dtype == torch.long and batch.inst_class.shape == (2,)
    assert [p["track"] for p in batch.provenance] == ["Track00001", "Track00002"]
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate)
    (only,) = list(loader)
    torch.testing.assert_close(only.input_audio, batch.input_audio)


def test_resampled_split_and_small_cache(corpus):
    dataset = WindowDataset(corpus, "validation", WindowConfig(window_seconds=1.0),
                            windows_per_track=2, cache_tracks=1)
    assert len(dataset) == 2 and dataset[0].target_audio.shape == (1, SR)
    train = WindowDataset(corpus, "train", WindowConfig(window_seconds=1.0), cache_tracks=1)
    for i in range(len(train)):
        train[i]
    assert len(train._cache) == 1
    assert not train.__getstate__()["_cache"], "workers must not receive decoded audio"


def test_rejections_and_bad_rates(corpus):
    dataset = WindowDataset(corpus, "train", WindowConfig(window_seconds=1.0))
    silent = [r for r in dataset.rejections if r.track == "Track00004"]
    assert silent and silent[0].reason == REASON_NO_WINDOW
    with pytest.raises(ConfigError, match="samples per frame"):
        WindowDataset(corpus, "train", WindowConfig(window_seconds=1.0), sample_rate=16010)
