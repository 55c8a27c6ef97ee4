"""A corpus of malformed and hostile input, run through every door the product has.

Each case says what goes in, where it goes, and what must come out: one clear error, or a safe,
sanitised outcome. For every case, whatever the door:

- no traceback: the CLI exits with code 2 and one ``prefloop: error:`` line on stderr; the rater
  app (Streamlit's AppTest, the real page code) shows no ``exception`` element;
- nothing stored is lost: the label rows are the same before and after (or, for an answer that is
  meant to be stored, the same plus exactly that one label).

Doors: a run folder's ``config.json`` and ``prefs.sqlite`` (``prefloop train --resume``,
``prefloop rate``, ``prefloop export``, the app), ids handed to the store, rater names (``?rater=``,
the name field, the store), the guideline (``--guideline``, the store, the page), the player's
trigger value (what the browser sends), tokens in the URL, the app's own settings, env ids and
spaces.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from conftest import (
    RATED_GUIDELINE,
    RATED_RUN,
    app_served_on_loopback,
    backend_database,
    free_port,
)
from prefloop.apps.access import parse_app_args
from prefloop.apps.player import PLAYER_KEY
from prefloop.apps.rater_app import DEFAULT_GUIDELINE, display_guideline
from prefloop.apps.rating import MAX_ACTIONS_PER_MESSAGE, MAX_NOTICES
from prefloop.apps.rating_values import MAX_RESPONSE_TIME_S
from sqlalchemy import create_engine, select
from streamlit.components.v2.bidi_component.main import _make_trigger_id
from streamlit.testing.v1 import AppTest
from test_store import make_pairs

from prefloop.cli.main import build_parser, build_train_config, main
from prefloop.store import PreferenceStore, StoreError, labels_table, sqlite_url
from prefloop.training.config import ConfigError, TrainConfig
from prefloop.types import Choice
from prefloop.untrusted import markdown_literal


@dataclass(frozen=True)
class Case:
    """One hostile input.

    Attributes:
        name: the test id.
        value: the input (or a function building it).
        expect: a piece of the one clear error the case must produce; None when the input is
            accepted and the outcome is checked otherwise (``outcome``).
        outcome: for accepted input, what must happen (its meaning depends on the door).
    """

    name: str
    value: Any
    expect: str | None = None
    outcome: Any = None


def cases(items: list[Case]) -> Any:
    return pytest.mark.parametrize("case", items, ids=[c.name for c in items])


def label_rows(url: str) -> list[tuple]:
    """Every label row of the database, retracted ones included, as stored."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(labels_table).order_by(labels_table.c.id))]
    finally:
        engine.dispose()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``prefloop ARGV`` in-process; assert exit code 2 and one clean error line; its text."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, (code, err[-2000:])
    assert err.startswith("prefloop: error: ") and err.count("\n") == 1, err[-2000:]
    assert "Traceback" not in err
    assert len(err) < 1500, "the message echoes the input whole"
    return err


# -- a run folder with labels, copied for each case ------------------------------------------------

RUN = "run"


