"""Output paths: refused before any work with one line, never over an input, written
atomically (nothing partial is left behind), and the CLI's accompany/generate use it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from stemstream import audio
from stemstream.cli import cli
from stemstream.outputs import OutputError, atomic_output, check_output_path, check_outputs


@pytest.fixture()
def song(tmp_path) -> Path:
    path = tmp_path / "song.wav"
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    return path


def test_bad_output_paths_are_refused_with_one_line(tmp_path, song):
    (tmp_path / "folder").mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = {
        tmp_path / "folder": "is a directory",
        tmp_path / "noext": "unknown file type",
        tmp_path / "x.txt": "unknown file type",
        song: "is an input",
        Path("/dev/full"): "not a regular file",
        tmp_path / "song.wav" / "x.wav": "is not a directory",
    }
    if os.geteuid() != 0:  # root writes anywhere
        cases[locked / "x.wav"] = "not writable"
    for path, message in cases.items():
        with pytest.raises(OutputError, match=message) as err:
            check_outputs([song], audio={"-o": path})
        assert "\n" not in str(err.value)
    with pytest.raises(OutputError, match="two outputs"):
        check_outputs([song], audio={"-o": tmp_path / "a.wav", "--mix": tmp_path / "a.wav"})
    assert check_output_path(tmp_path / "new" / "deeper" / "a.wav", suffixes=(".wav",))
    locked.chmod(0o700)


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(ValueError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise ValueError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_audio_save_is_atomic_and_refuses_devices(tmp_path):
    with pytest.raises(OutputError, match="not a regular file"):
        audio.save("/dev/full", np.zeros(100, np.float32), 16000)
    path = audio.save(tmp_path / "a.flac", np.zeros(100, np.float32), 16000)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["a.flac"]


@pytest.mark.parametrize("args, message", [
    (["-o", "{song}"], "is an input"),
    (["-o", "{tmp}/out"], "unknown file type"),
    (["-o", "{tmp}/s.wav", "--mix", "{tmp}/m.txt"], "unknown file type"),
    (["-o", "{tmp}/s.wav", "--report", "{tmp}/r.wav"], "use one of .json"),
    (["-o", "{tmp}/s.wav", "--plot", "{tmp}"], "is a directory"),
    (["-o", "{tmp}/s.wav", "--tf", "nan"], "finite"),
    (["-o", "{tmp}/s.wav", "--tf", "inf"], "finite"),
])
def test_accompany_refuses_bad_paths_before_any_work(tmp_path, song, args, message):
    before = song.read_bytes()
    filled = [a.format(song=song, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(cli, ["accompany", str(song), "--instrument", "Bass",
                                      "--model", "random-tiny-mock", "--no-progress", *filled])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and message in result.output
    assert song.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.wav"]


def test_generate_refuses_its_input_as_output(tmp_path, song):
    before = song.read_bytes()
    result = CliRunner().invoke(cli, ["generate", "--checkpoint", str(tmp_path / "none"),
                                      "--input", str(song), "--instrument", "Bass",
                                      "-o", str(song)])
    assert result.exit_code != 0 and "is an input" in result.output
    assert song.read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--chunk", "100000"], "chunk size k = 100000 frames is outside 1..128"),
    (["--tf", "100"], "t_f = 5000 frames is outside -256..256"),
])
def test_accompany_refuses_stream_args_outside_the_models_range(tmp_path, song, args, message):
    result = CliRunner().invoke(cli, ["accompany", str(song), "--instrument", "Bass",
                                      "--model", "random-tiny-mock", "--no-progress",
                                      "-o", str(tmp_path / "s.wav"), *args])
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "s.wav").exists()


def test_codec_encode_and_decode_check_paths_and_codes(tmp_path, song):
    runner = CliRunner()
    result = runner.invoke(cli, ["codec", "encode", str(song), "-o", str(tmp_path / "codes"),
                                 "--codec", "mock"])
    assert result.exit_code == 1 and "use one of .npz" in result.output
    result = runner.invoke(cli, ["codec", "encode", str(song), "-o", str(tmp_path / "c.npz"),
                                 "--codec", "mock"])
    assert result.exit_code == 0 and (tmp_path / "c.npz").is_file()
    result = runner.invoke(cli, ["codec", "decode", str(tmp_path / "c.npz"), "-o",
                                 str(tmp_path / "c.npz"), "--codec", "mock"])
    assert result.exit_code == 1 and "unknown file type '.npz'" in result.output
    with np.load(tmp_path / "c.npz") as data:
        np.savez(tmp_path / "f.npz", codes=data["codes"].astype(np.float32), meta=data["meta"])
    result = runner.invoke(cli, ["codec", "decode", str(tmp_path / "f.npz"), "-o",
                                 str(tmp_path / "f.wav"), "--codec", "mock"])
    assert result.exit_code == 1 and "codes must be integers" in result.output
    assert not (tmp_path / "f.wav").exists()


def test_instruments_lists_names_aliases_and_what_is_never_trained(tmp_path, song, caplog):
    result = CliRunner().invoke(cli, ["instruments"])
    assert result.exit_code == 0
    assert "Percussive  (also: Drums, Percussion)" in result.output
    assert "Vocal" in result.output and "never a target" in result.output
    result = CliRunner().invoke(cli, ["accompany", str(song), "--instrument", "Kazoo",
                                      "-o", str(tmp_path / "s.wav")])
    assert result.exit_code == 1 and "Drums" in result.output and "Vocal" not in result.output
    with caplog.at_level("WARNING"):
        result = CliRunner().invoke(cli, ["accompany", str(song), "--instrument", "vocals",
                                          "--model", "random-tiny-mock", "--no-progress",
                                          "-o", str(tmp_path / "v.wav")])
    assert result.exit_code == 0 and "no model is trained to play Vocal" in caplog.text


def test_generate_takes_model_like_every_command_and_the_shipped_names(tmp_path, song):
    short = tmp_path / "short.wav"
    sf.write(short, sf.read(song, dtype="float32")[0][:1600], 16000)
    result = CliRunner().invoke(cli, ["generate", "--model", "default", "--input", str(short),
                                      "--instrument", "Bass", "-o", str(tmp_path / "b.wav")])
    assert result.exit_code == 0, result.output
    assert sf.info(tmp_path / "b.wav").frames == 1600
    result = CliRunner().invoke(cli, ["generate", "--model", "a", "--checkpoint", "b",
                                      "--input", str(short), "--instrument", "Bass",
                                      "-o", str(tmp_path / "c.wav")])
    assert result.exit_code == 2 and "not both" in result.output
    # without --model: the shipped default, as for accompany (the same stem as --model default)
    result = CliRunner().invoke(cli, ["generate", "--input", str(short), "--instrument", "Bass",
                                      "-o", str(tmp_path / "c.wav")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


def test_accompany_picture(tmp_path, song):
    result = CliRunner().invoke(cli, ["accompany", str(song), "--instrument", "Bass",
                                      "--model", "random-tiny-mock", "--no-progress",
                                      "-o", str(tmp_path / "s.wav"),
                                      "--picture", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert "beat F" in result.output
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    result = CliRunner().invoke(cli, ["accompany", str(song), "--instrument", "Bass",
                                      "-o", str(tmp_path / "t.wav"),
                                      "--picture", str(tmp_path / "p.jpg")])
    assert result.exit_code == 1 and "--picture" in result.output
    assert not (tmp_path / "t.wav").exists()


def test_output_folders_that_are_files_are_refused(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    runner = CliRunner()
    cases = [
        ["data", "synth", "--out", str(afile), "--tracks", "1", "--jobs", "1"],
        ["eval", "run", "--model", "default", "--corpus", str(tmp_path), "--out", str(afile)],
    ]
    for args in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, args
        assert result.output == f"error: --out {afile}: exists and is not a directory\n"
    assert afile.read_text() == "x"


def test_accompany_that_fails_late_leaves_no_output(tmp_path, song, monkeypatch):
    import stemstream.stream.report as report

    def broken(report_data, path):
        raise OutputError(f"{path}: cannot write (disk full)")

    monkeypatch.setattr(report, "plot_timeline", broken)
    result = CliRunner().invoke(cli, ["accompany", str(song), "--instrument", "Bass",
                                      "--model", "random-tiny-mock", "--no-progress",
                                      "-o", str(tmp_path / "s.wav"), "--mix",
                                      str(tmp_path / "m.wav"), "--report",
                                      str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 1 and "disk full" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.wav"]


@pytest.mark.parametrize("command", ["accompany", "generate"])
def test_input_shorter_than_a_frame_is_refused(tmp_path, command):
    tiny = tmp_path / "one.wav"
    sf.write(tiny, np.zeros(1, np.float32), 16000)
    args = (["accompany", str(tiny), "--model", "random-tiny-mock"] if command == "accompany"
            else ["generate", "--model", "default", "--input", str(tiny)])
    result = CliRunner().invoke(cli, [*args, "--instrument", "Bass", "-o", str(tmp_path / "o.wav")])
    assert result.exit_code == 1 and "shorter than one 20 ms frame" in result.output
    assert not (tmp_path / "o.wav").exists()
