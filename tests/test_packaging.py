"""One installable package: every folder is packaged, and the built wheel imports on its own."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def declared_packages() -> tuple[dict[str, str], list[str]]:
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return setuptools_cfg["package-dir"], setuptools_cfg["packages"]


def package_folders() -> set[str]:
    """Dotted names of every folder with an ``__init__.py`` under the mapped roots."""
    package_dir, _ = declared_packages()
    found = set()
    for name, folder in package_dir.items():
        root = ROOT / folder
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(root)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    package_dir, packages = declared_packages()
    assert set(package_dir) == {"prefloop", "prefloop.envs", "prefloop.reward_models", "prefloop.apps"}
    missing = package_folders() - set(packages)
    assert not missing, f"package folders not listed in [tool.setuptools] packages: {sorted(missing)}"


@pytest.mark.slow
def test_built_wheel_imports_every_subpackage(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
    )
    wheel = next((tmp_path / "dist").glob("prefloop-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # a pure-Python wheel installs by unpacking
    _, packages = declared_packages()
    code = (
        "import importlib, sys\n"
        f"site = {str(site)!r}\n"
        f"for name in {packages!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(site), (name, module.__file__)\n"
        "print('ok')\n"
    )
    # PYTHONPATH comes before the editable install's finder, so the wheel's copy is what imports.
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
