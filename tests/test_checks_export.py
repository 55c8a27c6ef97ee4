"""Rater checks travel with exported preferences: ``checks.jsonl`` / ``checks.parquet``.

A real SQLite store with gold and repeat checks from two raters (answered, one open, one undone),
exported in both layouts and imported into another store: the checks, each rater's ``raters fit``
and the E-step's estimate from the checks are what they were. Hostile check records are refused
in one line with nothing stored; exports from before checks load with none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prefloop.reward_models.reliability import RaterLabels, estimate_error_rates
from test_hostile_datasets import dump_store
from test_rater_checks import gold_of, register, store_with

from prefloop.datasets import DatasetError, export_dataset, import_dataset, load_dataset
from prefloop.datasets.export import read_run
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.teachers.fitted import answers_from_store, fit_rater
from prefloop.training.rater_checks import tally_checks
from prefloop.types import Choice

torch.set_num_threads(1)

FLIP = {Choice.LEFT: Choice.RIGHT, Choice.RIGHT: Choice.LEFT}


def build_source(tmp_path: Path) -> PreferenceStore:
    """ann and bob: labels from the queue, gold checks (right and wrong), repeats (the same and
    not), bob's check left open on his screen, ann's last answer undone (open again)."""
    store = store_with(tmp_path, n_pairs=6, n_gold=4)
    register(store, "ann", "bob")
    for rater, first in (("ann", 0), ("bob", 1)):
        for i in range(3):
            pair = store.claim_next(rater)
            choice = [Choice.LEFT, Choice.RIGHT, Choice.EQUAL][(i + first) % 3]
            store.answer(pair.id, rater, choice, 1.0 + i)
    for rater, wrong in (("ann", 1), ("bob", 0)):
        for i in range(2):
            check = store.claim_check(rater, "gold")
            answer = FLIP[gold_of(check)] if i == wrong else gold_of(check)
            store.answer_check(check.id, rater, answer, 2.0 + i)
        for i in range(2):
            shown = store.claim_check(rater, "repeat", not_latest=0)
            store.answer_check(shown.id, rater, [Choice.LEFT, Choice.RIGHT][i], 3.5 + i)
    open_check = store.claim_check("bob", "gold")
    assert open_check is not None  # served, never answered
    undone = store.claim_check("ann", "gold")
    store.answer_check(undone.id, "ann", Choice.EQUAL, 0.25)
    store.undo_check(undone.id, "ann")
    checks = store.rater_checks()
    assert {(c.rater_id, c.kind) for c in checks} == {(r, k) for r in ("ann", "bob") for k in ("gold", "repeat")}
    assert not all(c.agrees for c in checks) and any(c.agrees for c in checks)
    return store


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("source")
    build_source(path).close()
    return sqlite_url(path / "prefs.sqlite")


def e_step(store: PreferenceStore) -> list[Any]:
    """The reward-model fit's E-step estimate of each rater from their gold checks alone (what
    the learner passes it: ``tally_checks(store.rater_checks(kind="gold"))``)."""
    tally = tally_checks(store.rater_checks(kind="gold"))
    raters = tuple(sorted(tally))
    if not raters:
        return []
    empty = np.zeros(0)
    labels = RaterLabels(np.zeros(0, dtype=np.int64), empty, empty, empty, raters,
                         checks=np.array([tally[r] for r in raters], dtype=np.float64))
    return estimate_error_rates(labels, empty, prior_error_rate=0.1, prior_labels=10.0, flag_error_rate=0.3)


def raters_fit(store: PreferenceStore) -> list[str]:
    """What ``prefloop raters fit`` computes, per rater, as comparable text (NaN included)."""
    return [json.dumps(dataclasses.asdict(fit_rater(a, bootstrap=20)), default=str) for a in answers_from_store(store)]


def check_lines(url: str, run: str) -> list[dict[str, Any]]:
    """Every check of a run as an export writes it, open ones too, the pair by its segments'
    episode seeds rather than ids."""
    snapshot = read_run(url, run)
    pairs = {line["id"]: (line["left_segment_id"], line["right_segment_id"]) for line in snapshot.pair_lines}
    episode = {line["id"]: line["episode_seed"] for line in snapshot.segment_lines}
    return [
        {**{k: v for k, v in line.items() if k not in ("id", "pair_id")},
         "pair": tuple(episode[s] for s in pairs[line["pair_id"]])}
        for line in snapshot.check_lines
    ]


@pytest.mark.parametrize("layout", ["jsonl", "parquet"])
def test_checks_round_trip_and_every_raters_estimate_is_unchanged(source: str, tmp_path: Path, layout: str) -> None:
    out = tmp_path / "dataset"
    summary = export_dataset(source, "checks", out, layout=layout)
    assert summary.checks == 10 and "10 rater checks" in summary.to_text()
    name = "checks.jsonl" if layout == "jsonl" else "checks.parquet"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["checks"] == 10 and manifest["version"] == 1
    assert name in manifest["checksums"] and manifest["files"][name]["description"]
    target = sqlite_url(tmp_path / "target.sqlite")
    imported = import_dataset(out, target, "copy")
    assert imported.checks == 10 and len(imported.check_ids) == 10
    with PreferenceStore(source, run_name="checks", read_only=True) as before, PreferenceStore(target, run_name="copy") as after:
        moved = [dataclasses.replace(c, pair_id=imported.pair_ids[c.pair_id]) for c in before.rater_checks()]
        assert after.rater_checks() == moved and len(moved) == 8  # 2 open: never in rater_checks()
        assert tally_checks(after.rater_checks()) == tally_checks(before.rater_checks())
        assert e_step(after) == e_step(before)
        assert raters_fit(after) == raters_fit(before)
    # the open checks (bob's never answered, ann's undone) come back first for their raters, as in the source run
    open_pairs = {line["rater_id"]: line["pair_id"] for line in read_run(source, "checks").check_lines if line["choice"] is None}
    assert sorted(open_pairs) == ["ann", "bob"]
    with PreferenceStore(target, run_name="copy") as after:
        for rater, pair_id in open_pairs.items():
            assert after.is_open_check(imported.pair_ids[pair_id], rater)
            assert after.claim_check(rater).id == imported.pair_ids[pair_id]
    assert check_lines(target, "copy") == check_lines(source, "checks")  # open ones too


def test_checks_land_in_the_importing_run_only_and_a_second_import_is_refused(source: str, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    export_dataset(source, "checks", out)
    target = sqlite_url(tmp_path / "target.sqlite")
    import_dataset(out, target, "first")
    before = dump_store(target)
    with pytest.raises(DatasetError, match="already has 10 pairs"):
        import_dataset(out, target, "first")
    assert dump_store(target) == before
    archive = tmp_path / "dataset.zip"  # as the dashboard's download zips it
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(out.iterdir()):
            zipped.write(path, f"run-preferences/{path.name}")
    assert import_dataset(archive, target, "second").checks == 10
    with PreferenceStore(target, run_name="first") as first, PreferenceStore(target, run_name="second") as second:
        a, b = first.rater_checks(), second.rater_checks()
        assert len(a) == len(b) == 8
        assert {c.pair_id for c in a}.isdisjoint({c.pair_id for c in b})
        assert [dataclasses.replace(c, pair_id=0) for c in a] == [dataclasses.replace(c, pair_id=0) for c in b]


def test_checks_read_with_pandas_and_hugging_face_datasets(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    out = tmp_path / "pq"
    export_dataset(source, "checks", out, layout="parquet")
    checks = pd.read_parquet(out / "checks.parquet")
    assert len(checks) == 10 and set(checks["kind"]) == {"gold", "repeat"}
    assert checks["choice"].isna().sum() == 2 and checks["agrees"].isna().sum() == 2
    answered = checks[checks["choice"].notna()]
    assert (answered["agrees"] == (answered["choice"] == answered["expected"])).all()
    pairs = pd.read_parquet(out / "pairs.parquet")
    merged = checks.merge(pairs, left_on="pair_id", right_on="id")
    assert (merged["left_segment_id_x"] == merged["left_segment_id_y"]).all()

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    loaded = datasets.load_dataset("parquet", data_files=str(out / "checks.parquet"), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == 10 and {"rater_id", "kind", "choice", "agrees", "served_at"} <= set(loaded[0])


def test_an_export_without_checks_loads_with_none(source: str, tmp_path: Path) -> None:
    """An export made before checks existed: no checks file, no checksum or count of one."""
    for layout, name in (("jsonl", "checks.jsonl"), ("parquet", "checks.parquet")):
        out = tmp_path / layout
        export_dataset(source, "checks", out, layout=layout)
        (out / name).unlink()
        manifest = json.loads((out / "manifest.json").read_text())
        del manifest["checksums"][name], manifest["counts"]["checks"], manifest["files"][name]
        (out / "manifest.json").write_text(json.dumps(manifest))
        assert load_dataset(out).checks == []
        summary = import_dataset(out, sqlite_url(tmp_path / f"{layout}.sqlite"), "old")
        assert summary.checks == 0 and summary.labels == 6
        with PreferenceStore(sqlite_url(tmp_path / f"{layout}.sqlite"), run_name="old") as old, \
                PreferenceStore(source, run_name="checks", read_only=True) as original:
            assert old.rater_checks() == [] and e_step(old) == [] and e_step(original) != []
            assert raters_fit(old) != raters_fit(original)  # what an export without checks loses


# -- hostile check records ---------------------------------------------------------------------------


def edit_check(index: int, **fields: Any):
    def damage(d: Path) -> None:
        lines = [json.loads(line) for line in (d / "checks.jsonl").read_text().splitlines()]
        lines[index].update(fields)
        (d / "checks.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return damage


def edit_check_row(index: int, **fields: Any):
    def damage(d: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(d / "checks.parquet")
        rows = table.to_pylist()
        rows[index].update(fields)
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), d / "checks.parquet")
    return damage


def duplicate_check(d: Path) -> None:
    lines = (d / "checks.jsonl").read_text().splitlines()
    copy = {**json.loads(lines[0]), "id": 999}
    (d / "checks.jsonl").write_text("\n".join([*lines, json.dumps(copy)]) + "\n")


def reseal(d: Path, name: str, count: int | None = None) -> None:
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["checksums"][name] = hashlib.sha256((d / name).read_bytes()).hexdigest()
    if count is not None:
        manifest["counts"]["checks"] = count
    (d / "manifest.json").write_text(json.dumps(manifest))


HOSTILE = [
    ("unknown-kind", edit_check(0, kind="silver"), r"checks\.jsonl line 1: field 'kind' is 'silver'; it must be one of \['gold', 'repeat'\]"),
    ("missing-pair", edit_check(1, pair_id=4242), r"checks\.jsonl line 2: field 'pair_id' is 4242, which is not a pair of pairs\.jsonl"),
    ("bad-choice", edit_check(2, choice="both"), r"checks\.jsonl line 3: field 'choice' is 'both'; it must be one of"),
    ("negative-response-time", edit_check(3, response_time_s=-1.5), r"checks\.jsonl line 4: field 'response_time_s' must be >= 0, got -1\.5"),
    ("half-an-answer", edit_check(0, answered_at=None), r"checks\.jsonl line 1: field 'choice' is an answer but"),
    ("gold-on-a-plain-pair", edit_check(0, kind="gold", pair_id=1), r"field 'kind' is 'gold' but pair 1 of pairs\.jsonl has no gold_choice"),
    ("rater-with-newline", edit_check(0, rater_id="ann\nadmin"), r"checks\.jsonl line 1: field 'rater_id'"),
    ("checked-twice", duplicate_check, r"has two \w+ checks on pair \d+; a rater is checked at most once"),
]


@pytest.mark.parametrize(("damage", "message"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_a_hostile_check_record_is_refused_in_one_line_and_nothing_is_stored(
    source: str, tmp_path: Path, damage, message: str
) -> None:
    out = tmp_path / "dataset"
    export_dataset(source, "checks", out)
    damage(out)
    reseal(out, "checks.jsonl", count=len((out / "checks.jsonl").read_text().splitlines()))
    target = tmp_path / "target.sqlite"
    with PreferenceStore(sqlite_url(target), run_name="existing") as store:
        store.set_meta("guideline", "keep me")
    before = dump_store(sqlite_url(target))
    with pytest.raises(DatasetError, match=message) as caught:
        import_dataset(out, sqlite_url(target), "copy")
    assert "\n" not in str(caught.value) and "prefloop export" in str(caught.value)
    assert dump_store(sqlite_url(target)) == before


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (edit_check_row(0, kind="silver"), r"checks\.parquet row 0: field 'kind' is 'silver'"),
        (edit_check_row(1, pair_id=4242), r"checks\.parquet row 1: field 'pair_id' is 4242, which is not a pair of pairs\.parquet"),
        (edit_check_row(2, response_time_s=-1.0), r"checks\.parquet row 2: field 'response_time_s' must be >= 0"),
        (edit_check_row(3, agrees=None), r"checks\.parquet row 3: field 'agrees' is None but choice"),
    ],
    ids=["unknown-kind", "missing-pair", "negative-response-time", "agrees-contradicts"],
)
def test_a_hostile_check_row_is_refused_in_one_line(source: str, tmp_path: Path, damage, message: str) -> None:
    out = tmp_path / "pq"
    export_dataset(source, "checks", out, layout="parquet")
    damage(out)
    reseal(out, "checks.parquet")
    target = sqlite_url(tmp_path / "target.sqlite")
    PreferenceStore(target, run_name="existing").close()
    before = dump_store(target)
    with pytest.raises(DatasetError, match=message) as caught:
        import_dataset(out, target, "copy")
    assert "\n" not in str(caught.value)
    assert dump_store(target) == before


def test_a_lost_or_unsealed_checks_file_is_refused(source: str, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    export_dataset(source, "checks", out)
    (out / "checks.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"checks\.jsonl is missing .* incomplete"):
        load_dataset(out)
    out2 = tmp_path / "dataset2"
    export_dataset(source, "checks", out2)
    manifest = json.loads((out2 / "manifest.json").read_text())
    del manifest["checksums"]["checks.jsonl"], manifest["counts"]["checks"]
    (out2 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"checksums\.checks\.jsonl is missing"):
        load_dataset(out2)


def without_identity(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`prefloop raters list` rows less registration and onboarding (rater links are never exported)."""
    return [{k: v for k, v in row.items() if k not in ("registered", "onboarded")} for row in rows]


