"""Reading the JSON files a run folder holds, with one-line errors that name the file.

Shared by the run's config (``prefloop.training.config``) and the lookup of a run folder's store
(``prefloop.store.run_folder``), which sits lower in the layers and must not import the config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import unicodedata
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it and the valid range."""


def read_json(path: Path, hint: str) -> Any:
    """The JSON in ``path``; a one-line ConfigError naming the file (and ``hint``) otherwise."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path} is not valid JSON ({reason}); {hint}") from None


def is_one_line(text: object, max_chars: int) -> bool:
    return (
        isinstance(text, str)
        and len(text) <= max_chars
        and not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)
    )


def short(value: Any, limit: int = 60) -> str:
    """A value from a config file for an error message: its repr, cut to ``limit`` characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dataclass_from_json(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a JSON object, checking keys and value types; ``where`` is the
    key path so far (``"query."``) for the messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'the config'} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        shown = ", ".join(short(k, 40) for k in unknown[:5])
        raise ConfigError(f"unknown config keys {shown} in {where.rstrip('.') or 'the config'}; valid keys: {', '.join(sorted(fields))}")
    missing = [
        name for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing config keys {', '.join(where + m for m in missing)}")
    values = {name: _json_value(data[name], hints[name], where + name) for name in data}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {str(exc)[:300]}") from None


def _json_value(value: Any, annotation: Any, key: str) -> Any:
    """``value`` (parsed JSON) as the Python value of a field typed ``annotation``."""
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        return dataclass_from_json(annotation, value, key + ".")
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _json_value(value, options[0], key)
        if str in options and isinstance(value, str):  # a name, or a Python object's (import_paths)
            return value
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is Path:
        if isinstance(value, str) and value and "\x00" not in value:
            return Path(value)
    elif origin is dict:
        if isinstance(value, dict):
            return {k: _json_value(v, args[1], f"{key}.{k}") for k, v in value.items()}
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if isinstance(value, (list, tuple)):
            return tuple(_json_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    raise ConfigError(f"{key} must be {_type_words(annotation)}, got {short(value)}")


def _type_words(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in args)
    words = {bool: "true or false", int: "an integer (64 bits)", float: "a finite number", str: "a string",
             Path: "a non-empty path string", type(None): "null"}
    if annotation in words:
        return words[annotation]
    if origin is dict:
        return f"an object whose values are each {_type_words(args[1])}"
    if origin is tuple:
        return f"a list whose items are each {_type_words(args[0])}"
    return getattr(annotation, "__name__", str(annotation))
