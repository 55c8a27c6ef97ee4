"""The package's layers: a lower layer never imports a higher one.

The layers follow a segment through the loop (docs/architecture.md). Every ``import`` in every
module counts, including imports inside functions and under ``TYPE_CHECKING``: a lazy import is
still a dependency, and an upward one is how a layout stops showing the loop.

``python tests/test_layering.py`` prints the subpackage graph that docs/architecture.md holds.
"""

from __future__ import annotations

import ast
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Where each import package's files live (pyproject.toml's package-dir).
PACKAGE_DIRS = {
    "prefloop": ROOT / "src" / "prefloop",
    "prefloop.envs": ROOT / "envs",
    "prefloop.reward_models": ROOT / "reward_models",
    "prefloop.apps": ROOT / "apps",
}

# Lowest first. A module may import its own layer and any lower one. A module belongs to the
# layer of the longest prefix that matches its name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", (
        "prefloop._moved", "prefloop.types", "prefloop.serialization", "prefloop.credentials",
        "prefloop.untrusted", "prefloop.config_files", "prefloop.cost", "prefloop.metrics",
        "prefloop.plots", "prefloop.import_paths", "prefloop.structured_obs", "prefloop.stacked_frames",
    )),
    ("envs", ("prefloop.envs",)),
    ("reward_models", ("prefloop.reward_models",)),
    ("store", ("prefloop.store",)),
    ("datasets", ("prefloop.datasets",)),
    ("teachers", ("prefloop.teachers",)),
    ("training", ("prefloop.training",)),
    ("bench", ("prefloop.bench",)),
    ("ops", ("prefloop.ops",)),
    ("apps", ("prefloop.apps",)),
    ("cli", ("prefloop.cli",)),
    ("package", ("prefloop",)),  # prefloop/__init__.py: the package's front door
]


def layer_of(module: str) -> tuple[int, str]:
    """``(rank, layer name)`` of a module name; ``prefloop`` itself is the top."""
    best: tuple[int, int, str] | None = None
    for rank, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank, name)
    if best is None:
        raise KeyError(f"{module} is in no layer; add it to LAYERS in tests/test_layering.py")
    return best[1], best[2]


def module_sources() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if any(part.startswith(".") or part in ("static", "__pycache__") for part in rel.parts):
                continue
            if package != "prefloop" and path.parent != folder and not (path.parent / "__init__.py").exists():
                continue
            if package == "prefloop" and any(part in ("envs", "reward_models", "apps") for part in rel.parts[:1]):
                continue
            found[".".join([package, *parts])] = path
    return found


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The prefloop modules ``module``'s file imports (``from pkg import name`` counts as the
    submodule ``pkg.name`` when that is a module, else as ``pkg``)."""
    is_package = path.name == "__init__.py"
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    result: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            result.update(alias.name for alias in node.names if alias.name.split(".")[0] == "prefloop")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "prefloop":
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                result.add(candidate if candidate in known else target)
    return result


def upward_imports(modules: dict[str, Path]) -> list[str]:
    """One line per import of a higher layer."""
    known = set(modules)
    problems = []
    for module, path in sorted(modules.items()):
        rank, name = layer_of(module)
        for target in sorted(imported_modules(module, path, known)):
            target_rank, target_name = layer_of(target)
            if target_rank > rank:
                problems.append(f"{module} ({name}) imports {target} ({target_name})")
    return problems


def subpackage_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Layer -> the lower layers its modules import (its own layer left out)."""
    known = set(modules)
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        _, name = layer_of(module)
        graph[name]
        for target in imported_modules(module, path, known):
            target_name = layer_of(target)[1]
            if target_name != name:
                graph[name].add(target_name)
    return graph


def graph_markdown(modules: dict[str, Path]) -> str:
    graph = subpackage_graph(modules)
    order = [name for name, _ in LAYERS]
    lines = ["| layer | imports |", "|---|---|"]
    for name in order:
        if name in graph:
            imports = sorted(graph[name], key=order.index)
            lines.append(f"| `{name}` | {', '.join(f'`{i}`' for i in imports) or '—'} |")
    return "\n".join(lines) + "\n"


MAX_MODULE_LINES = 500
REASON = "Longer than 500 lines because"
# Modules over MAX_MODULE_LINES that another piece of work is splitting right now, each with who and
# why; that work removes its entry (an entry for a module no longer too long fails the test).
BEING_SPLIT: dict[str, str] = {}