@pytest.fixture(scope="module")
def run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder (config.json + prefs.sqlite with 3 labels, one retracted) but no checkpoint."""
    folder = tmp_path_factory.mktemp("template") / RUN
    folder.mkdir()
    TrainConfig(env_id="CartPole-v1", run_dir=folder, steps=2000, labels=10, progress_bar=False).resolve().save(
        folder / "config.json"
    )
    with PreferenceStore(sqlite_url(folder / "prefs.sqlite"), RUN) as store:
        pair_ids = store.add_pairs(make_pairs(4))
        for pair_id, choice in zip(pair_ids, ("left", "right", "equal")):
            store.claim_next("ada")
            store.answer(pair_id, "ada", choice, 1.5)
        store.undo_last("ada")
    with closing(sqlite3.connect(folder / "prefs.sqlite")) as conn:  # one file, no -wal beside it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return folder


@pytest.fixture
def run_dir(run_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / RUN
    shutil.copytree(run_template, target)
    return target


def valid_config(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "config.json").read_text())


def edit(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], bytes]:
    def build(config: dict[str, Any]) -> bytes:
        change(config)
        return json.dumps(config).encode()

    return build


def setting(path: str, value: Any) -> Callable[[dict[str, Any]], bytes]:
    def change(config: dict[str, Any]) -> None:
        *parents, key = path.split(".")
        target = config
        for parent in parents:
            target = target[parent]
        target[key] = value

    return edit(change)


def without(key: str) -> Callable[[dict[str, Any]], bytes]:
    return edit(lambda config: config.pop(key))


# -- 1. config.json of a run folder ------------------------------------------------------------------

CONFIG_CASES = [
    Case("not-json", b"{env_id: CartPole-v1", "not valid JSON"),
    Case("empty-file", b"", "not valid JSON"),
    Case("binary-garbage", b"\xff\xfe\x00\x9c garbage", "not valid JSON"),
    Case("nul-bytes", b'{"env_id": "CartPole-v1"\x00}', "not valid JSON"),
    Case("deep-nesting", b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    Case("json-array", b"[1, 2, 3]", "must be a JSON object"),
    Case("json-string", b'"CartPole-v1"', "must be a JSON object"),
    Case("json-null", b"null", "must be a JSON object"),
    Case("labels-not-a-number", setting("labels", "many"), "labels must be an integer"),
    Case("labels-float", setting("labels", 1.5), "labels must be an integer"),
    Case("labels-bool", setting("labels", True), "labels must be an integer"),
    Case("labels-huge", setting("labels", 10**30), "labels must be an integer (64 bits)"),
    Case("labels-negative", setting("labels", -5), "labels must be an integer >= 0"),
    Case("gold-fraction-nan", setting("gold_fraction", float("nan")), "gold_fraction must be a finite number"),
    Case("gold-fraction-out-of-range", setting("gold_fraction", 2.0), "gold_fraction must be a number in [0, 1)"),
    Case("query-not-an-object", setting("query", "disagreement"), "query must be a JSON object"),
    Case("query-method-unknown", setting("query.method", "x" * 10_000), "QueryConfig.method must be one of"),
    Case("hidden-sizes-string", setting("reward_model.hidden_sizes", "64,64"), "reward_model.hidden_sizes must be a list"),
    Case("teacher-params-string-value", setting("teacher_params", {"beta": "high"}), "teacher_params.beta must be a finite number"),
    Case("schedule-rounds-negative", setting("schedule.rounds", -1), "rounds must be >= 0"),
    Case("run-dir-null", setting("run_dir", None), "run_dir must be a non-empty path string"),
    Case("unknown-key", setting("learning_rate", 0.1), "unknown config keys 'learning_rate'"),
    Case("unknown-nested-key", setting("query.temperature", 2), "unknown config keys 'temperature' in query"),
    Case("missing-env-id", without("env_id"), "missing config keys env_id"),
    Case("missing-run-dir", without("run_dir"), "missing config keys run_dir"),
    Case("env-id-control-chars", setting("env_id", "CartPole-v1\x00"), "env_id must be a Gymnasium id"),
    Case("guideline-10k-chars", setting("guideline", "Which? " * 1500), "guideline must be one line"),
    Case("guideline-nul", setting("guideline", "Which\x00 is better?"), "guideline must be one line"),
    Case("run-name-newline", setting("run_name", "run\n2"), "run_name must be a name"),
    # Well-formed config files naming things that do not exist: the error names the thing.
    Case("env-id-path", setting("env_id", "../../etc/passwd"), "Unknown environment id '../../etc/passwd'"),
    Case("env-id-sql", setting("env_id", "1; DROP TABLE labels"), "Unknown environment id '1; DROP TABLE labels'"),
    Case("db-url-path", setting("db_url", "../../etc/passwd"), "cannot parse the database URL"),
    Case("db-url-foreign-file", setting("db_url", "sqlite:////etc/passwd"), "not a SQLite database"),
    Case("db-url-password-bad-port", setting("db_url", "postgresql://u:s3cret-pw@localhost:port/db"), "cannot parse the database URL"),
    Case("db-url-unknown-driver", setting("db_url", "nosuchdb://host/db"), "cannot use database URL"),
]


@cases(CONFIG_CASES)
def test_a_broken_config_json_stops_resume_with_one_line(
    case: Case, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path, store = run_dir / "config.json", run_dir / "prefs.sqlite"
    raw = case.value(valid_config(run_dir)) if callable(case.value) else case.value
    config_path.write_bytes(raw)
    labels_before, store_before = label_rows(sqlite_url(store)), digest(store)

    err = cli(capsys, "train", "--resume", "--run-dir", str(run_dir), "--no-progress")

    assert case.expect in err
    if "Unknown environment" not in err and "database" not in err:
        assert str(config_path) in err  # a problem of the file names the file
    assert "s3cret-pw" not in err
    assert config_path.read_bytes() == raw and digest(store) == store_before
    assert label_rows(sqlite_url(store)) == labels_before
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())


RATE_CONFIG_CASES = [c for c in CONFIG_CASES if c.name in (
    "not-json", "binary-garbage", "json-array", "db-url-path", "db-url-foreign-file", "db-url-unknown-driver")] + [
    Case("run-name-not-a-string", setting("run_name", ["run"]), "run_name must be a non-empty string"),
    Case("db-url-not-a-string", setting("db_url", 5432), "db_url must be a non-empty string"),
]


@cases(RATE_CONFIG_CASES)
def test_rate_and_export_refuse_a_broken_config_json_instead_of_guessing(
    case: Case, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the app was started")

    monkeypatch.setattr("prefloop.apps.cli_rate.launch_rater_app", never)
    (run_dir / "config.json").write_bytes(case.value(valid_config(run_dir)) if callable(case.value) else case.value)
    labels_before = label_rows(sqlite_url(run_dir / "prefs.sqlite"))

    assert case.expect in cli(capsys, "rate", "--run-dir", str(run_dir), "--no-clip-worker", "--port", str(free_port()))
    assert case.expect in cli(capsys, "export", "--run-dir", str(run_dir), "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert label_rows(sqlite_url(run_dir / "prefs.sqlite")) == labels_before


def test_the_real_process_prints_one_line_and_no_traceback(run_dir: Path) -> None:
    import subprocess

    (run_dir / "config.json").write_bytes(b"\xff{ not json")
    done = subprocess.run(
        [sys.executable, "-m", "prefloop.cli", "train", "--resume", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "config.json" in done.stderr


# -- 2. a damaged store file ------------------------------------------------------------------------


def _zero_middle(data: bytes) -> bytes:
    return data[:4096] + b"\x00" * (len(data) - 8192) + data[-4096:]


def _foreign(path: Path) -> None:
    path.unlink()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")


def _newer_schema(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE prefloop_meta SET value = '2' WHERE key = 'schema_version'")


STORE_FILE_CASES = [
    Case("garbage", lambda p: p.write_bytes(b"\x00garbage, not a database" * 200), "not a SQLite database"),
    Case("header-then-garbage", lambda p: p.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 40), "prefs.sqlite"),
    Case("truncated", lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "prefs.sqlite"),
    Case("zeroed-pages", lambda p: p.write_bytes(_zero_middle(p.read_bytes())), "prefs.sqlite"),
    Case("foreign-sqlite", _foreign, "another application"),
    Case("newer-schema", _newer_schema, "schema version '2'"),
]


@cases(STORE_FILE_CASES)
def test_a_damaged_store_file_is_refused_everywhere_and_left_untouched(
    case: Case, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = run_dir / "prefs.sqlite"
    case.value(store)
    before = digest(store)
    monkeypatch.setattr("prefloop.apps.cli_rate.launch_rater_app", lambda *a, **k: pytest.fail("app started"))

    for argv in (
        ["train", "--resume", "--run-dir", str(run_dir), "--no-progress"],
        ["rate", "--run-dir", str(run_dir), "--no-clip-worker", "--port", str(free_port())],
        ["export", "--run-dir", str(run_dir), "--out", str(tmp_path / "out")],
    ):
        err = cli(capsys, *argv)
        assert case.expect in err or "preference store" in err, (argv[0], err)
        assert digest(store) == before, f"{argv[0]} changed the file"

    at = app(["--db-url", sqlite_url(store), "--run-name", RUN], rater="tess")
    assert not at.exception and "Cannot open the label database" in texts(at.error)
    assert str(store) not in texts(at.error)  # paths are for the operator's log, not for raters
    assert digest(store) == before


# -- 3. ids handed to the store -------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def id_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PreferenceStore, int, int]]:
    """(store, a pair id, a segment id) of a run with labels, on each backend, for the module
    (one database per backend: creating one per case would cost more than the cases)."""
    with backend_database(request, request.param, tmp_path_factory) as url:
        store = PreferenceStore(url, "ids")
        pair_ids = store.add_pairs(make_pairs(3))
        store.claim_next("ada")
        store.answer(pair_ids[0], "ada", Choice.LEFT, 1.0)  # one label; pair_ids[1] is the next claimable
        try:
            yield store, pair_ids[1], store.get_pair(pair_ids[1]).left.id
        finally:
            store.close()


ID_CASES = [
    Case("path", "../../etc/passwd", "must be an integer"),
    Case("sql", "1; DROP TABLE labels", "must be an integer"),
    Case("numeric-string", "1", "must be an integer"),
    Case("float", 1.5, "must be an integer"),
    Case("nan", float("nan"), "must be an integer"),
    Case("bool", True, "must be an integer"),
    Case("none", None, "must be an integer"),
    Case("list", [1], "must be an integer"),
    Case("bytes", b"1", "must be an integer"),
    Case("int32-overflow", 2**31, "must be an integer from"),  # PostgreSQL's INTEGER ids
    Case("int64-max", 2**63 - 1, "must be an integer from"),
    Case("huge", 10**30, "must be an integer from"),
    Case("beyond-printable", 10**5000, "must be an integer from"),  # repr() of it raises in Python 3.11
    Case("negative", -1, None, "unknown"),
    Case("zero", 0, None, "unknown"),
    Case("int32-max", 2**31 - 1, None, "unknown"),
]


@cases(ID_CASES)
def test_hostile_ids_are_refused_by_every_store_method(case: Case, id_store: tuple[PreferenceStore, int, int]) -> None:
    store, pair_id, segment_id = id_store
    before = store.labels(include_retracted=True)
    calls: dict[str, Callable[[], Any]] = {
        "get_pair": lambda: store.get_pair(case.value),
        "answer": lambda: store.answer(case.value, "ada", Choice.LEFT, 1.0),
        "release": lambda: store.release(case.value, "ada"),
        "get_segments": lambda: store.get_segments([case.value]),
        "put_clip": lambda: store.put_clip(case.value, b"clip", "video/webm"),
        "put_clip_error": lambda: store.put_clip_error(case.value, "failed"),
        "get_clip": lambda: store.get_clip(case.value),
        "get_clips": lambda: store.get_clips([case.value]),
        "claim_next(exclude)": lambda: store.claim_next("bob", exclude=[case.value]),
    }
    for method, call in calls.items():
        if case.expect is not None:  # not an id at all: refused before any SQL runs
            with pytest.raises(StoreError, match=re.escape(case.expect)) as refused:
                call()
            assert len(str(refused.value)) < 300, method
        elif method in ("get_clip", "get_clips"):  # an id no row has: nothing found
            assert call() in (None, {}), method
        elif method == "claim_next(exclude)":  # excluding a pair that does not exist: no effect
            claimed = call()
            assert claimed is not None and claimed.id == pair_id
            store.release(claimed.id, "bob")
        else:  # an id no row has: refused, naming it
            with pytest.raises(StoreError, match="does not exist|not segments|not saved"):
                call()
    assert store.labels(include_retracted=True) == before
    assert store.counts()["claimed"] == 0 and store.get_clip(segment_id) is None


# -- 4. rater names -----------------------------------------------------------------------------------

RATER_CASES = [
    # value, expect (app refusal) / outcome (the name the app uses); the store's verdict follows.
    Case("sql-quote", "Robert'); DROP TABLE labels;--", "only letters"),
    Case("sql-comment", "ada'--", None, "ada'--"),
    Case("html", "<script>alert(1)</script>", "only letters"),
    Case("10k-chars", "x" * 10_000, "shorter name"),
    Case("nul", "ada\x00", "only letters"),
    Case("rtl-override", "\u202eada", "only letters"),
    Case("rtl-mark", "ada\u200f", "only letters"),
    Case("zero-width-joiner", "a\u200dda", "only letters"),
    Case("replacement-char", "ada\ufffd", "only letters"),  # what a server makes of invalid UTF-8
    Case("blank", "   \t ", "Type your name"),
    Case("japanese", "  名前 テスト ", None, "名前 テスト"),
    Case("combining-accent", "Jose\u0301", None, "José"),
    Case("inner-spaces", " Ada   Lovelace ", None, "Ada Lovelace"),
]


@cases(RATER_CASES)
def test_rater_names_from_the_link_and_the_form(case: Case, rated: tuple[str, list[int]]) -> None:
    url, _ = rated
    before = label_rows(url)
    pages = [app(["--db-url", url, "--run-name", RATED_RUN], rater=case.value)]
    if len(case.value) <= 40:  # the name field takes at most 40 characters
        typed = app(["--db-url", url, "--run-name", RATED_RUN])
        typed.text_input(key="rater_name_input").input(case.value)
        typed.button[0].click().run()
        pages.append(typed)
    shown = f"Not {markdown_literal(case.outcome or '')}?"  # the name as plain text, never Markdown
    for index, at in enumerate(pages):
        assert not at.exception
        if case.expect is not None:
            assert case.expect in texts(at.warning) and player(at) is None
            assert at.text_input(key="rater_name_input") is not None
        elif index == 0:  # the cleaned name is the rater id: the page greets it, the store leases to it
            assert player(at) is not None and shown in [b.label for b in at.button]
            assert sorted(claimed_by(url, case.outcome)) == sorted([player(at)["pair"]["id"], player(at)["next"]["id"]])
        else:  # typed in another browser, it cleans to the same name, which is now taken
            assert "already taken" in texts(at.warning) and player(at) is None
    if case.expect is None:
        next(b for b in pages[0].button if b.label == shown).click().run()  # pairs go back
        assert claimed_by(url, case.outcome) == []
    assert label_rows(url) == before


STORE_RATER_CASES = [
    Case("sql-quote", "Robert'); DROP TABLE labels;--"),
    Case("html", "<script>alert(1)</script>"),
    Case("rtl-override", "\u202eada"),
    Case("japanese", "名前"),
    Case("201-chars", "x" * 201, "at most 200"),
    Case("10k-chars", "x" * 10_000, "at most 200"),
    Case("nul", "ada\x00", "control character U+0000"),
    Case("newline", "ada\nbob", "control character U+000A"),
    Case("lone-surrogate", "ada\ud800", "unpaired surrogate"),
    Case("blank", "  ", "non-empty"),
    Case("not-a-string", 42, "non-empty string"),
]


@cases(STORE_RATER_CASES)
def test_the_store_keeps_odd_rater_ids_exactly_and_refuses_unstorable_ones(
    case: Case, id_store: tuple[PreferenceStore, int, int]
) -> None:
    url = id_store[0]._url.render_as_string(hide_password=False)  # a run of its own in that database
    with PreferenceStore(url, f"names-{case.name}") as store:
        (pair_id,) = store.add_pairs(make_pairs(1))
        if case.expect is not None:
            for call in (lambda: store.claim_next(case.value), lambda: store.labels(rater_id=case.value),
                         lambda: store.answer(pair_id, case.value, "left", 1.0), lambda: store.undo_last(case.value)):
                with pytest.raises(StoreError, match=re.escape(case.expect)):
                    call()
            assert store.counts()["labels"] == 0 and store.counts()["claimed"] == 0
        else:  # stored as given, read back as given, and the SQL in it is only text
            store.claim_next(case.value)
            store.answer(pair_id, case.value, "left", 1.0)
            (label,) = store.labels(rater_id=case.value)
            assert label.rater_id == case.value and store.counts()["labels"] == 1


# -- 5. the guideline ------------------------------------------------------------------------------------

GUIDELINE_CASES = [
    # value, expect (the CLI's refusal) / outcome (what the rater page shows if a store holds it)
    Case("10k-chars", "Which is better? " * 600, "guideline must be one line of at most 500", ("Which is better? " * 600)[:500].strip()),
    Case("nul", "Which\x00 is better?", "guideline must be one line", "Which is better?"),
    Case("newline", "Which cart\nkeeps the pole up?", "guideline must be one line", "Which cart keeps the pole up?"),
    Case("rtl-override", "\u202eWhich cart is better?", None, "\u202eWhich cart is better?"),
    Case("html", "Which <b>cart</b> <img src=x onerror=alert(1)>?", None, r"Which \<b\>cart\</b\> \<img src=x onerror=alert\(1\)\>?"),
    Case("sql", "Which cart'; DROP TABLE labels;--", None, "Which cart'; DROP TABLE labels;--"),
    Case("japanese", "どちらが良いですか？", None, "どちらが良いですか？"),
    Case("blank", "   ", None, DEFAULT_GUIDELINE),
]


@cases(GUIDELINE_CASES)
def test_guidelines_from_the_command_line_to_the_rater_page(
    case: Case, rated: tuple[str, list[int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = rated
    argv = ["train", "--guideline", case.value, "--run-dir", str(tmp_path / "new-run")]
    if case.expect is not None:
        assert case.expect in cli(capsys, *argv)
        with pytest.raises(ConfigError):
            TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, guideline=case.value)
    else:
        assert build_train_config(build_parser().parse_args(argv)).guideline == case.value
    assert not (tmp_path / "new-run").exists()

    # Whatever a store holds (an older prefloop, another tool) reaches raters sanitised.
    before = label_rows(url)
    with PreferenceStore(url, RATED_RUN) as store:
        if "\x00" in case.value:
            with pytest.raises(StoreError, match="NUL"):
                store.set_meta("guideline", case.value)
            store.set_meta("guideline", case.value.replace("\x00", ""))
        else:
            store.set_meta("guideline", case.value)
    try:
        at = app(["--db-url", url, "--run-name", RATED_RUN], rater="gwen")
        assert not at.exception and player(at) is not None
        headings = [m.value for m in at.markdown if str(m.value).startswith("### ")]
        assert headings == [f"### {case.outcome}"] == [f"### {display_guideline(case.value.replace(chr(0), ''))}"]
        assert not any(m.proto.allow_html for m in at.markdown if str(m.value).startswith("### "))
        next(b for b in at.button if b.label == "Not gwen?").click().run()
    finally:
        with PreferenceStore(url, RATED_RUN) as store:
            store.set_meta("guideline", RATED_GUIDELINE)
    assert label_rows(url) == before


# -- 6. what the browser sends: the player's trigger value --------------------------------------------


def answer(seq: int, pair: int, **overrides: Any) -> dict[str, Any]:
    action = {"seq": seq, "type": "answer", "pair_id": pair, "choice": "left", "response_time_s": 2.0}
    for key, value in overrides.items():
        if value is _DROP:
            action.pop(key)
        else:
            action[key] = value
    return action


_DROP = object()


def items(*actions: Any) -> dict[str, Any]:
    return {"items": list(actions), "sent": 1}


# Each value builds the trigger value from (next sequence number, shown pair, another rater's pair).
# outcome: "ignored" (nothing stored, not acknowledged), "refused" (nothing stored, acknowledged, the
# rater told why: expect), or ("stored", seconds) (one label on the shown pair, that response time).
PAYLOAD_CASES = [
    # the envelope
    Case("value-null", lambda s, p, o: None, outcome="ignored"),
    Case("value-number", lambda s, p, o: 5, outcome="ignored"),
    Case("value-string", lambda s, p, o: "answer left", outcome="ignored"),
    Case("value-list", lambda s, p, o: [answer(s, p)], outcome="ignored"),
    Case("value-empty-object", lambda s, p, o: {}, outcome="ignored"),
    Case("items-string", lambda s, p, o: {"items": "left"}, outcome="ignored"),
    Case("items-object", lambda s, p, o: {"items": answer(s, p)}, outcome="ignored"),
    Case("items-null", lambda s, p, o: {"items": None}, outcome="ignored"),
    Case("items-junk", lambda s, p, o: items(None, 5, "x", [], {}), outcome="ignored"),
    # sequence numbers
    Case("seq-missing", lambda s, p, o: items({k: v for k, v in answer(s, p).items() if k != "seq"}), outcome="ignored"),
    Case("seq-string", lambda s, p, o: items(answer(str(s), p)), outcome="ignored"),
    Case("seq-float", lambda s, p, o: items(answer(float(s), p)), outcome="ignored"),
    Case("seq-bool", lambda s, p, o: items(answer(True, p)), outcome="ignored"),
    Case("seq-negative", lambda s, p, o: items(answer(-1, p)), outcome="ignored"),
    Case("seq-already-acknowledged", lambda s, p, o: items(answer(s - 1, p)), outcome="ignored"),
    Case("seq-beyond-2^53", lambda s, p, o: items(answer(2**60, p)), outcome="ignored"),
    Case("seq-huge", lambda s, p, o: items(answer(10**30, p)), outcome="ignored"),
    # pair ids
    Case("pair-missing", lambda s, p, o: items(answer(s, p, pair_id=_DROP)), "did not say which pair", "refused"),
    Case("pair-string", lambda s, p, o: items(answer(s, str(p))), "did not say which pair", "refused"),
    Case("pair-float", lambda s, p, o: items(answer(s, float(p))), "did not say which pair", "refused"),
    Case("pair-bool", lambda s, p, o: items(answer(s, True)), "did not say which pair", "refused"),
    Case("pair-path", lambda s, p, o: items(answer(s, "../../etc/passwd")), "did not say which pair", "refused"),
    Case("pair-sql", lambda s, p, o: items(answer(s, "1; DROP TABLE labels")), "did not say which pair", "refused"),
    Case("pair-negative", lambda s, p, o: items(answer(s, -1)), "not shown to you", "refused"),
    Case("pair-zero", lambda s, p, o: items(answer(s, 0)), "not shown to you", "refused"),
    Case("pair-int64-overflow", lambda s, p, o: items(answer(s, 2**63)), "not shown to you", "refused"),
    Case("pair-huge", lambda s, p, o: items(answer(s, 10**30)), "not shown to you", "refused"),
    Case("pair-beyond-printable", lambda s, p, o: items(answer(s, 10**4000)), "not shown to you", "refused"),
    Case("seq-beyond-printable", lambda s, p, o: items(answer(10**4000, p)), outcome="ignored"),
    Case("pair-beyond-python-json", lambda s, p, o: RawJSON(  # Python's json refuses > 4300 digits
        f'{{"items": [{{"seq": {s}, "type": "answer", "pair_id": 1{"0" * 5000}, "choice": "left"}}]}}'), outcome="ignored"),
    Case("deep-nesting", lambda s, p, o: RawJSON("[" * 100_000 + "]" * 100_000), outcome="ignored"),
    Case("not-json-at-all", lambda s, p, o: RawJSON("{items: [left"), outcome="ignored"),
    Case("pair-of-another-rater", lambda s, p, o: items(answer(s, o)), "not shown to you", "refused"),
    # choices
    Case("choice-null", lambda s, p, o: items(answer(s, p, choice=None)), "not one of the four choices", "refused"),
    Case("choice-number", lambda s, p, o: items(answer(s, p, choice=1)), "not one of the four choices", "refused"),
    Case("choice-uppercase", lambda s, p, o: items(answer(s, p, choice="LEFT")), "not one of the four choices", "refused"),
    Case("choice-unknown", lambda s, p, o: items(answer(s, p, choice="both")), "not one of the four choices", "refused"),
    Case("choice-list", lambda s, p, o: items(answer(s, p, choice=["left"])), "not one of the four choices", "refused"),
    Case("choice-1mb", lambda s, p, o: items(answer(s, p, choice="l" * 1_000_000)), "not one of the four choices", "refused"),
    # types
    Case("type-unknown", lambda s, p, o: items(answer(s, p, type="delete")), outcome="acknowledged"),
    Case("type-missing", lambda s, p, o: items(answer(s, p, type=_DROP)), outcome="acknowledged"),
    Case("undo-with-nothing-to-undo", lambda s, p, o: items({"seq": s, "type": "undo"}), "Nothing to undo", "refused"),
    # floods: at most MAX_ACTIONS_PER_MESSAGE handled per message, one notice for all of them
    Case("10k-bad-actions", lambda s, p, o: items(*[answer(s + i, p, choice="both") for i in range(10_000)]),
         "not one of the four choices", "flood"),
    # response times: the answer counts, its time made sane
    Case("time-negative", lambda s, p, o: items(answer(s, p, response_time_s=-5)), outcome=("stored", 0.0)),
    Case("time-nan", lambda s, p, o: items(answer(s, p, response_time_s=float("nan"))), outcome=("stored", 0.0)),
    Case("time-infinity", lambda s, p, o: items(answer(s, p, response_time_s=float("inf"))), outcome=("stored", 0.0)),
    Case("time-huge", lambda s, p, o: items(answer(s, p, response_time_s=1e308)), outcome=("stored", MAX_RESPONSE_TIME_S)),
    Case("time-huge-int", lambda s, p, o: items(answer(s, p, response_time_s=10**400)), outcome=("stored", 0.0)),
    Case("time-string", lambda s, p, o: items(answer(s, p, response_time_s="fast")), outcome=("stored", 0.0)),
    Case("time-missing", lambda s, p, o: items(answer(s, p, response_time_s=_DROP)), outcome=("stored", 0.0)),
    Case("1mb-extra-field", lambda s, p, o: items(answer(s, p, junk="x" * 1_000_000)), outcome=("stored", 2.0)),
    Case("same-answer-twice", lambda s, p, o: items(answer(s, p), answer(s + 1, p, choice="right")), outcome=("stored", 2.0)),
]


@cases(PAYLOAD_CASES)
def test_hostile_trigger_values_from_the_browser(case: Case, rater_page: tuple[AppTest, str, int]) -> None:
    at, url, bobs_pair = rater_page
    shown = player(at)
    seq, pair = shown["ack"] + 1, shown["pair"]["id"]
    before = label_rows(url)

    send_raw(at, case.value(seq, pair, bobs_pair))

    assert not at.exception
    after, now = label_rows(url), player(at)
    assert now is not None and after[: len(before)] == before, "a stored label changed"
    assert len(at.toast) <= MAX_NOTICES
    if case.outcome == "ignored":
        assert after == before and now["ack"] == seq - 1 and now["pair"]["id"] == pair
    elif case.outcome == "acknowledged":
        assert after == before and now["ack"] == seq and now["pair"]["id"] == pair
    elif case.outcome in ("refused", "flood"):
        assert after == before and now["pair"]["id"] == pair
        assert now["ack"] == (seq + MAX_ACTIONS_PER_MESSAGE - 1 if case.outcome == "flood" else seq)
        assert case.expect in texts(at.toast)
    else:
        _, seconds = case.outcome
        (label,) = after[len(before):]
        stored = dict(zip(labels_table.c.keys(), label))
        assert (stored["pair_id"], stored["rater_id"], stored["choice"]) == (pair, "zelda", "left")
        # The browser's claim, made safe, and bounded by the server's clock (time since serving).
        assert 0.0 <= stored["response_time_s"] <= seconds and stored["retracted_at"] is None
        assert now["pair"]["id"] != pair
        send_raw(at, items({"seq": now["ack"] + 1, "type": "undo"}))  # put the pair back for the next case
        assert player(at)["pair"]["id"] == pair and len(label_rows(url)) == len(after)


# -- 7. tokens in the URL --------------------------------------------------------------------------------

TOKEN = "rater-token-1"
ADMIN = "admin-token-1"
# Each value is tried as ?token= (rating) and as ?admin_token= (dashboard); outcome: which opened.
NEITHER = {"rate": False, "dashboard": False}
TOKEN_CASES = [
    Case("sql", "' OR '1'='1", outcome=NEITHER),
    Case("10k-chars", "x" * 10_000, outcome=NEITHER),
    Case("nul", "\x00", outcome=NEITHER),
    Case("replacement-char", "\ufffd" + TOKEN, outcome=NEITHER),
    Case("prefix", TOKEN[:-1], outcome=NEITHER),
    Case("with-nul-suffix", TOKEN + "\x00", outcome=NEITHER),
    Case("uppercase", TOKEN.upper(), outcome=NEITHER),
    Case("padded", f" {TOKEN} ", outcome=NEITHER),
    Case("rater-token", TOKEN, outcome={"rate": True, "dashboard": False}),  # raters are not admins
    Case("admin-token", ADMIN, outcome={"rate": False, "dashboard": True}),  # nor admins raters
]


@cases(TOKEN_CASES)
def test_tokens_from_the_link(case: Case, rated: tuple[str, list[int]]) -> None:
    url, _ = rated
    argv = ["--db-url", url, "--run-name", RATED_RUN, "--token", TOKEN, "--admin-token", ADMIN]
    rater = app(argv, rater="tess", token=case.value)
    admin = open_page(app(argv, rater="tess", token=TOKEN, admin_token=case.value), "dashboard")
    assert not rater.exception and not admin.exception
    if case.outcome["rate"]:
        assert player(rater) is not None
        next(b for b in rater.button if b.label == "Not tess?").click().run()
    else:
        assert player(rater) is None and "not valid" in texts(rater.error)
    if case.outcome["dashboard"]:
        assert "Run dashboard" in texts(admin.title) and admin.get("download_button")
    else:
        assert "Run dashboard" not in texts(admin.title) and not admin.get("download_button")
        assert "not valid" in texts(admin.error)


# -- 8. the app's own settings ---------------------------------------------------------------------------

APP_SETTING_CASES = [
    Case("lease-nan", ["--lease-seconds", "nan"], "--lease-seconds must be a number"),
    Case("lease-negative", ["--lease-seconds", "-1"], "--lease-seconds must be a number"),
    Case("lease-overflow", ["--lease-seconds", "1e999"], "--lease-seconds must be a number"),
    Case("lease-words", ["--lease-seconds", "two minutes"], "--lease-seconds must be a number"),
    Case("token-short", ["--token", "abc"], "at least 8 characters"),
    Case("db-url-path", ["--db-url", "../../etc/passwd"], "Cannot open the label database"),
    Case("db-url-foreign-file", ["--db-url", "sqlite:////etc/passwd"], "Cannot open the label database"),
    Case("db-url-password", ["--db-url", "postgresql://u:s3cret-pw@localhost:port/db"], "Cannot open the label database"),
    Case("db-url-driver", ["--db-url", "nosuchdb://host/db"], "Cannot open the label database"),
    Case("run-name-nul", ["--run-name", "run\x00"], "Cannot open the label database"),
    Case("run-name-10k", ["--run-name", "r" * 10_000], "Cannot open the label database"),
]


@cases(APP_SETTING_CASES)
def test_bad_app_settings_show_a_sentence_not_a_traceback(case: Case, rated: tuple[str, list[int]]) -> None:
    url, _ = rated
    argv = ["--db-url", url, "--run-name", RATED_RUN, *case.value]  # later flags win
    at = app(argv, rater="tess")
    assert not at.exception and player(at) is None
    assert case.expect in texts(at.error) and "s3cret-pw" not in texts(at.error)
    assert "/etc/passwd" not in texts(at.error) or "--" in case.expect


# -- 9. env ids and spaces --------------------------------------------------------------------------------


class _SpaceEnv(gym.Env):
    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


_BOX = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
SPACE_CASES = [
    Case("dict-image-leaf", (gym.spaces.Dict({"a": _BOX, "pixels": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)}),
                             gym.spaces.Discrete(2)), "observation leaf 'pixels' is an image"),
    Case("tuple-text-leaf", (gym.spaces.Tuple((_BOX, gym.spaces.Text(8))), gym.spaces.Discrete(2)),
         "observation leaf '1' is a Text space"),
    Case("text-observations", (gym.spaces.Text(8), gym.spaces.Discrete(2)), "observation space Text"),
    Case("sequence-observations", (gym.spaces.Sequence(_BOX), gym.spaces.Discrete(2)), "observation space Sequence"),
    Case("tuple-actions", (_BOX, gym.spaces.Tuple((gym.spaces.Discrete(2),))), "action space Tuple"),
]
ENV_ID_CASES = [
    Case("path", "../../etc/passwd", "Unknown environment id '../../etc/passwd'"),
    Case("sql", "1; DROP TABLE labels", "Unknown environment id"),
    Case("typo", "CartPol-v1", "Did you mean 'CartPole-v1'"),
    Case("empty", "", "env_id must be a Gymnasium id"),
    Case("10k-chars", "E" * 10_000, "env_id must be a Gymnasium id"),
    Case("nul", "CartPole-v1\x00", "env_id must be a Gymnasium id"),
    Case("rtl-override", "\u202eCartPole-v1", "Unknown environment id"),
]


@cases(ENV_ID_CASES)
def test_unknown_env_ids(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert case.expect in cli(capsys, "train", "--env", case.value, "--run-dir", str(tmp_path / "r"), "--no-progress")
    assert not (tmp_path / "r").exists()


@cases(SPACE_CASES)
def test_unsupported_spaces(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env_id = f"prefloop-hostile/{case.name}-v0"
    gym.register(env_id, entry_point=_SpaceEnv, kwargs={"observation_space": case.value[0], "action_space": case.value[1]})
    try:
        err = cli(capsys, "train", "--env", env_id, "--run-dir", str(tmp_path / "r"), "--no-progress")
    finally:
        gym.registry.pop(env_id)
    assert case.expect in err and not (tmp_path / "r").exists()


# -- the rater app under AppTest ----------------------------------------------------------------------


def app_script(argv: list[str]) -> None:
    from prefloop.apps.rater_app import main as app_main

    app_main(argv)


def app(argv: list[str], **query: str) -> AppTest:
    """The app as the browser of ``query["rater"]`` (with that rater's key when the name is
    already taken in the run: each case here is the rater's own browser, not an impostor's)."""
    at = AppTest.from_function(app_script, args=(argv,), default_timeout=30)
    at.query_params.update(query)
    if "rater" in query and "key" not in query:
        from prefloop.store.identity import IdentityError, invite, normalize_rater_name

        try:
            config = parse_app_args(argv)
            with PreferenceStore(config.db_url, config.run_name) as store:
                if store.rater(normalize_rater_name(query["rater"])) is not None:
                    at.query_params["key"] = invite(store, query["rater"], replace=True)[1]
        except (IdentityError, StoreError, ValueError):
            pass  # a name, a store or settings the app refuses: the case is about that
    return at.run()


def open_page(at: AppTest, url_path: str) -> AppTest:
    at._page_hash = next(h for h, info in at._registered_pages.items() if info.get("url_pathname") == url_path)
    return at.run()


def player(at: AppTest) -> dict | None:
    found = [e for e in at.get("bidi_component") if e.key == PLAYER_KEY]
    return json.loads(found[0].proto.json) if found else None


class RawJSON(str):
    """A trigger value given as JSON text (for what ``json.dumps`` cannot write)."""


def send_raw(at: AppTest, value: Any) -> AppTest:
    """What a (forged) browser sends: any JSON as the player's ``actions`` trigger value."""
    (element,) = [e for e in at.get("bidi_component") if e.key == PLAYER_KEY]
    states = at._tree.get_widget_states()
    state = states.widgets.add()
    state.id = _make_trigger_id(element.proto.id, "events")
    text = value if isinstance(value, RawJSON) else json.dumps(value)
    state.json_trigger_value = f'[{{"event": "actions", "value": {text}}}]'
    return at._run(states)


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def claimed_by(url: str, rater: str) -> list[int]:
    from prefloop.store import pairs_table

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(select(pairs_table.c.id).where(pairs_table.c.claimed_by == rater)))
    finally:
        engine.dispose()


