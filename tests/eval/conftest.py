"""Shared fixtures of the evaluation tests."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest


@pytest.fixture()
def fake_metrics(monkeypatch):
    """Deterministic stand-ins: COCOLA = correlation-like score, beat F = energy ratio,
    embeddings = 1-s RMS frames."""
    calls = {"cocola": 0, "beat": 0}

    def cocola_score(model, stem, mix, sr, mode="both"):
        calls["cocola"] += 1
        offset = {"harmonic": 0.0, "percussive": 1.0, "both": 2.0}[mode]
        return float(np.mean(stem * mix[: len(stem)]) + offset)

    def track_beats(mix, sr, tracker="auto"):
        return np.array([np.sqrt(np.mean(mix**2))])

    def beat_f_measure(stem, mix, sr, tracker="auto", reference_beats=None):
        calls["beat"] += 1
        return float(np.sqrt(np.mean(stem**2)) / (reference_beats[0] + 1e-9))

    class Embedder:
        name = "fake"

        def embed(self, audio, sr):
            frames = audio[: len(audio) // 1600 * 1600].reshape(-1, 1600)
            return np.stack([frames.std(1), np.abs(frames).mean(1)], 1)

    def fad(a, b):
        return float(np.sum((a.mean(0) - b.mean(0)) ** 2))

    cocola = types.ModuleType("stemstream.eval.cocola")
    cocola.load_cocola = lambda path=None: "model"
    cocola.cocola_score = cocola_score
    beats = types.ModuleType("stemstream.beats")
    beats.beat_f_measure = beat_f_measure
    beats.track_beats = track_beats
    beats.resolve_tracker = lambda tracker: "fake" if tracker == "auto" else tracker
    fad_mod = types.ModuleType("stemstream.eval.fad")
    fad_mod.get_embedder = lambda name, path=None: Embedder()
    fad_mod.fad = fad
    for module in (cocola, beats, fad_mod):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return calls
