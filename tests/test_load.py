"""A small run of benchmarks/load_test.py on both backends: many rater processes, no label lost."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from prefloop.store import sqlite_url

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "load_test.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("prefloop_benchmark_load_test", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


load_test = _load_module()


def test_eight_rater_processes_lose_and_double_count_nothing(store_url: str) -> None:
    config = load_test.LoadConfig(
        raters=8, pairs=40, think_ms=2.0, skip_fraction=0.2, double_submit_fraction=0.3,
        slow_fraction=0.05, slow_lease_seconds=0.05, max_seconds=60.0,
    )
    result = load_test.run_backend(store_url, "test", config)

    assert result["rater_errors"] == []
    assert result["invariants"] == {name: 0 for name in result["invariants"]}
    # every pair got exactly the labels it asked for: 40 pairs, every 4th needs two raters
    assert result["labels_expected"] == 50 == result["labels_acknowledged"]
    assert result["double_submits"] > 0 and result["releases"] > 0  # those paths were exercised
    assert result["claims"] >= 50


def test_the_checker_notices_a_lost_and_an_unacknowledged_label(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "prefs.sqlite")
    config = load_test.LoadConfig(raters=2, pairs=3, double_every=100)
    wanted = load_test.seed_run(url, "run", config)
    from prefloop.store import PreferenceStore

    with PreferenceStore(url, "run") as store:
        first, second = sorted(wanted)[:2]
        store.claim_next("r1")
        kept = store.answer(first, "r1", "left", 1.0)
        store.claim_next("r1")
        store.answer(second, "r1", "right", 1.0)  # in the database, but no rater was told
    told = [(kept.id, first, "r1", "left"), (kept.id + 100, first, "r2", "left")]  # one never stored
    reports = [{"labels": told, "double_submit_changed": 0, "error": None}]

    invariants = load_test.verify(url, "run", wanted, reports)

    assert invariants["lost_labels"] == 1
    assert invariants["unacknowledged_labels"] == 1
    assert invariants["incomplete_pairs"] == 1  # the third pair was never answered
    assert invariants["duplicate_live_labels"] == invariants["status_mismatches"] == 0


@pytest.mark.parametrize("argv", [["--raters", "1"], ["--max-seconds", "0"]])
def test_bad_bounds_are_refused(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="raters|max_seconds"):
        load_test.main([*argv, "--out", str(tmp_path / "x.json")])
