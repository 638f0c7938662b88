"""Every command survives bad input (SPEC section 10): a matrix of bad arguments, files and
paths across the CLI. Each case must exit non-zero with one ``Error``/``error`` line that says
what is wrong, print no traceback, leave its inputs unchanged and leave no output behind."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from stemstream.cli import cli

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from slakh_fixture import write_fake_slakh  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml")
MOCK = ["--model", "random-tiny-mock", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Inputs, good and bad, in a folder of their own (outputs go elsewhere)."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    song = root / "song.wav"
    sf.write(song, (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    empty = root / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    nan = root / "nan.wav"
    sf.write(nan, np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    tiny = root / "one_sample.wav"
    sf.write(tiny, np.zeros(1, np.float32), 16000)
    corrupt = root / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    text = root / "notes.txt"
    text.write_text("not a model\n")
    truncated = root / "truncated.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("steps: [1, 2\nlr: :\n")
    codes = root / "codes.npz"
    np.savez(codes, codes=np.zeros((2, 3), np.float32), meta=np.array("{}"))
    corpus = write_fake_slakh(root / "corpus")
    return {"song": song, "empty": empty, "nan": nan, "one_sample": tiny, "corrupt": corrupt,
            "text": text, "truncated": truncated, "bad_yaml": bad_yaml, "float_codes": codes,
            "corpus": corpus, "missing": root / "missing.wav", "tiny_yaml": Path(TINY),
            "inputs": root}


# (id, argv with {placeholders}, a fragment the error line must contain)
CASES = [
    # accompany: audio in, paths out, stream arguments, models
    ("accompany-missing", ["accompany", "{missing}", "--instrument", "Bass", "-o", "{out}/s.wav",
                           *MOCK], "no such audio file"),
    ("accompany-empty", ["accompany", "{empty}", "--instrument", "Bass", "-o", "{out}/s.wav",
                         *MOCK], "empty"),
    ("accompany-nan", ["accompany", "{nan}", "--instrument", "Bass", "-o", "{out}/s.wav",
                       *MOCK], "NaN"),
    ("accompany-one-sample", ["accompany", "{one_sample}", "--instrument", "Bass", "-o",
                              "{out}/s.wav", *MOCK], "shorter"),
    ("accompany-corrupt", ["accompany", "{corrupt}", "--instrument", "Bass", "-o",
                           "{out}/s.wav", *MOCK], "corrupt.wav"),
    ("accompany-instrument", ["accompany", "{song}", "--instrument", "Kazoo", "-o",
                              "{out}/s.wav", *MOCK], "Kazoo"),
    ("accompany-out-is-input", ["accompany", "{song}", "--instrument", "Bass", "-o", "{song}",
                                *MOCK], "is an input"),
    ("accompany-out-no-type", ["accompany", "{song}", "--instrument", "Bass", "-o", "{out}/s",
                               *MOCK], "unknown file type"),
    ("accompany-out-directory", ["accompany", "{song}", "--instrument", "Bass", "-o", "{out}",
                                 *MOCK], "is a directory"),
    ("accompany-out-device", ["accompany", "{song}", "--instrument", "Bass", "-o", "/dev/full",
                              *MOCK], "/dev/full"),
    ("accompany-same-outputs", ["accompany", "{song}", "--instrument", "Bass", "-o",
                                "{out}/s.wav", "--mix", "{out}/s.wav", *MOCK], "s.wav"),
    ("accompany-report-type", ["accompany", "{song}", "--instrument", "Bass", "-o",
                               "{out}/s.wav", "--report", "{out}/r.wav", *MOCK], ".json"),
    ("accompany-tf-nan", ["accompany", "{song}", "--instrument", "Bass", "-o", "{out}/s.wav",
                          "--tf", "nan", *MOCK], "finite"),
    ("accompany-tf-huge", ["accompany", "{song}", "--instrument", "Bass", "-o", "{out}/s.wav",
                           "--tf", "100", *MOCK], "outside"),
    ("accompany-chunk-huge", ["accompany", "{song}", "--instrument", "Bass", "-o",
                              "{out}/s.wav", "--chunk", "100000", *MOCK], "outside"),
    ("accompany-latency-negative", ["accompany", "{song}", "--instrument", "Bass", "-o",
                                    "{out}/s.wav", "--latency", "-1", *MOCK], "latency"),
    ("accompany-model-truncated", ["accompany", "{song}", "--instrument", "Bass", "-o",
                                   "{out}/s.wav", "--model", "{truncated}"], "truncated"),
    ("accompany-model-text", ["accompany", "{song}", "--instrument", "Bass", "-o",
                              "{out}/s.wav", "--model", "{text}"], "notes.txt"),
    ("accompany-model-missing", ["accompany", "{song}", "--instrument", "Bass", "-o",
                                 "{out}/s.wav", "--model", "{inputs}/none.safetensors"],
     "none.safetensors"),
    ("accompany-mix-channels", ["accompany", "{song}", "--instrument", "Bass", "-o",
                                "{out}/s.wav", "--mix", "{out}/m.wav", "--mix-channels", "5.1",
                                *MOCK], "mix-channels"),
    # generate
    ("generate-missing-model", ["generate", "--model", "{inputs}/none.safetensors", "--input",
                                "{song}", "--instrument", "Bass", "-o", "{out}/s.wav"],
     "none.safetensors"),
    ("generate-truncated-model", ["generate", "--model", "{truncated}", "--input", "{song}",
                                  "--instrument", "Bass", "-o", "{out}/s.wav"], "truncated"),
    ("generate-out-is-input", ["generate", "--input", "{song}", "--instrument", "Bass", "-o",
                               "{song}"], "is an input"),
    ("generate-nan", ["generate", "--input", "{nan}", "--instrument", "Bass", "-o",
                      "{out}/s.wav"], "NaN"),
    ("generate-instrument", ["generate", "--input", "{song}", "--instrument", "Oboe-ish", "-o",
                             "{out}/s.wav"], "Oboe-ish"),
    # codec encode / decode
    ("codec-encode-missing", ["codec", "encode", "{missing}", "-o", "{out}/c.npz", "--codec",
                              "mock"], "no such audio file"),
    ("codec-encode-empty", ["codec", "encode", "{empty}", "-o", "{out}/c.npz", "--codec",
                            "mock"], "empty"),
    ("codec-encode-no-npz", ["codec", "encode", "{song}", "-o", "{out}/codes", "--codec",
                             "mock"], ".npz"),
    ("codec-encode-levels", ["codec", "encode", "{song}", "-o", "{out}/c.npz", "--codec",
                             "mock", "--num-codebooks", "99"], "num_codebooks"),
    ("codec-encode-unknown-codec", ["codec", "encode", "{song}", "-o", "{out}/c.npz",
                                    "--codec", "{inputs}/nocodec.safetensors"], "nocodec"),
    ("codec-decode-audio-as-codes", ["codec", "decode", "{song}", "-o", "{out}/x.wav",
                                     "--codec", "mock"], "not a codes"),
    ("codec-decode-float-codes", ["codec", "decode", "{float_codes}", "-o", "{out}/x.wav",
                                  "--codec", "mock"], "integers"),
    ("codec-decode-out-type", ["codec", "decode", "{float_codes}", "-o", "{out}/x.txt",
                               "--codec", "mock"], "unknown file type"),
    # training
    ("train-missing-config", ["train", "--config", "{inputs}/none.yaml"], "none.yaml"),
    ("train-bad-yaml", ["train", "--config", "{bad_yaml}"], "bad.yaml"),
    ("train-unknown-key", ["train", "--config", "{tiny_yaml}", "learning_rate=3"],
     "learning_rate"),
    ("train-missing-dump", ["train", "--config", "{tiny_yaml}", "dump_dir={inputs}/nodump",
                            "out_dir={out}/run"], "nodump"),
    ("train-steps-zero", ["train", "--config", "{tiny_yaml}", "steps=0"], "steps"),
    ("train-unknown-feature", ["train", "--config", "{tiny_yaml}",
                               "model.input_features=[tempo]"], "tempo"),
    ("train-bad-override", ["train", "--config", "{tiny_yaml}", "steps"], "steps"),
    # data
    ("data-synth-out-is-file", ["data", "synth", "--out", "{song}", "--tracks", "1"],
     "song.wav"),
    ("data-synth-no-tracks", ["data", "synth", "--out", "{out}/c", "--tracks", "0"], "tracks"),
    ("data-dump-missing-corpus", ["data", "dump", "{inputs}/nocorpus", "--codec", "mock",
                                  "--out", "{out}/d"], "nocorpus"),
    ("data-dump-tracks-bad-split", ["data", "dump-tracks", "{corpus}", "--codec", "mock",
                                    "--out", "{out}/d", "--split", "tset"], "tset"),
    ("data-dump-features-not-a-dump", ["data", "dump-features", "{corpus}"], "not a token dump"),
    ("data-dump-features-missing", ["data", "dump-features", "{inputs}/nodump"], "nodump"),
    # evaluation
    ("eval-run-missing-corpus", ["eval", "run", "--corpus", "{inputs}/nocorpus", "--out",
                                 "{out}/e", "--systems", "m=default"], "nocorpus"),
    ("eval-run-out-is-file", ["eval", "run", "--corpus", "{corpus}", "--out", "{song}",
                              "--systems", "m=default"], "song.wav"),
    ("eval-claims-missing", ["eval", "claims", "{inputs}/norun"], "norun"),
    ("eval-run-beat-tracker", ["eval", "run", "--corpus", "{corpus}", "--out", "{out}/e",
                               "--beat-tracker", "foo"], "foo"),
    ("eval-run-metric", ["eval", "run", "--corpus", "{corpus}", "--out", "{out}/e",
                         "--metrics", "cocola,vibes"], "vibes"),
    # demo, instruments
    ("demo-out-is-file", ["demo", "--out", "{song}"], "song.wav"),
    ("demo-instrument", ["demo", "--out", "{out}/d", "--instrument", "Didgeridoo"],
     "Didgeridoo"),
    ("instruments-extra-argument", ["instruments", "Bass"], "Bass"),
    # bench, export
    ("bench-truncated-model", ["bench", "--model", "{truncated}", "--no-grid"], "truncated"),
    ("bench-unknown-route", ["bench", "--model", "random-tiny-mock", "--route", "gpu"],
     "route"),
    ("export-missing", ["export", "{inputs}/none.safetensors", "-o", "{out}/m.safetensors"],
     "none.safetensors"),
    ("export-text", ["export", "{text}", "-o", "{out}/m.safetensors"], "notes.txt"),
]


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_gives_one_error_line_and_leaves_nothing(files, tmp_path, argv, fragment):
    out = tmp_path / "out"
    out.mkdir()
    names = {k: str(v) for k, v in files.items()} | {"out": str(out)}
    args = [a.format(**names) for a in argv]
    inputs = {p: p.read_bytes() for p in files["inputs"].rglob("*") if p.is_file()}
    result = CliRunner().invoke(cli, args)
    text = result.output
    assert result.exit_code != 0, text
    assert not isinstance(result.exception, Exception) or isinstance(result.exception,
                                                                     SystemExit), text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, text
    assert fragment in errors[0], text
    assert list(out.iterdir()) == [], text  # nothing partial, nothing that looks finished
    for path, content in inputs.items():
        assert path.read_bytes() == content, path
    assert len(CASES) >= 40
