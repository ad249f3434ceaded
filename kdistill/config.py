"""Typed configs: dataclasses that load from YAML, reject unknown keys, take ``key=value``
overrides and serialise back to JSON/YAML unchanged.

Every stage declares one dataclass; this module is the only place that turns dicts into them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
import warnings
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from kdistill.io import write_json, write_text_atomic  # noqa: F401  (write_text_atomic: re-exported until callers move)

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that does not validate: names the file, the key and the problem."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where, source)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{source}: '{where}' = {value!r} does not match {_type_name(tp)}")
    if origin is typing.Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off as False and yes/on as True
            spelled = [a for a in (("no", "off", "false") if not value else ("yes", "on", "true")) if a in args]
            value = spelled[0] if spelled else value
        if value not in args:
            raise ConfigError(f"{source}: '{where}' = {value!r} must be one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, source=source, prefix=where)
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{where}' must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{source}: '{where}' must have {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{where}' must be a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, vt, f"{where}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{where}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{where}' must be a string, got {value!r}")
        return value
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, source: str = "<dict>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors naming
    the key and ``source`` (the file they came from)."""
    data = _renamed_keys(cls, dict(data or {}), source, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in '{prefix}'" if prefix else ""
        raise ConfigError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(prefix + '.' + k if prefix else k) for k in unknown)}{where}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        where = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], where, source)
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field missing
        raise ConfigError(f"{source}: {prefix or cls.__name__}: {err}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as err:
            raise ConfigError(f"{source}: {prefix or cls.__name__}: {err}") from None
    return obj


def _renamed_keys(cls: type, data: dict[str, Any], source: str, prefix: str) -> dict[str, Any]:
    """Old knob names a config class still accepts for one release (its ``RENAMED`` class
    attribute: old -> new, or old -> (new, {old value: new value})), with a warning naming the
    new key."""
    for old, spec in getattr(cls, "RENAMED", {}).items():
        if old not in data:
            continue
        new, values = (spec, {}) if isinstance(spec, str) else spec
        where = f"{prefix}." if prefix else ""
        if new in data:
            raise ConfigError(f"{source}: both '{where}{old}' and its new name '{where}{new}' are set; keep '{where}{new}'")
        value = data.pop(old)
        data[new] = values.get(value, value) if isinstance(value, Hashable) else value
        warnings.warn(f"{source}: '{where}{old}' is deprecated, use '{where}{new}'"
                      + (f" ({old}: {value!r} is {new}: {data[new]!r})" if values else "")
                      + "; the old name is accepted until the next release", FutureWarning, stacklevel=4)
    return data


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON/YAML-able dict (round-trips through ``from_dict``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(obj: Any) -> str:
    """Stable short hash of a config (dataclass or dict) for cache keys and skip decisions."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_overrides(overrides: Sequence[str], source: str = "command line") -> dict[str, Any]:
    """``["a.b=3", "c=[1,2]"]`` -> nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a YAML config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                          "save the config as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (), section: str | None = None) -> T:
    """Load ``cls`` from a YAML file (optionally one top-level ``section`` of it), then apply
    ``key=value`` overrides. With no path, defaults plus overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data = read_yaml(path)
        source = str(path)
        if section is not None:
            data = data.get(section) or {}
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: section '{section}' must be a mapping")
    if overrides:
        data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data, source=source, prefix=section or "")


def save_json(obj: Any, path: str | Path) -> None:
    """A config (or any dataclass / dict) as indented JSON, written atomically."""
    write_json(path, to_dict(obj), indent=2)
