"""Model checkpoints for inference: rebuild any family's model from a checkpoint
(:func:`load_model`) and write the weights-only export (:func:`export_checkpoint`), without the
training code (``stemstream.train`` writes the training checkpoints these read).

A checkpoint is a safetensors file whose metadata names its ``kind`` (:data:`MODEL_KIND`:
exported weights; :data:`TRAIN_KIND`: a training checkpoint, which also holds optimizer and RNG
state), the model ``family``, the family's config (``model``) and the codec identity.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from stemstream import checkpoint
from stemstream.config import from_dict
from stemstream.errors import ConfigError
from stemstream.guidance import Guidance, check_codebooks, guidance_json, parse_guidance

TRAIN_KIND = "model-train"
MODEL_KIND = "model"
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _classes(module: str, config_name: str, model_name: str) -> Callable[[], tuple[type, type]]:
    def load() -> tuple[type, type]:
        mod = importlib.import_module(module)
        return getattr(mod, config_name), getattr(mod, model_name)

    return load


ARCHITECTURES: dict[str, Callable[[], tuple[type, type]]] = {
    "streaming": _classes("stemstream.model.streaming", "StreamingDecoderConfig",
                          "StreamingDecoder"),
    "prefix": _classes("stemstream.model.prefix", "PrefixDecoderConfig", "PrefixDecoder"),
    "stemgen": _classes("stemstream.model.stemgen", "StemGenConfig", "StemGenModel"),
}
"""Family name -> ``() -> (config class, model class)`` (imports stay lazy)."""


def register_architecture(name: str, classes: Callable[[], tuple[type, type]]) -> None:
    """Make checkpoints of family ``name`` loadable."""
    ARCHITECTURES[name] = classes


def build_model(family: str, config: dict[str, Any]) -> tuple[Any, nn.Module]:
    """``(config dataclass, fresh model)`` of ``family`` from a config dict."""
    if family not in ARCHITECTURES:
        raise ConfigError(f"unknown model family {family!r}; known: "
                          f"{', '.join(sorted(ARCHITECTURES))}")
    config_class, model_class = ARCHITECTURES[family]()
    parsed = from_dict(config_class, config, "model")
    return parsed, model_class(parsed)


class LoadedModel(NamedTuple):
    """A model rebuilt from a checkpoint (eval mode, CPU), its family, config and codec, and
    the input guidance it is meant to be sampled with (stored at export; 1 = plain)."""

    model: nn.Module
    family: str
    config: Any
    codec: dict[str, Any]
    guidance: Guidance = 1.0


def load_model(path: str | Path, family: str | None = None) -> LoadedModel:
    """Rebuild the model held in an exported (``kind: model``) or training checkpoint.

    Raises:
        CheckpointError: not a model checkpoint, or of another ``family`` than asked for.
    """
    tensors, meta = checkpoint.load(path)
    if meta.get("kind") not in (MODEL_KIND, TRAIN_KIND):
        raise checkpoint.CheckpointError(f"{path}: not a model checkpoint ({meta.get('kind')})")
    if family is not None and meta.get("family") != family:
        raise checkpoint.CheckpointError(
            f"{path}: holds a {meta.get('family')!r} model, expected {family!r}"
        )
    config, model = build_model(meta["family"], meta["model"])
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    return LoadedModel(model.eval(), meta["family"], config, meta["codec"],
                       parse_guidance(meta.get("guidance", 1.0)))


def export_checkpoint(path: str | Path, out: str | Path, dtype: str | None = None,
                      guidance: Guidance | None = None) -> Path:
    """Write the model of a training checkpoint as an inference checkpoint (``kind: model``;
    no optimizer or RNG state) without the token dump the trainer would need.

    ``dtype`` (a key of :data:`STORE_DTYPES`) stores the floating-point weights in that type,
    e.g. ``float16`` for half the file size; :func:`load_model` casts them back to the
    model's float32. ``guidance`` stores the input guidance the model is meant to be sampled
    with (streaming models; front ends use it unless told otherwise): one number, or one per
    codebook. With either the source
    may also be an exported checkpoint.
    """
    if dtype is not None and dtype not in STORE_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    if guidance is not None:
        guidance = parse_guidance(guidance)
    tensors, meta = checkpoint.load(path)
    if meta.get("kind") == MODEL_KIND and dtype is None and guidance is None:
        raise checkpoint.CheckpointError(f"{path}: already an exported model checkpoint")
    if meta.get("kind") not in (TRAIN_KIND, MODEL_KIND):
        raise checkpoint.CheckpointError(f"{path}: not a model training checkpoint")
    model = {k: v for k, v in tensors.items() if k.startswith("model/")}
    keep = ("family", "model", "codec", "stemstream_version", "step", "stored_dtype",
            "guidance")
    extra: dict[str, Any] = {}
    if dtype is not None:
        model = {k: v.to(STORE_DTYPES[dtype]) if v.is_floating_point() else v
                 for k, v in model.items()}
        extra["stored_dtype"] = dtype
    if guidance is not None:
        if meta.get("family") != "streaming":
            raise ConfigError(f"input guidance applies to streaming models, not "
                              f"{meta.get('family')!r}")
        config, _ = build_model(meta["family"], meta["model"])
        check_codebooks(guidance, config.num_codebooks)
        extra["guidance"] = guidance_json(guidance)
    return checkpoint.save(out, model, {"kind": MODEL_KIND} | {k: meta[k] for k in keep
                                                              if k in meta} | extra)
