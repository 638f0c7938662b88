"""Safe, atomic checkpoints in safetensors (no pickle is ever loaded).

A checkpoint is one ``.safetensors`` file: tensors (model weights, optimizer moments, RNG
state) plus a JSON document in the file's metadata under ``"stemstream"`` (resolved config,
code version, codec identity, step, data position...). Writes go to a temporary file that is
renamed into place, so a process killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stemstream import __version__
from stemstream.errors import StemstreamError

META_KEY = "stemstream"


class CheckpointError(StemstreamError):
    """A missing, truncated, corrupt or foreign checkpoint."""


def save(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and JSON-able ``meta`` atomically to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    doc = {"code_version": __version__} | meta
    # safetensors refuses shared/non-contiguous storage: give each tensor its own copy.
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    save_file(flat, str(tmp), metadata={META_KEY: json.dumps(doc)})
    os.replace(tmp, path)
    return path


def load(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save`. Raises :class:`CheckpointError`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as handle:
            raw = (handle.metadata() or {}).get(META_KEY)
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({err})") from err
    if raw is None:
        raise CheckpointError(f"{path}: not a stemstream checkpoint (no '{META_KEY}' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupt metadata ({err})") from err
    return tensors, meta


def read_meta(path: str | Path) -> dict[str, Any]:
    """Only the JSON metadata (cheap: tensors are not read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({err})") from err
    if raw is None:
        raise CheckpointError(f"{path}: not a stemstream checkpoint (no '{META_KEY}' metadata)")
    return json.loads(raw)


# ------------------------------------------------------------------ optimizer / RNG state


def flatten_optimizer(
    optimizer: torch.optim.Optimizer, prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as tensors (``prefix/state/<param>/<name>``) + JSON (groups and
    non-tensor state values)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}/state/{index}/{name}"] = value
            else:
                scalars[f"{index}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    prefix: str,
) -> None:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    head = f"{prefix}/state/"
    for key, value in tensors.items():
        if key.startswith(head):
            index, name = key[len(head) :].split("/", 1)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state(
    numpy_rng: np.random.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch CPU (and CUDA) generator states as tensors; a numpy Generator's state as JSON."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = s
    meta = {"numpy": numpy_rng.bit_generator.state} if numpy_rng is not None else {}
    return tensors, meta


def restore_rng(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    numpy_rng: np.random.Generator | None = None,
) -> None:
    torch.set_rng_state(tensors["rng/torch"].cpu())
    if torch.cuda.is_available():
        states = [tensors[k].cpu() for k in sorted(tensors) if k.startswith("rng/cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
    if numpy_rng is not None and "numpy" in meta:
        numpy_rng.bit_generator.state = meta["numpy"]


def weights_hash(module: torch.nn.Module) -> str:
    """A short, stable hash of a module's state dict (names, dtypes, shapes and values; int8
    dynamically quantised layers included): any model, codec or language model."""
    return hash_state(sorted(module.state_dict().items()))


def hash_state(items: Iterable[tuple[str, Any]]) -> str:
    """A short, stable hash of named tensors (and values) in the order given."""
    digest = hashlib.sha256()
    for name, value in items:
        _hash_value(digest, name, value)
    return digest.hexdigest()[:16]


def _hash_value(digest: Any, name: str, value: Any) -> None:
    if isinstance(value, (tuple, list)):  # packed params of quantised layers
        for i, item in enumerate(value):
            _hash_value(digest, f"{name}.{i}", item)
        return
    if not isinstance(value, torch.Tensor):
        digest.update(f"{name}|{value!r}|".encode())
        return
    tensor = value.detach().cpu()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    if tensor.is_quantized:
        if tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            digest.update(f"{tensor.q_scale()}|{tensor.q_zero_point()}|".encode())
        else:
            _hash_value(digest, f"{name}.scales", tensor.q_per_channel_scales())
            _hash_value(digest, f"{name}.zero_points", tensor.q_per_channel_zero_points())
        tensor = tensor.int_repr()
    digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
