"""The blind A/B listening page."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf

from stemstream.errors import ConfigError
from stemstream.eval.abpage import make_ab_page

SYSTEMS = ["ground_truth", "random_pairing", "model_tf0"]


def test_page_hides_system_names_and_copies_audio(tmp_path):
    run = tmp_path / "run" / "examples"
    for e in range(3):
        folder = run / f"{e:04d}"
        folder.mkdir(parents=True)
        sf.write(str(folder / "input.wav"), np.zeros(100), 16000)
        for s in SYSTEMS:
            sf.write(str(folder / f"{s}.wav"), np.zeros(100), 16000)
            sf.write(str(folder / f"{s}_mix.wav"), np.full(100, 0.1), 16000)
    page = make_ab_page(tmp_path / "run", tmp_path / "page", pairs_per_example=None)
    text = page.read_text()
    visible = re.sub(r"<script>.*</script>", "", text, flags=re.S)
    assert not any(s in visible for s in SYSTEMS)
    trials = json.loads(re.search(r"const TRIALS = (\[.*?\]);", text).group(1))
    mapping = json.loads(re.search(r"const MAP = (\{.*?\});", text).group(1))
    assert len(trials) == 3 * 3  # every pair of 3 systems in 3 examples
    assert {m[1] for m in mapping.values()} == set(SYSTEMS)
    for t in trials:
        assert (tmp_path / "page" / "audio" / f"{t['a']}.wav").exists()
        assert mapping[t["a"]][0] == t["example"] == mapping[t["b"]][0]
    with pytest.raises(ConfigError, match="no example folders"):
        make_ab_page(tmp_path / "page" / "audio", tmp_path / "x")