def long_module_problems(modules: dict[str, Path], being_split: dict[str, str]) -> list[str]:
    """One line per module over :data:`MAX_MODULE_LINES` whose docstring's first lines give no
    sentence starting "Longer than 500 lines because", and per stale :data:`BEING_SPLIT` entry."""
    problems = []
    for module, path in sorted(modules.items()):
        text = path.read_text(encoding="utf-8")
        n_lines = text.count("\n")
        if n_lines <= MAX_MODULE_LINES:
            if module in being_split:
                problems.append(f"{module} has {n_lines} lines now: remove it from BEING_SPLIT")
            continue
        if module in being_split:
            continue
        docstring = ast.get_docstring(ast.parse(text, filename=str(path))) or ""
        head = " ".join(docstring.splitlines()[:12])
        reason = head.partition(REASON)[2].strip()
        if len(reason.split()) < 4:  # the reason, not just the phrase
            problems.append(
                f"{module} has {n_lines} lines: split it, or say why near the top of its docstring "
                f"(\"{REASON} ...\")"
            )
    problems += [f"{module} in BEING_SPLIT is not a module" for module in being_split if module not in modules]
    return problems


def test_no_module_is_long_without_a_reason() -> None:
    problems = long_module_problems(module_sources(), BEING_SPLIT)
    assert not problems, "modules over 500 lines:\n" + "\n".join(problems)


def test_the_length_guard_catches_a_long_module(tmp_path: Path) -> None:
    """A long module fails unless its docstring says why; a stale allow-list entry fails too."""
    body = "x = 1\n" * (MAX_MODULE_LINES + 1)
    silent = tmp_path / "silent.py"
    silent.write_text('"""A module."""\n' + body)
    phrase_only = tmp_path / "phrase_only.py"
    phrase_only.write_text(f'"""A module.\n\n{REASON}.\n"""\n' + body)
    explained = tmp_path / "explained.py"
    explained.write_text(f'"""A module.\n\n{REASON} its one table is generated\nand kept in one piece.\n"""\n' + body)
    short = tmp_path / "short.py"
    short.write_text('"""A module."""\n')
    modules = {"prefloop.silent": silent, "prefloop.phrase_only": phrase_only,
               "prefloop.explained": explained, "prefloop.short": short}
    problems = long_module_problems(modules, {"prefloop.short": "being split"})
    assert [line.split(" has ")[0] for line in problems] == ["prefloop.phrase_only", "prefloop.short", "prefloop.silent"]
    assert "remove it from BEING_SPLIT" in problems[1]


def test_no_module_imports_a_higher_layer() -> None:
    problems = upward_imports(module_sources())
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_the_guard_catches_an_upward_import(tmp_path: Path) -> None:
    """A store module importing the training loop is reported, lazily imported or not."""
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from prefloop.training import loop\n    return loop\n")
    relative = tmp_path / "relative.py"
    relative.write_text("from ..teachers.simulated import Teacher\n")
    modules = module_sources()
    modules["prefloop.store.lazy"] = lazy
    modules["prefloop.store.relative"] = relative
    problems = upward_imports(modules)
    assert problems == [
        "prefloop.store.lazy (store) imports prefloop.training.loop (training)",
        "prefloop.store.relative (store) imports prefloop.teachers.simulated (teachers)",
    ]


def test_every_module_has_a_layer() -> None:
    for module in module_sources():
        layer_of(module)  # raises KeyError naming the module


def test_architecture_doc_shows_the_current_graph() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert graph_markdown(module_sources()) in doc, (
        "docs/architecture.md's import table is stale: paste the output of `python tests/test_layering.py`"
    )


@pytest.mark.parametrize("old, new", [
    ("prefloop.loop", "prefloop.training.loop"),
    ("prefloop.dataset", "prefloop.datasets"),
    ("prefloop.clipworker", "prefloop.apps.clipworker"),
])
def test_old_import_paths_still_work_and_warn(old: str, new: str) -> None:
    import importlib

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old_module = importlib.import_module(old)
    new_module = importlib.import_module(new)
    assert old_module is new_module
    assert new_module.__spec__.name == new  # the real module keeps its own identity
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


if __name__ == "__main__":
    print(graph_markdown(module_sources()), end="")