@pytest.fixture(scope="module", autouse=True)
def served_on_loopback() -> Iterator[None]:
    with app_served_on_loopback():
        yield


@pytest.fixture(scope="module")
def rated(rated_store_template: tuple[Path, list[int]], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[int]]:
    """(URL, pair ids) of one copy, for the module, of the store with 10 rendered CartPole pairs."""
    template, pair_ids = rated_store_template
    target = tmp_path_factory.mktemp("rated-hostile") / "prefs.sqlite"
    for suffix in ("", "-wal", "-shm"):
        source = template.with_name(template.name + suffix)
        if source.exists():
            shutil.copyfile(source, target.with_name(target.name + suffix))
    return sqlite_url(target), list(pair_ids)


@pytest.fixture(scope="module")
def rater_page(rated: tuple[str, list[int]]) -> tuple[AppTest, str, int]:
    """zelda's page (kept for the module: each trigger case continues from what is shown) and the
    pair bob holds."""
    url, _ = rated
    with PreferenceStore(url, RATED_RUN) as store:
        bobs = store.claim_next("bob", 3600.0).id
    at = app(["--db-url", url, "--run-name", RATED_RUN, "--lease-seconds", "3600"], rater="zelda")  # (a name no hostile case looks like)
    assert player(at) is not None
    return at, url, bobs

