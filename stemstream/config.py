"""YAML -> typed dataclass configs with dotted ``key=value`` overrides.

Unknown keys are errors (the reference code's argbind silently dropped them), values are
converted to the annotated field types, and nested dataclasses are built recursively::

    cfg = load_config(TrainConfig, "configs/codec/tiny.yaml", ["optim.lr=3e-4", "steps=100"])

Each dataclass validates itself in ``__post_init__`` and raises :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stemstream.errors import ConfigError

# Sampling defaults, the paper's (A.5): every command, config and function defaults to these.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_K = 200

T = TypeVar("T")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.strip("[]()").split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
        try:
            number = float(value) if annotation is float else value
            if annotation is int:
                number = int(value) if not isinstance(value, float) or value.is_integer() else None
                if number is None:
                    raise ValueError
            return number
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
    if annotation is str:
        return str(value)
    if annotation is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} for {cls.__name__}; "
            f"known: {', '.join(sorted(fields))}"
        )
    kwargs = {
        name: _convert(value, hints[name], f"{where}.{name}" if where else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain YAML/JSON-safe data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested mapping (values parsed as YAML scalars)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Read YAML ``path`` (optional), apply dotted overrides, build and validate ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML ({err})") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    return from_dict(cls, apply_overrides(data, list(overrides)))