def test_an_imported_run_routes_its_raters_as_the_source_run_did(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # `prefloop raters list` on a run and on its import: a rater failing every gold check got
    # "checks only" in the source and "labels" in the import (which had no check policy).
    from prefloop.cli.main import main
    from prefloop.cli.raters import rater_summary
    from prefloop.training.config import TrainConfig
    from prefloop.training.rater_checks import CHECK_POLICY_META, CheckPolicy, publish_policy

    store = build_source(tmp_path)
    config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path / "src")
    store.set_meta("config", json.dumps(config.to_json()))
    publish_policy(store, CheckPolicy.for_reward_model(config.reward_model, config.probation_checks))
    for _ in range(3):  # cat gets every gold check wrong
        check = store.claim_check("cat", "gold")
        store.answer_check(check.id, "cat", FLIP[gold_of(check)], 2.0)
    source_rows = rater_summary(store)
    assert {row["name"]: row["gets"] for row in source_rows}["cat"] == "checks only"
    url, run = store.url, store.run_name
    store.close()
    for layout in ("jsonl", "parquet"):
        export_dataset(url, run, tmp_path / layout, layout=layout)
        assert main(["import", "--in", str(tmp_path / layout), "--run-dir", str(tmp_path / f"imported-{layout}")]) == 0
        with PreferenceStore(sqlite_url(tmp_path / f"imported-{layout}" / "prefs.sqlite"), run_name=f"imported-{layout}") as imported:
            assert without_identity(rater_summary(imported)) == without_identity(source_rows)
            assert imported.get_meta(CHECK_POLICY_META) is not None
    # A dataset without a prefloop config keeps routing off: every rater gets labels, as before.
    manifest_path = tmp_path / "jsonl" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["config"]
    manifest_path.write_text(json.dumps(manifest))
    assert main(["import", "--in", str(tmp_path / "jsonl"), "--run-dir", str(tmp_path / "no-config")]) == 0
    with PreferenceStore(sqlite_url(tmp_path / "no-config" / "prefs.sqlite"), run_name="no-config") as imported:
        assert imported.get_meta(CHECK_POLICY_META) is None
        assert {row["gets"] for row in rater_summary(imported)} == {"labels"}
