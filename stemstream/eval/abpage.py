"""A blind pairwise A/B listening page (static HTML + audio; no server).

``make_ab_page(source, out_dir)`` takes ``{example: {system: wav_path}}`` or a directory: an
evaluation run laid out as ``RUN_DIR/examples/<example>/<system>_mix.wav`` (what ``stemstream
eval run`` writes), or the flat layout ``RUN_DIR/<example>/<system>.wav`` (``input.wav`` is
skipped; an example needs two or more systems). It draws pairs of systems per example in
random order and sides, copies the audio under opaque names and writes ``index.html``. The
rater enters a name, answers each pair, and downloads the answers as the CSV that
``stemstream eval listening`` reads (``rater, example, system_a, system_b, preferred``).
System names never appear in the page's visible text or in audio file names: the clips are
copied under salted hashes, and only the script's mapping from clip id to system (needed to
write the CSV) names them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from stemstream.errors import ConfigError
from stemstream.outputs import write_text


def find_clips(run_dir: str | Path) -> dict[str, dict[str, Path]]:
    """``{example: {system: path}}`` from an eval run (mixes) or a flat layout."""
    run = Path(run_dir)
    base = run / "examples" if (run / "examples").is_dir() else run
    clips: dict[str, dict[str, Path]] = {}
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        mixes = {p.stem[: -len("_mix")]: p for p in folder.glob("*_mix.wav")}
        found = mixes or {p.stem: p for p in folder.glob("*.wav") if p.stem != "input"}
        if len(found) >= 2:
            clips[folder.name] = found
    if not clips:
        raise ConfigError(f"{run}: no example folders with two or more systems' audio")
    return clips


def make_ab_page(source: str | Path | Mapping[str, Mapping[str, str | Path]],
                 out_dir: str | Path, pairs_per_example: int | None = 3,
                 systems: list[str] | None = None, seed: int = 0) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/audio/*.wav``; return the page's path.

    Args:
        source: ``{example: {system: path}}`` or a run directory (see the module docstring).
        out_dir: created if needed.
        pairs_per_example: random pairs of systems per example (``None``: all pairs).
        systems: only these systems (default: all found).
        seed: the draw of pairs, sides, order and the clip-name salt.
    """
    if isinstance(source, Mapping):
        clips = {str(e): {str(s): Path(p) for s, p in found.items()}
                 for e, found in source.items()}
        missing = [str(p) for found in clips.values() for p in found.values() if not p.is_file()]
        if missing:
            raise ConfigError(f"missing audio for the A/B page: {missing[:3]}")
    else:
        clips = find_clips(source)
    rng = np.random.default_rng(seed)
    salt = rng.bytes(8).hex()
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    trials = []
    mapping: dict[str, list[str]] = {}
    for example, found in clips.items():
        names = sorted(s for s in found if systems is None or s in systems)
        pairs = list(itertools.combinations(names, 2))
        rng.shuffle(pairs)
        for a, b in pairs[:pairs_per_example] if pairs_per_example else pairs:
            if rng.random() < 0.5:
                a, b = b, a
            ids = []
            for system in (a, b):
                clip = hashlib.sha256(f"{salt}|{example}|{system}".encode()).hexdigest()[:12]
                if clip not in mapping:
                    shutil.copyfile(found[system], out / "audio" / f"{clip}.wav")
                    mapping[clip] = [example, system]
                ids.append(clip)
            trials.append({"example": example, "a": ids[0], "b": ids[1]})
    order = rng.permutation(len(trials)).tolist()
    trials = [trials[i] for i in order]
    if not trials:
        raise ConfigError("no pairs to compare: every example needs two or more systems")
    page = _PAGE.replace("__TRIALS__", _script_json(trials)).replace(
        "__MAP__", _script_json(mapping)).replace("__COUNT__", str(len(trials)))
    write_text(out / "index.html", page)
    return out / "index.html"


def _script_json(value) -> str:
    """JSON safe inside ``<script>`` (a name holding ``</script>`` cannot end it)."""
    return json.dumps(value).replace("<", "\\u003c")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Listening test</title>
<style>
body{font-family:sans-serif;max-width:720px;margin:2em auto;}
.trial{border:1px solid #ccc;padding:1em;margin:1em 0;border-radius:6px}
audio{width:100%} label{margin-right:2em}
</style></head><body>
<h1>Which accompaniment fits the music better?</h1>
<p>For each of the __COUNT__ pairs, listen to both versions and pick the one where the added
instrument fits the rest of the music better. Then download your answers and send the file.</p>
<p>Your name or id: <input id="rater" size="20"></p>
<div id="trials"></div>
<button onclick="download()">Download answers (CSV)</button>
<script>
const TRIALS = __TRIALS__;
const MAP = __MAP__;
const box = document.getElementById("trials");
TRIALS.forEach((t, i) => {
  const div = document.createElement("div");
  div.className = "trial";
  div.innerHTML = `<b>Pair ${i + 1}</b><br>A <audio controls preload="none"
    src="audio/${t.a}.wav"></audio>B <audio controls preload="none" src="audio/${t.b}.wav">
    </audio><label><input type="radio" name="q${i}" value="a"> A</label>
    <label><input type="radio" name="q${i}" value="b"> B</label>`;
  box.appendChild(div);
});
function csv(v) {
  v = String(v);
  return /[",\\r\\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
}
function download() {
  const rater = document.getElementById("rater").value.trim();
  if (!rater) { alert("Please enter your name or id."); return; }
  const rows = ["rater,example,system_a,system_b,preferred"];
  let missing = 0;
  TRIALS.forEach((t, i) => {
    const pick = document.querySelector(`input[name=q${i}]:checked`);
    if (!pick) { missing++; return; }
    const a = MAP[t.a][1], b = MAP[t.b][1];
    rows.push([rater, t.example, a, b, pick.value === "a" ? a : b].map(csv).join(","));
  });
  if (missing && !confirm(`${missing} pairs unanswered; download anyway?`)) return;
  const blob = new Blob([rows.join("\\n") + "\\n"], {type: "text/csv"});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `answers-${rater}.csv`;
  link.click();
}
</script></body></html>
"""
