"""A blind pairwise A/B listening page (static HTML + audio; no server).

``make_ab_page(run_dir, out_dir)`` reads an evaluation run laid out as
``RUN_DIR/examples/<example>/<system>_mix.wav`` (what ``stemstream eval run`` writes; a flat
``RUN_DIR/<example>/<system>.wav`` layout works too), draws pairs of systems per example in
random order and sides, copies the audio under opaque names and writes ``index.html``. The
rater enters a name, answers each pair, and downloads the answers as the CSV that
``stemstream eval listening`` reads (``rater, example, system_a, system_b, preferred``).
System names never appear in the page's visible text: the page only holds a mapping from
opaque clip ids to systems, which is needed to write the CSV.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np

from stemstream.errors import ConfigError


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


def make_ab_page(run_dir: str | Path, out_dir: str | Path, pairs_per_example: int | None = 3,
                 systems: list[str] | None = None, seed: int = 0) -> Path:
    """Write the page; return the path of ``index.html``."""
    clips = find_clips(run_dir)
    rng = np.random.default_rng(seed)
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
                clip = hashlib.sha256(f"{seed}|{example}|{system}".encode()).hexdigest()[:12]
                if clip not in mapping:
                    shutil.copyfile(found[system], out / "audio" / f"{clip}.wav")
                    mapping[clip] = [example, system]
                ids.append(clip)
            trials.append({"example": example, "a": ids[0], "b": ids[1]})
    order = rng.permutation(len(trials)).tolist()
    trials = [trials[i] for i in order]
    page = _PAGE.replace("__TRIALS__", json.dumps(trials)).replace(
        "__MAP__", json.dumps(mapping)).replace("__COUNT__", str(len(trials)))
    (out / "index.html").write_text(page)
    return out / "index.html"


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
function download() {
  const rater = document.getElementById("rater").value.trim();
  if (!rater) { alert("Please enter your name or id."); return; }
  const rows = ["rater,example,system_a,system_b,preferred"];
  let missing = 0;
  TRIALS.forEach((t, i) => {
    const pick = document.querySelector(`input[name=q${i}]:checked`);
    if (!pick) { missing++; return; }
    const a = MAP[t.a][1], b = MAP[t.b][1];
    rows.push([rater, t.example, a, b, pick.value === "a" ? a : b].join(","));
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
