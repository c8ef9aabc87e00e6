"""Typed params: plain YAML data turned into dataclasses, checked as it goes.

A section is a dataclass whose fields carry a type, a default and, through `limit`, a constraint;
`from_dict` converts and checks a YAML mapping into it, naming the key at fault in a one-line
`ConfigError`, then calls the section's `validate(key)` if it has one. The sections themselves live
with their owners: pipeline/config.py (the data stages, and the whole file), model/config.py (the model side).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import field
from typing import Any, Literal

from pipeline.errors import ConfigError


def limit(default: Any, *, at_least: float | None = None, above: float | None = None,
          below: float | None = None, at_most: float | None = None, pattern: str | None = None) -> Any:
    """A field with a default and a constraint that `from_dict` checks (None values are not checked)."""
    rules = {k: v for k, v in dict(at_least=at_least, above=above, below=below, at_most=at_most, pattern=pattern).items() if v is not None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=rules)
    return field(default=default, metadata=rules)


def check_limits(obj: Any, key: str) -> None:
    """Raise a one-line ConfigError for the first field of `obj` outside its `limit`."""
    for f in dataclasses.fields(obj):
        value, rules = getattr(obj, f.name), f.metadata
        if value is None or not rules:
            continue
        broken = (
            ("at_least" in rules and value < rules["at_least"] and f">= {rules['at_least']}")
            or ("above" in rules and value <= rules["above"] and f"> {rules['above']}")
            or ("below" in rules and value >= rules["below"] and f"< {rules['below']}")
            or ("at_most" in rules and value > rules["at_most"] and f"<= {rules['at_most']}")
            or ("pattern" in rules and not re.fullmatch(rules["pattern"], value) and f"one of {rules['pattern']}")
        )
        if broken:
            raise ConfigError(f"{_join(key, f.name)} must be {broken}, got {value!r}")


def from_dict(cls: Any, value: Any, key: str) -> Any:
    """Convert plain YAML data into `cls` (a dataclass or typing annotation), checking as it goes."""
    label = key or "top level"
    if dataclasses.is_dataclass(cls):
        if not isinstance(value, dict):
            raise ConfigError(f"{label} must be a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(f"unknown key '{_join(key, unknown[0])}'")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = from_dict(hints[name], value[name], _join(key, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key '{_join(key, name)}'")
        obj = cls(**kwargs)
        check_limits(obj, key)
        if hasattr(obj, "validate"):
            obj.validate(key)
        return obj
    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{label} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return from_dict(inner, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{label} must be a list, got {type(value).__name__}")
        return [from_dict(args[0], v, f"{label}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{label} must be a mapping, got {type(value).__name__}")
        return {str(k): from_dict(args[1], v, _join(key, str(k))) for k, v in value.items()}
    if cls is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{label} must be true or false, got {value!r}")
        return value
    if cls is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label} must be an integer, got {value!r}")
        return value
    if cls is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label} must be a number, got {value!r}")
        return float(value)
    if cls is str:
        if not isinstance(value, str):
            raise ConfigError(f"{label} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {cls!r} at {label}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
