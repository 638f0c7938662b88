"""Appendix A.1: A-weighted activity, the window rule's edge cases, pair selection, report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from slakh_fixture import SR, sine, write_fake_slakh

from stemstream.cli import cli
from stemstream.data.instruments import NEVER_TARGET
from stemstream.data.slakh import SlakhCorpus
from stemstream.data.windows import (
    PEAK_LIMIT,
    REASON_NO_TARGET,
    REASON_NO_WINDOW,
    REASON_SINGLE_STEM,
    REASON_TOO_SHORT,
    Rejection,
    StartChoice,
    Window,
    WindowConfig,
    a_weighted_rms_db,
    a_weighting_db,
    active_frames,
    choose_start,
    mix_pair,
    select_window,
    track_rng,
    window_report,
)
from stemstream.errors import ConfigError

ONE_SECOND = WindowConfig(window_seconds=1.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> SlakhCorpus:
    return SlakhCorpus(write_fake_slakh(tmp_path_factory.mktemp("slakh")))


@pytest.fixture(scope="module")
def tracks(corpus) -> dict:
    tracks = {t.name: t for split in corpus.splits for t in corpus.tracks(split)}
    return {name: (t, t.load_stems(SR)) for name, t in tracks.items()}


def test_a_weighting_reference_points():
    db = a_weighting_db(np.array([1000.0, 100.0, 10000.0]))
    assert abs(db[0]) < 0.1
    assert db[1] == pytest.approx(-19.1, abs=0.2)
    assert db[2] == pytest.approx(-2.5, abs=0.2)  # IEC 61672 table


def test_rms_of_minus_20_dbfs_sine_and_frame_count():
    level = a_weighted_rms_db(sine(1000.0, seconds=2.0, amp=0.1), SR)
    assert level.shape == (100,)
    np.testing.assert_allclose(level[:-2], -23.01, atol=0.05)
    assert a_weighted_rms_db(np.zeros(SR + 1, dtype=np.float32), SR).shape == (51,)
    # A 100 Hz tone reads ~19 dB lower than a 1 kHz tone of the same amplitude.
    low = a_weighted_rms_db(sine(100.0, seconds=2.0, amp=0.1), SR)[10:-10]
    np.testing.assert_allclose(low, -23.01 - 19.15, atol=0.3)


def test_silence_is_inactive_and_frames_start_at_t_times_hop():
    assert not active_frames(np.zeros(SR, dtype=np.float32), SR).any()
    quiet = 1e-4 * np.random.default_rng(0).standard_normal(SR).astype(np.float32)  # ~ -80 dB
    assert not active_frames(quiet, SR).any()
    onset = np.zeros(SR, dtype=np.float32)
    onset[10 * 320:] = sine(1000.0, seconds=1.0, amp=0.5)[: SR - 3200]
    active = active_frames(onset, SR)
    # Frame t covers [t*320, t*320 + 640): frame 9 already hears the onset at sample 3200.
    assert not active[:9].any() and active[9:].all()


def test_window_config_validates_and_derives_frames():
    config = WindowConfig(window_seconds=10.0, future_seconds=1.0)
    assert (config.window_frames, config.future_frames, config.input_frames) == (500, 50, 550)
    past = WindowConfig(window_seconds=10.0, future_seconds=-1.0)
    assert (past.future_frames, past.input_frames) == (-50, 500)
    for bad in ({"window_seconds": 0.0}, {"frame_rate_hz": 0.0}, {"min_joint_activity": 1.5},
                {"max_retries": 0}, {"future_seconds": float("nan")},
                {"silence_db": float("inf")}):
        with pytest.raises(ConfigError):
            WindowConfig(**bad)


def test_rule_accepts_exactly_half_and_rejects_just_under():
    config = WindowConfig(window_seconds=0.2)  # 10 frames, 50%
    target = np.ones(10, dtype=bool)
    half = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0], dtype=bool)
    choice = choose_start(half, target, config, np.random.default_rng(0))
    assert choice == StartChoice(0, 0.5)
    under = half.copy()
    under[8] = False  # 4 of 10
    assert choose_start(under, target, config, np.random.default_rng(0)) == REASON_NO_WINDOW
    # Joint activity needs both: a fully active input does not help a silent target half.
    assert choose_start(target, under, config, np.random.default_rng(0)) == REASON_NO_WINDOW


def test_rule_starts_on_joint_activity_and_leaves_room_for_future_input():
    config = WindowConfig(window_seconds=0.2, future_seconds=0.1)  # 10 + 5 input frames
    active = np.ones(40, dtype=bool)
    starts = {choose_start(active, active, config, np.random.default_rng(s)).start_frame
              for s in range(300)}
    assert starts == set(range(26)), "every start with start + 15 <= 40, and only those"
    target = active.copy()
    target[:20] = False
    starts = {choose_start(active, target, config, np.random.default_rng(s)).start_frame
              for s in range(300)}
    assert min(starts) == 20
    assert choose_start(active[:14], active[:14], config, np.random.default_rng(0)) \
        == REASON_TOO_SHORT


def test_rule_gives_up_after_max_retries():
    config = WindowConfig(window_seconds=0.2, max_retries=3)
    joint = np.zeros(200, dtype=bool)
    joint[::7] = True  # isolated active frames: no window reaches 50%
    calls = []

    class CountingRng:
        def integers(self, n):
            calls.append(n)
            return 0

    assert choose_start(joint, joint, config, CountingRng()) == REASON_NO_WINDOW
    assert len(calls) == 3


def test_structural_rejections(tracks):
    rng = np.random.default_rng(0)
    track, stems = tracks["Track00004"]
    assert select_window(track, ONE_SECOND, rng, stems) == Rejection("Track00004",
                                                                      REASON_NO_WINDOW)
    track, stems = tracks["Track00003"]
    assert select_window(track, ONE_SECOND, rng, stems).reason == REASON_SINGLE_STEM
    track, stems = tracks["Track00005"]
    assert select_window(track, ONE_SECOND, rng, stems).reason == REASON_NO_TARGET
    track, stems = tracks["Track00001"]
    too_long = WindowConfig(window_seconds=2.0, future_seconds=1.5)
    assert select_window(track, too_long, rng, stems).reason == REASON_TOO_SHORT


def test_vocal_and_unknown_are_never_targets(tracks):
    track, stems = tracks["Track00002"]
    chosen = set()
    for seed in range(200):
        window = select_window(track, ONE_SECOND, np.random.default_rng(seed), stems)
        assert isinstance(window, Window)
        assert window.inst_class not in NEVER_TARGET
        assert window.target_stem not in window.input_stems
        assert len(window.input_stems) == 3
        chosen.add(window.target_stem)
    assert chosen == {"S00", "S03"}, "the target must be drawn among all eligible stems"


def test_future_input_stays_within_real_audio(tracks):
    config = WindowConfig(window_seconds=1.0, future_seconds=1.5)  # 125 of 150 frames
    track, stems = tracks["Track00001"]
    starts = set()
    for seed in range(100):
        window = select_window(track, config, np.random.default_rng(seed), stems)
        assert isinstance(window, Window)
        assert window.input_frames == 125 and window.num_frames == 50
        assert window.start_frame + window.input_frames <= 150
        starts.add(window.start_frame)
    assert len(starts) > 5


def test_selection_is_deterministic_from_seed(corpus, tracks):
    track, stems = tracks["Track00001"]
    runs = [select_window(track, ONE_SECOND, track_rng(3, track), stems) for _ in range(2)]
    assert runs[0] == runs[1]
    others = {select_window(track, ONE_SECOND, track_rng(s, track), stems) for s in range(20)}
    assert len(others) > 1
    a = window_report(corpus.root, ONE_SECOND, seed=5, progress=False)
    b = window_report(corpus.root, ONE_SECOND, seed=5, splits=["train"], progress=False)
    assert a.splits["train"].windows == b.splits["train"].windows  # order independent


def test_mix_pair_never_clips_and_never_boosts():
    loud = {"a": np.full(100, 0.8, np.float32), "b": np.full(100, 0.7, np.float32),
            "t": np.full(100, 0.5, np.float32)}
    mixture, target = mix_pair(loud, "t")
    assert np.abs(mixture).max() == pytest.approx(PEAK_LIMIT, rel=1e-6)
    assert target[0] / mixture[0] == pytest.approx(0.5 / 1.5, rel=1e-6)
    quiet = {k: v * 0.01 for k, v in loud.items()}
    mixture, target = mix_pair(quiet, "t")
    np.testing.assert_array_equal(mixture, quiet["a"] + quiet["b"])
    np.testing.assert_array_equal(target, quiet["t"])


def test_report_counts_and_format(corpus):
    report = window_report(corpus.root, ONE_SECOND, seed=0, progress=False)
    train = report.splits["train"]
    assert train.tracks == 5 and len(train.windows) == 2
    reasons = sorted(r.reason for r in train.rejections)
    assert reasons == sorted([REASON_SINGLE_STEM, REASON_NO_WINDOW, REASON_NO_TARGET])
    text = report.format()
    assert "train: 5 tracks, 2 windows accepted, 3 rejected" in text
    assert f"rejected ({REASON_SINGLE_STEM}): 1" in text
    assert "validation: 1 tracks, 1 windows accepted" in text
    assert "Bass" in text or "Piano" in text


def test_cli_data_windows(corpus):
    result = CliRunner().invoke(cli, ["data", "windows", str(corpus.root), "--seconds", "1",
                                      "--tf", "0.5", "--split", "train", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "train: 5 tracks" in result.output and "validation" not in result.output
    bad = CliRunner().invoke(cli, ["data", "windows", str(Path(corpus.root) / "nope")])
    assert bad.exit_code == 1 and "does not exist" in bad.output
