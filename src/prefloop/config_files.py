"""Reading the JSON files a run folder holds, with one-line errors that name the file.

Shared by the run's config (``prefloop.training.config``) and the lookup of a run folder's store
(``prefloop.store.run_folder``), which sits lower in the layers and must not import the config.
"""

from __future__ import annotations

import json
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
