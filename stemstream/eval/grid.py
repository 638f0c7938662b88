"""``stemstream experiment grid``: train and evaluate a ``(t_f, k)`` grid plus baselines from
one YAML, then draw the paper's figures.

Example (``configs/experiments/cpu_grid.yaml``)::

    train_config: configs/model/cpu_k1_tf0.yaml   # base recipe of every model
    out_dir: runs/grid-cpu
    models:                                      # name -> dotted overrides of the recipe
      k1_tf-50: [model.future_frames=-50]
      k1_tf0: {checkpoint: default}              # or a model trained elsewhere
      k1_tf50: [model.future_frames=50]
      k50_tf0: [model.chunk_frames=50]
      prefix: [family=prefix]
    eval:                                        # fields of stemstream.eval.run.EvalConfig
      corpus: corpora/synth20h
      split: test
      num_examples: 64
    guidance: 2                                  # optional: the streaming models are
                                                 # evaluated with input guidance 2 (or
                                                 # [6, 2, 2, 2], one per codebook)

A ``{checkpoint: PATH}`` entry may end in ``,guidance=W`` like ``eval run --systems``.

Every step is resumable: training resumes from each model's newest checkpoint, exported
models are reused, and the evaluation reuses the audio it already wrote. Rerun the command
after an interruption.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from stemstream.errors import ConfigError

log = logging.getLogger(__name__)


def load_grid(path: str | Path) -> dict[str, Any]:
    """Read and validate a grid YAML."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such grid file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    unknown = sorted(set(data) - {"train_config", "out_dir", "models", "eval", "guidance"})
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}")
    for key in ("train_config", "out_dir", "models", "eval"):
        if key not in data:
            raise ConfigError(f"{path}: missing {key!r}")
    if "guidance" in data:
        from stemstream.guidance import parse_guidance

        if isinstance(data["guidance"], str):  # YAML numbers and lists only
            raise ConfigError(f"{path}: guidance must be a number or a list of one per "
                              f"codebook, got {data['guidance']!r}")
        try:
            data["guidance"] = parse_guidance(data["guidance"])
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    models = data["models"]
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"{path}: 'models' must map names to lists of overrides")
    for name, overrides in models.items():
        if isinstance(overrides, dict):
            if set(overrides) != {"checkpoint"} or not isinstance(overrides["checkpoint"], str):
                raise ConfigError(f"{path}: models.{name} as a mapping takes only 'checkpoint'")
            continue
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError(
                f"{path}: models.{name} must be a list of 'key=value' strings or "
                "{checkpoint: PATH}"
            )
    return data


def run_grid(path: str | Path, progress: bool = True, train: bool = True) -> dict[str, Any]:
    """Train (or resume) every model, export it, evaluate all together and plot."""
    from stemstream.config import load_config
    from stemstream.eval.plots import plot_runs
    from stemstream.eval.run import EvalConfig, run_eval, split_guidance
    from stemstream.guidance import format_guidance
    from stemstream.train import ModelTrainConfig, ModelTrainer

    grid = load_grid(path)
    out = Path(grid["out_dir"])
    systems = {}
    for name, overrides in grid["models"].items():
        if isinstance(overrides, dict):  # an existing model: evaluated, not trained
            spec = overrides["checkpoint"]
            checkpoint, _ = split_guidance(spec)
            if checkpoint != "default" and not Path(checkpoint).exists():
                raise ConfigError(f"models.{name}: no such checkpoint {spec}")
            systems[name] = spec
            continue
        model_dir = out / "models" / name
        exported = model_dir / "model.safetensors"
        config = load_config(ModelTrainConfig, grid["train_config"],
                             [*overrides, f"out_dir={model_dir}"])
        if not exported.exists():
            if not train:
                raise ConfigError(f"{exported} does not exist and training is off")
            log.info("grid: training %s (%s)", name, " ".join(overrides) or "base recipe")
            trainer = ModelTrainer(config)
            trainer.run(progress=progress)
            trainer.export(exported)
        systems[name] = str(exported)
        if "guidance" in grid and config.family == "streaming":
            systems[name] += ",guidance=" + format_guidance(grid["guidance"], sep=",")
    eval_fields = dict(grid["eval"])
    try:
        config = EvalConfig(corpus=Path(eval_fields.pop("corpus")), out=out / "eval",
                            systems=systems, **eval_fields)
    except TypeError as err:
        raise ConfigError(f"{path}: bad eval settings ({err})") from None
    result = run_eval(config, progress=progress)
    plots = plot_runs([out / "eval"], out / "figures")
    return {"eval": result, "figures": [str(p) for p in plots]}
