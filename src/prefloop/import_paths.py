"""Naming a user's Python object in a JSON file, and getting it back.

Users extend prefloop with their own objects (a teacher, a query rule, an env factory, a reward
network factory, an algorithm class). A run's ``config.json`` must stay JSON, so such an object is
written as its *import path*, ``"package.module:QualifiedName"`` (the form of Gymnasium's
``entry_point`` and of packaging's entry points):

- a function or class defined at the top level of an importable module is written by its path and
  imported again from it (``--resume``, the clip worker in another process);
- an *instance* (a teacher with its own state, a configured query rule) is written as
  ``"object:package.module:ClassName"``: it says what the object was, but prefloop cannot rebuild
  it, so a resumed run must be given the object again;
- a lambda, a nested function or anything defined in a script run as ``__main__`` is written the
  same way but cannot be imported elsewhere; :func:`rebuildable` tells which.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

OBJECT_PREFIX = "object:"
_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class ImportPathError(ValueError):
    """An import path that does not name an importable object; the message says what to do."""


def import_path(obj: Any) -> str:
    """``"module:qualname"`` of a function or class (e.g. ``"sb3_contrib.trpo.trpo:TRPO"``)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname:
        raise ImportPathError(f"{obj!r} has no module and name to be recorded by; pass a function or class")
    return f"{module}:{qualname}"


def describe(obj: Any) -> str:
    """What goes into a JSON file for ``obj``: its import path for a function or class, or
    ``"object:module:ClassName"`` for any other object (an instance)."""
    if isinstance(obj, type) or (callable(obj) and hasattr(obj, "__qualname__") and hasattr(obj, "__module__")):
        return import_path(obj)
    return OBJECT_PREFIX + import_path(type(obj))


def is_import_path(text: str) -> bool:
    """Whether ``text`` looks like ``module:qualname`` (not whether it imports)."""
    return bool(_PATH.match(text))


def rebuildable(path: str) -> bool:
    """Whether ``path`` (from :func:`describe`) can be imported in another process: a function or
    class at the top level of a module other than ``__main__``, not an instance."""
    if path.startswith(OBJECT_PREFIX) or not is_import_path(path):
        return False
    module, qualname = path.split(":", 1)
    return module != "__main__" and "<" not in qualname


# Packages that prefloop's extras install: a path into one that is missing names the extra.
EXTRAS_BY_PACKAGE = {"sb3_contrib": "contrib", "sbx": "sbx"}


def load(path: str, what: str) -> Any:
    """The object an import path names, e.g. ``load("sb3_contrib:TRPO", "algorithm")``.

    Raises:
        ImportPathError: one line naming ``what``, the path and why it does not load.
    """
    if path.startswith(OBJECT_PREFIX):
        raise ImportPathError(
            f"the {what} was a Python object ({path[len(OBJECT_PREFIX):]}) that cannot be rebuilt from its name; "
            "pass the object again from Python"
        )
    if not is_import_path(path):
        raise ImportPathError(f"{what} {path!r} is not an import path; write it as package.module:Name")
    module_name, qualname = path.split(":", 1)
    elsewhere = ImportPathError(
        f"the {what} {path} was defined in a script or inside a function, so it cannot be imported "
        "here; move it to the top level of an importable module, or pass it again from Python"
    )
    if "<" in qualname:
        raise elsewhere
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS_BY_PACKAGE.get(module_name.split(".")[0])
        install = f"pip install 'prefloop[{extra}]'" if extra else "install its package"
        raise ImportPathError(f"the {what} {path} does not import: {exc}; {install} or fix the path") from None
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            if module_name == "__main__":  # the script that defined it is not the one running now
                raise elsewhere from None
            raise ImportPathError(f"the {what} {path}: module {module_name} has no {qualname}; fix the path") from None
    return obj
