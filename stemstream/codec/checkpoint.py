"""Codec weights on disk: descript-audio-codec ``.pth`` files in, safetensors in and out.

- :func:`load_dac_checkpoint` reads a descript-audio-codec weights file (``{"state_dict":
  ..., "metadata": {"kwargs": {...}}}``, as ``DAC.save(path, package=False)`` and the causal
  fork write it) with ``torch.load(weights_only=True)``: tensors, containers and plain
  numbers only, plus numpy scalars/dtypes on an explicit allow-list. Nothing else is
  unpickled. ``torch.package`` files (``package.pth``) are refused; use ``weights.pth``.
- :func:`save_codec` / :func:`load_codec` store any of our codecs as safetensors with the
  class name, config JSON and weights hash in the file's metadata.

Every failure raises :class:`~stemstream.codec.base.CodecError` with one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stemstream.checkpoint import weights_hash
from stemstream.codec.base import Codec, CodecError
from stemstream.codec.dac import DAC, DACConfig
from stemstream.codec.framecodec import FrameCodec, FrameCodecConfig
from stemstream.codec.mock import MockCodec, MockCodecConfig
from stemstream.errors import ConfigError

FORMAT = "stemstream-codec/1"
CODEC_CLASSES: dict[str, tuple[type[Codec], Any]] = {
    "DAC": (DAC, DACConfig),
    "MockCodec": (MockCodec, MockCodecConfig),
    "FrameCodec": (FrameCodec, FrameCodecConfig),
}


def register_codec_class(codec_class: type[Codec], config_class: Any) -> None:
    """Make :func:`save_codec` / :func:`load_codec` handle another codec class.

    ``codec_class(config)`` must build it and ``config_class.from_dict(data)`` must invert
    its :meth:`~stemstream.codec.base.Codec.config_dict`.
    """
    CODEC_CLASSES[codec_class.__name__] = (codec_class, config_class)


# DAC kwargs we map 1:1 onto DACConfig fields.
_DAC_KWARGS = {field.name for field in dataclasses.fields(DACConfig)}
# Options of the causal fork (slSeanWU/descript-audio-codec) we accept at these values only.
_FORK_DEFAULTS: dict[str, Any] = {
    "use_s4": False,
    "keep_conv_nonres": True,
    "frame_indep_encoder": False,
    "frame_indep_decoder": False,
    "use_final_tanh": True,
    "use_depth_separable_conv": False,
}


def _numpy_safe_globals() -> list[Any]:
    """numpy scalars and dtypes (plain numbers), under their numpy 1.x and 2.x names."""
    core = getattr(np, "_core", None) or np.core  # numpy 2.x / 1.x
    scalar = core.multiarray.scalar
    dtypes = [np.dtype] + [type(np.dtype(code)) for code in "?bhilqBHILQefd"]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), *dtypes]


def _fail(path: Path, reason: str) -> CodecError:
    return CodecError(f"{path}: {reason}")


def read_dac_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a descript-audio-codec weights file safely.

    Returns:
        ``(state_dict, kwargs)``: the generator's tensors and its constructor arguments.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = [line for line in str(err).splitlines() if "GLOBAL" in line.upper()]
        if blocked:  # a class or function reference: never executed
            raise _fail(
                path,
                "refusing to unpickle objects other than tensors and plain data "
                f"({blocked[0].strip()[:200]})",
            ) from None
        raise _fail(path, "not a readable torch checkpoint (unsupported pickle data)") from None
    except Exception as err:  # torch raises many types for truncated/foreign files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise _fail(path, f"not a readable torch checkpoint ({first[:200]})") from None
    if not isinstance(data, Mapping) or "state_dict" not in data or "metadata" not in data:
        raise _fail(
            path, "not a descript-audio-codec checkpoint (needs 'state_dict' and 'metadata')"
        )
    state, metadata = data["state_dict"], data["metadata"]
    kwargs = metadata.get("kwargs") if isinstance(metadata, Mapping) else None
    if not isinstance(kwargs, Mapping):
        raise _fail(path, "not a descript-audio-codec checkpoint (no metadata.kwargs)")
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise _fail(path, "'state_dict' is not a mapping of names to tensors")
    return dict(state), dict(kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dac_config_from_kwargs(kwargs: Mapping[str, Any]) -> DACConfig:
    """The :class:`DACConfig` of descript-audio-codec ``DAC(**kwargs)``.

    Unknown kwargs, and fork options we do not implement (S4 blocks, frame-independent
    coders, depthwise-separable convs, no final tanh), raise :class:`CodecError`.
    """
    unknown = sorted(set(kwargs) - _DAC_KWARGS - set(_FORK_DEFAULTS))
    if unknown:
        raise CodecError(f"unknown descript-audio-codec kwargs: {', '.join(unknown)}")
    unsupported = [
        f"{key}={kwargs[key]!r}"
        for key, default in _FORK_DEFAULTS.items()
        if key in kwargs and bool(kwargs[key]) != default
    ]
    if unsupported:
        raise CodecError(f"unsupported DAC variant: {', '.join(unsupported)}")
    data = {key: _plain(value) for key, value in kwargs.items() if key in _DAC_KWARGS}
    if isinstance(data.get("quantizer_dropout"), bool):  # DAC's default is False
        data["quantizer_dropout"] = float(data["quantizer_dropout"])
    try:
        return DACConfig.from_dict(data)
    except ConfigError as err:
        raise CodecError(f"invalid DAC kwargs: {err}") from None


def _skeleton_shapes(config: DACConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only, no memory
        return {key: value.shape for key, value in DAC(config).state_dict().items()}


def convert_dac_layout(
    state_dict: Mapping[str, torch.Tensor], source: DACConfig, target: DACConfig
) -> dict[str, torch.Tensor]:
    """Rename state-dict keys between the causal and non-causal layouts.

    Both layouts hold the same parameters in the same order; the causal one has extra
    parameter-free padding entries that shift ``Sequential`` indices. ``source`` and
    ``target`` must agree on everything but the causal flags.
    """
    neutral = {"causal_encoder": False, "causal_decoder": False, "ignore_left_crop": False}
    if dataclasses.replace(source, **neutral) != dataclasses.replace(target, **neutral):
        raise CodecError("layouts can only be converted between configs differing in causality")
    source_keys, target_keys = list(_skeleton_shapes(source)), list(_skeleton_shapes(target))
    mapping = dict(zip(source_keys, target_keys, strict=True))
    missing = [key for key in source_keys if key not in state_dict]
    if missing:
        raise CodecError(f"state dict lacks {len(missing)} DAC parameters, e.g. {missing[0]}")
    return {mapping[key]: state_dict[key] for key in source_keys}


def load_state_checked(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str
) -> None:
    """``load_state_dict(strict=True)`` with a one-line :class:`CodecError` on mismatch."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong = [
        f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})")
    if problems:
        raise CodecError(f"{what} does not fit {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def load_dac_checkpoint(path: str | Path, causal: bool | None = None) -> DAC:
    """Build a :class:`DAC` from a descript-audio-codec weights file.

    Args:
        path: local ``.pth`` (official releases or the causal fork's, e.g. the paper's
            ``250121_stemmix_dac_weights_400k_steps.pth``).
        causal: ``None`` keeps the checkpoint's causality; ``True``/``False`` rebuilds the
            network with causal or symmetric padding (for fine-tuning a non-causal model
            into a causal one) and renames the keys accordingly.

    Returns:
        The model in eval mode, on the CPU.
    """
    state, kwargs = read_dac_checkpoint(path)
    try:
        config = dac_config_from_kwargs(kwargs)
    except CodecError as err:
        raise CodecError(f"{path}: {err}") from None
    if causal is not None:
        target = dataclasses.replace(config, causal_encoder=causal, causal_decoder=causal)
        if target != config:
            state = convert_dac_layout(state, config, target)
            config = target
    model = DAC(config)
    load_state_checked(model, state, str(path))
    return model.eval()


def save_codec(codec: Codec, path: str | Path) -> Path:
    """Write ``codec`` as safetensors (config JSON and weights hash in the metadata).

    The file is written atomically (temporary file, then rename).
    """
    from safetensors.torch import save_file

    name = type(codec).__name__
    if name not in CODEC_CLASSES:
        raise CodecError(f"cannot save codec class {name}; known: {', '.join(CODEC_CLASSES)}")
    path = Path(path)
    tensors = {key: value.detach().cpu().contiguous() for key, value in codec.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "codec_class": name,
        "config": json.dumps(codec.config_dict()),
        "weights_hash": weights_hash(codec),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_codec(path: str | Path) -> Codec:
    """Read a codec written by :func:`save_codec` (on the CPU, in eval mode)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise _fail(path, "codec file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise _fail(path, f"not a readable safetensors file ({first[:200]})") from None
    if metadata.get("format") != FORMAT:
        raise _fail(path, f"not a stemstream codec (format {metadata.get('format')!r})")
    name = metadata.get("codec_class", "")
    if name not in CODEC_CLASSES:
        raise _fail(path, f"unknown codec class {name!r}; known: {', '.join(CODEC_CLASSES)}")
    codec_class, config_class = CODEC_CLASSES[name]
    try:
        data = json.loads(metadata.get("config", ""))
        if not isinstance(data, dict):
            raise ValueError("config is not a JSON object")
        config = config_class.from_dict(data)
    except (ValueError, TypeError, ConfigError) as err:
        raise _fail(path, f"bad codec config ({err})") from None
    codec = codec_class(config)
    load_state_checked(codec, tensors, str(path))
    if weights_hash(codec) != metadata.get("weights_hash"):
        raise _fail(path, "weights do not match their recorded hash (corrupt file?)")
    return codec.eval()
