"""Old import paths of modules that moved into subpackages (prefloop 0.1's flat layout).

``import prefloop.loop`` still works: it returns the module now at ``prefloop.training.loop`` (the
same module object, so patching either name patches both) and warns once with a
``DeprecationWarning`` naming the new path. The old names go away in prefloop 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED_MODULES: dict[str, str] = {
    "prefloop.identity": "prefloop.store.identity",
    "prefloop.crowd": "prefloop.teachers.crowd",
    "prefloop.teacher_fit": "prefloop.teachers.fitted",
    "prefloop.teacher_specs": "prefloop.teachers.specs",
    "prefloop.recorded": "prefloop.teachers.recorded",
    "prefloop.clock_rater": "prefloop.teachers.clock",
    "prefloop.labeling": "prefloop.teachers.labeling",
    **{
        f"prefloop.{name}": f"prefloop.training.{name}"
        for name in (
            "algos", "callbacks", "checkpoints", "config", "distinguishable", "exploration",
            "human_time", "learner", "loop", "pacing", "query", "report", "resume_state",
            "reward_scale", "rundir", "schedule", "semi_supervised",
        )
    },
    "prefloop.dataset": "prefloop.datasets",
    "prefloop.bench_report": "prefloop.bench.report",
    "prefloop.doctor": "prefloop.ops.doctor",
    "prefloop.local_postgres": "prefloop.ops.local_postgres",
    "prefloop.cli_raters": "prefloop.cli.raters",
    "prefloop.clipworker": "prefloop.apps.clipworker",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and loads it as the module at its new name."""

    def __init__(self) -> None:
        self._real_specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new_name = MOVED_MODULES[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new_name}; import it from there (the old name goes in prefloop 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new_name)
        self._real_specs[new_name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just set the module's __spec__ to the old name's; put the real one
        # back so that the module keeps one identity (reload, pickling by reference, tracebacks).
        module.__spec__ = self._real_specs[module.__name__]


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
