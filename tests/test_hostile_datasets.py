"""Hostile datasets on `prefloop import`, on SQLite and PostgreSQL (issue 12, class 6).

A clean dataset is exported once from a real store; each case copies it, damages one thing the way
an attacker or a broken transfer would, and (unless the case is about checksums) writes matching
checksums into the manifest, as someone editing a dataset on purpose would. Whatever the case:

- one line on stderr, ``prefloop: error: ...``, exit code 2, no traceback, naming the problem;
- at most a short excerpt of the bad value (never 81 characters of it), and never the content of
  a file a link points to;
- nothing stored changes: a new ``--run-dir`` is not left behind, and every row of a store that
  already holds another run's labels (SQLite and PostgreSQL) is the same afterwards, no run added.

Then what an import is for: odd but legal text arrives exactly, and an imported run is a run like
any other for ``doctor``, ``export`` and a replay (``--teacher recorded:RUN_DIR``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import struct
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import backend_database
from prefloop.apps.cli_rate import resolve_store
from sqlalchemy import create_engine, select, update
from test_dataset import META, reseal
from test_hostile_input import cli
from test_store import make_pairs

from prefloop.cli.main import main
from prefloop.datasets import export_dataset, import_dataset, load_dataset
from prefloop.ops.doctor import check_run
from prefloop.store import PreferenceStore, labels_table, metadata, sqlite_url
from prefloop.teachers.recorded import make_recorded_teacher
from prefloop.types import Choice

SECRET = "TOP-SECRET-MARKER-7f3a"  # content of files outside the dataset that links point at


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of a run with 4 pairs (3 asking 2 labels), two raters, a retracted label."""
    folder = tmp_path_factory.mktemp("clean")
    url = sqlite_url(folder / "source.sqlite")
    with PreferenceStore(url, "source-run") as store:
        for key, value in META.items():
            store.set_meta(key, value)
        p1, p2, p3 = store.add_pairs(make_pairs(3), labels_per_pair=2)
        (p4,) = store.add_pairs(make_pairs(1, seed=1))
        for rater in ("alice", "bob"):
            for pair_id in (p1, p2):
                assert store.claim_next(rater, exclude=[p for p in (p1, p2, p3, p4) if p != pair_id]).id == pair_id
                store.answer(pair_id, rater, Choice.LEFT, 1.5)
        store.undo_last("bob")  # bob's label on p2 is retracted (kept, marked)
        store.release(p2, "bob")
        assert store.claim_next("alice", exclude=[p1, p2, p3]).id == p4
        store.answer(p4, "alice", Choice.RIGHT, 2.0)
    export_dataset(url, "source-run", folder / "dataset")
    return folder / "dataset"


# -- ways to damage a dataset ----------------------------------------------------------------------


def jsonl(d: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (d / name).read_text().splitlines() if line.strip()]


def write_jsonl(d: Path, name: str, objects: list[Any]) -> None:
    (d / name).write_text("".join(json.dumps(obj) + "\n" for obj in objects))


def edit_field(name: str, index: int, field: str, value: Any) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        objects = jsonl(d, name)
        objects[index][field] = value
        write_jsonl(d, name, objects)
    return damage


def raw_field(name: str, index: int, field: str, raw_json: str) -> Callable[[Path], None]:
    """Set a field to raw JSON text (what json.dumps would never write: NaN, huge numbers...)."""
    def damage(d: Path) -> None:
        lines = (d / name).read_text().splitlines()
        obj = json.loads(lines[index])
        obj[field] = "@@RAW@@"
        lines[index] = json.dumps(obj).replace('"@@RAW@@"', raw_json)
        (d / name).write_text("\n".join(lines) + "\n")
    return damage


def raw_line(name: str, index: int, data: bytes) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        lines = (d / name).read_bytes().splitlines()
        lines[index] = data
        (d / name).write_bytes(b"\n".join(lines) + b"\n")
    return damage


def add_label(**fields: Any) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        labels = jsonl(d, "labels.jsonl")
        labels.append({**labels[0], "id": 999, **fields})
        write_jsonl(d, "labels.jsonl", labels)
    return damage


def edit_manifest(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        manifest = json.loads((d / "manifest.json").read_text())
        change(manifest)
        (d / "manifest.json").write_text(json.dumps(manifest))
    return damage


def raw_manifest(field: str, raw_json: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        manifest = json.loads((d / "manifest.json").read_text())
        manifest[field] = "@@RAW@@"
        (d / "manifest.json").write_text(json.dumps(manifest).replace('"@@RAW@@"', raw_json))
    return damage


def npz_members(d: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(d / "segments.npz") as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_npz(d: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(d / "segments.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], descr: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def member(name: str, data: bytes) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        members = npz_members(d)
        members[name] = data
        write_npz(d, members)
    return damage


def edit_array(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        members = npz_members(d)
        array = np.load(io.BytesIO(members[f"{name}.npy"]), allow_pickle=False)
        members[f"{name}.npy"] = npy(change(array.copy()))
        write_npz(d, members)
    return damage


def set_nan(array: np.ndarray) -> np.ndarray:
    array.flat[3] = np.nan
    return array


def set_inf(array: np.ndarray) -> np.ndarray:
    array.flat[0] = -np.inf
    return array


def drop_member(name: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        members = npz_members(d)
        del members[name]
        write_npz(d, members)
    return damage


def many_members(d: Path) -> None:
    members = npz_members(d)
    members.update({f"extra{i}.npy": b"" for i in range(200)})
    write_npz(d, members)


def zip_bomb(d: Path) -> None:
    """obs.npy as 64 MiB of zeros that deflate to ~64 KiB, with an honest header."""
    members = npz_members(d)
    obs = np.load(io.BytesIO(members["obs.npy"]), allow_pickle=False)
    wide = obs.shape[0] * obs.shape[1]
    columns = (64 << 20) // 4 // wide
    members["obs.npy"] = npy(np.zeros((obs.shape[0], obs.shape[1], columns), np.float32))
    write_npz(d, members)


def declared_size_4gb(d: Path) -> None:
    """The central directory says obs.npy unpacks to 4 GB (a bomb's signature); nothing may be
    decompressed to find out."""
    data = bytearray((d / "segments.npz").read_bytes())
    at = data.find(b"PK\x01\x02")
    while at != -1:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_len] == b"obs.npy":
            struct.pack_into("<I", data, at + 24, 0xFFFF_FFF0)
            break
        at = data.find(b"PK\x01\x02", at + 4)
    else:
        raise AssertionError("no central directory entry for obs.npy")
    (d / "segments.npz").write_bytes(bytes(data))


def symlink_to_secret(name: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        outside = d.parent / "outside"
        outside.mkdir(exist_ok=True)
        secret = outside / "secret.json"
        secret.write_text(json.dumps({"format": SECRET, "id": SECRET, "rater_id": SECRET}) + "\n")
        (d / name).unlink()
        (d / name).symlink_to(secret)
    return damage


def symlink_to(name: str, target: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        (d / name).unlink()
        (d / name).symlink_to(target)
    return damage


def fifo(name: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        (d / name).unlink()
        os.mkfifo(d / name)  # reading it would block for ever
    return damage


def folder_instead(name: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        (d / name).unlink()
        (d / name).mkdir()
    return damage


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


MB = "x" * 1_000_000
BIG_FIELD = "y" * 60_000  # under the line limit, so the field check itself must not echo it


@dataclass(frozen=True)
class Hostile:
    """One hostile dataset: how it is made, a piece of the one-line error it must produce, and
    whether the manifest's checksums are made to match afterwards (``reseal``)."""

    name: str
    damage: Callable[[Path], None]
    expect: str
    reseal: bool = True
    echo: str | None = None  # a hostile value the error may quote at most 80 characters of
    args: tuple[str, ...] = ()


HOSTILE = [
    # -- checksums: required, and must match -----------------------------------------------------
    Hostile("edited-label-old-checksums", edit_field("labels.jsonl", 0, "choice", "right"), "labels.jsonl: its sha256 differs", reseal=False),
    Hostile("checksums-removed", lambda d: (edit_field("labels.jsonl", 0, "choice", "right")(d), reseal(d), edit_manifest(lambda m: m.pop("checksums"))(d)),
            "has no 'checksums' object", reseal=False),
    Hostile("checksum-of-one-file-removed", lambda d: (reseal(d), edit_manifest(lambda m: m["checksums"].pop("labels.jsonl"))(d)),
            "checksums.labels.jsonl is missing", reseal=False),
    Hostile("checksum-not-hex", lambda d: (reseal(d), edit_manifest(lambda m: m["checksums"].update({"pairs.jsonl": "z" * 500}))(d)),
            "checksums.pairs.jsonl is 'zzz", reseal=False, echo="z" * 500),
    Hostile("checksums-null", edit_manifest(lambda m: m.update({"checksums": None})), "has no 'checksums' object", reseal=False),
    # -- links and files that are not files: never followed, never read ----------------------------
    Hostile("manifest-links-outside", symlink_to_secret("manifest.json"), "manifest.json is a symbolic link", reseal=False),
    Hostile("labels-link-outside", symlink_to_secret("labels.jsonl"), "labels.jsonl is a symbolic link"),
    Hostile("labels-link-to-etc-passwd", symlink_to("labels.jsonl", "/etc/passwd"), "labels.jsonl is a symbolic link"),
    Hostile("npz-link-to-dev-zero", symlink_to("segments.npz", "/dev/zero"), "segments.npz is a symbolic link", reseal=False),
    Hostile("pairs-relative-link-up", symlink_to("pairs.jsonl", "../outside/pairs.jsonl"), "pairs.jsonl is a symbolic link", reseal=False),
    Hostile("labels-fifo", fifo("labels.jsonl"), "labels.jsonl is not a regular file", reseal=False),
    Hostile("manifest-is-a-folder", folder_instead("manifest.json"), "manifest.json is not a regular file", reseal=False),
    Hostile("pairs-missing", lambda d: (d / "pairs.jsonl").unlink(), "pairs.jsonl is missing"),
    # -- memory: refused before it is spent -------------------------------------------------------
    Hostile("npy-header-claims-terabytes", member("obs.npy", npy_header((10**6, 10**6, 1000), "<f4", b"\0" * 64)),
            "header claims shape (1000000, 1000000, 1000)"),
    Hostile("npy-header-claims-more-than-it-holds", member("true_rewards.npy", npy_header((4, 10**5), "<f4", b"\0" * 64)),
            "array 'true_rewards': its header claims shape"),
    Hostile("npy-object-dtype-pickle", member("obs.npy", npy_header((2,), "|O", b"\0" * 16)), "only numeric and bool arrays"),
    Hostile("npy-string-dtype", member("actions.npy", npy(np.array(["left", "right"]))), "only numeric and bool arrays"),
    Hostile("npy-garbage-header", member("obs.npy", b"\x93NUMPY\x01\x00" + b"\xff" * 40), "no valid .npy header"),
    Hostile("npz-zip-bomb", zip_bomb, "bytes of arrays uncompressed, more than the limit", args=("--max-gib", "0.01")),
    Hostile("npz-declares-4gb-member", declared_size_4gb, "bytes of arrays uncompressed, more than the limit"),
    Hostile("npz-200-members", many_members, "lists 2"),
    Hostile("npz-not-a-zip", lambda d: (d / "segments.npz").write_bytes(b"PK\x03\x04" + os.urandom(300)), "segments.npz cannot be read"),
    Hostile("npz-array-missing", drop_member("n_valid.npy"), "arrays ['n_valid'] are missing"),
    Hostile("jsonl-bigger-than-allowed", lambda d: None, "more than the limit", args=("--max-gib", "0.000001")),
    Hostile("100k-empty-objects", lambda d: (d / "labels.jsonl").write_text("{}\n" * 100_000),
            "labels.jsonl has 100,001 lines", args=("--max-gib", "0.001")),
    Hostile("100k-empty-segments", lambda d: write_npz(d, {**npz_members(d), "segment_id.npy": npy(np.arange(100_000)),
                                                            "obs.npy": npy(np.zeros((100_000, 1, 0), np.float32))}),
            "segments.npz holds 100,000 segments", args=("--max-gib", "0.1")),
    Hostile("manifest-9mb", edit_manifest(lambda m: m.update({"padding": "p" * (9 << 20)})), "manifest.json is 9,", echo="p" * 100),
    Hostile("1mb-rater-id", edit_field("labels.jsonl", 0, "rater_id", MB), "labels.jsonl line 1 is 1,000,", echo=MB),
    Hostile("1mb-choice", edit_field("labels.jsonl", 1, "choice", MB), "labels.jsonl line 2 is 1,000,", echo=MB),
    Hostile("deep-nesting-100k-in-a-line", raw_field("pairs.jsonl", 0, "score", nested(100_000)), "pairs.jsonl line 1 is 200,"),
    Hostile("deep-nesting-5000-in-a-line", raw_field("labels.jsonl", 0, "choice", nested(5_000)), "labels.jsonl line 1 is nested deeper than 32"),
    Hostile("deep-nesting-40-in-a-line", raw_field("labels.jsonl", 0, "choice", nested(40)), "labels.jsonl line 1 is nested deeper than 32"),
    Hostile("deep-nesting-100k-in-manifest", raw_manifest("config", nested(100_000)), "manifest.json is nested deeper than 32", reseal=False),
    Hostile("5000-digit-integer-in-a-line", raw_field("labels.jsonl", 0, "id", "1" + "0" * 4999), "holds an integer of 5000 digits"),
    Hostile("5000-digit-integer-in-manifest", raw_manifest("created_at", "9" * 5000), "manifest.json holds an integer of 5000 digits", reseal=False),
    Hostile("25-digit-integer", raw_field("pairs.jsonl", 0, "labels_per_pair", "1" * 25), "holds an integer of 25 digits"),
    # -- numbers out of range (PostgreSQL refuses them mid-transaction) ----------------------------
    Hostile("labels-per-pair-2^40", edit_field("pairs.jsonl", 0, "labels_per_pair", 2**40), "'labels_per_pair' must be an integer from 1 to 2147483647"),
    Hostile("labels-per-pair-0", edit_field("pairs.jsonl", 0, "labels_per_pair", 0), "'labels_per_pair' must be an integer from 1 to"),
    Hostile("label-id-2^63", edit_field("labels.jsonl", 0, "id", 2**63), "'id' must be an integer from"),
    Hostile("env-step-2^64-1-uint64", edit_array("env_step", lambda a: np.full(a.shape, 2**64 - 1, np.uint64)), "'env_step' holds a value outside the 64-bit"),
    Hostile("nan-in-json", raw_field("labels.jsonl", 0, "created_at", "NaN"), "holds NaN, which is not a number in standard JSON"),
    Hostile("infinity-in-json", raw_field("pairs.jsonl", 0, "score", "-Infinity"), "holds -Infinity"),
    Hostile("1e400-in-json", raw_field("labels.jsonl", 0, "response_time_s", "1e400"), "too large for a double"),
    Hostile("negative-time", edit_field("labels.jsonl", 0, "created_at", -5.0), "must be unix seconds from 1970"),
    Hostile("year-33658", edit_field("labels.jsonl", 0, "retracted_at", 1e12), "must be unix seconds from 1970"),
    Hostile("pair-created-1e300", edit_field("pairs.jsonl", 1, "created_at", 1e300), "must be unix seconds from 1970"),
    Hostile("negative-response-time", edit_field("labels.jsonl", 0, "response_time_s", -1.0), "must be >= 0"),
    Hostile("render-fps-1e308", edit_manifest(lambda m: m.update({"render_fps": 1e308})), "'render_fps' must be a number from 0 to 1000"),
    # -- arrays the store would refuse -------------------------------------------------------------
    Hostile("nan-in-obs", edit_array("obs", set_nan), "array 'obs' holds NaN or infinite values"),
    Hostile("inf-in-rewards", edit_array("true_rewards", set_inf), "array 'true_rewards' holds NaN or infinite values"),
    Hostile("nan-in-episode-actions", edit_array("episode_actions", lambda a: set_nan(a.astype(np.float32))), "array 'episode_actions' h"),
    Hostile("n-valid-zero", edit_array("n_valid", lambda a: np.zeros_like(a)), "array 'n_valid' is 0"),
    # -- rater ids: every check the store makes, and no bidi tricks ---------------------------------
    Hostile("rater-lone-surrogate", raw_field("labels.jsonl", 0, "rater_id", '"ada\\ud800"'), "unpaired surrogate"),
    Hostile("rater-nul", edit_field("labels.jsonl", 0, "rater_id", "ada\x00"), "control character U+0000"),
    Hostile("rater-terminal-escape", edit_field("labels.jsonl", 0, "rater_id", "\x1b[2J\x1b[31mada"), "control character U+001B"),
    Hostile("rater-newline", edit_field("labels.jsonl", 0, "rater_id", "ada\nbob"), "control character U+000A"),
    Hostile("rater-rtl-override", edit_field("labels.jsonl", 0, "rater_id", "\u202enimda"), "bidirectional control U+202E"),
    Hostile("rater-isolate", edit_field("labels.jsonl", 0, "rater_id", "ada\u2066bob\u2069"), "bidirectional control U+2066"),
    Hostile("rater-201-chars", edit_field("labels.jsonl", 0, "rater_id", "r" * 201), "is 201 characters long"),
    Hostile("rater-60k-chars", edit_field("labels.jsonl", 0, "rater_id", BIG_FIELD), "is 60000 characters long", echo=BIG_FIELD),
    Hostile("rater-blank", edit_field("labels.jsonl", 0, "rater_id", "   "), "non-empty string"),
    Hostile("rater-number", edit_field("labels.jsonl", 0, "rater_id", 42), "non-empty string"),
    Hostile("choice-60k", edit_field("labels.jsonl", 0, "choice", BIG_FIELD), "field 'choice' is 'yyy", echo=BIG_FIELD),
    Hostile("choice-object", edit_field("labels.jsonl", 0, "choice", {"a": 1}), "field 'choice' is a JSON object"),
    # -- labels the store would never have taken -----------------------------------------------------
    Hostile("more-live-labels-than-asked", add_label(rater_id="carol", retracted_at=None), "asked for 2 label(s) but this is live label number 3"),
    Hostile("two-live-labels-one-rater", add_label(retracted_at=None), "has two live (not retracted) labels"),
    Hostile("label-on-unknown-pair", add_label(pair_id=123456), "is 123456, which is not a pair"),
    Hostile("label-line-not-utf8", raw_line("labels.jsonl", 0, b'{"id": "\xff\xfe"}'), "labels.jsonl line 1 is not UTF-8"),
    Hostile("label-line-an-array", raw_line("labels.jsonl", 0, b"[1, 2, 3]"), "labels.jsonl line 1 must be a JSON object"),
    # -- the manifest --------------------------------------------------------------------------------
    Hostile("format-1mb", edit_manifest(lambda m: m.update({"format": MB})), "field 'format' is 'xxx", echo=MB),
    Hostile("manifest-an-array", lambda d: (d / "manifest.json").write_text("[1]"), "must hold a JSON object", reseal=False),
    Hostile("manifest-not-utf8", lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe{}"), "manifest.json is not UTF-8", reseal=False),
    Hostile("version-true", edit_manifest(lambda m: m.update({"version": True})), "field 'version' is True"),
    Hostile("source-run-name-nul", edit_manifest(lambda m: m["source"].update({"run_name": "run\x00"})), "has the run_name 'run\\x00'"),
    Hostile("source-run-name-1mb", edit_manifest(lambda m: m["source"].update({"run_name": MB})), "has the run_name 'xxx", echo=MB),
    Hostile("guideline-nul", edit_manifest(lambda m: m.update({"guideline": "Which?\x00"})), "field 'guideline' contains a NUL"),
    Hostile("guideline-surrogate", raw_manifest("guideline", '"Which\\udc00?"'), "field 'guideline' contains an unpaired surrogate", reseal=False),
    Hostile("guideline-page-nul", edit_manifest(lambda m: m.update({"guideline_page": "# Guide\n\x00"})), "field 'guideline_page' contains a NUL"),
    Hostile("guideline-page-1mb", edit_manifest(lambda m: m.update({"guideline_page": MB})), "field 'guideline_page' is 1,000,000 characters", echo=MB),
    Hostile("guideline-page-a-list", edit_manifest(lambda m: m.update({"guideline_page": ["# Guide"]})), "field 'guideline_page' must be a JSON string"),
    Hostile("guideline-1mb", edit_manifest(lambda m: m.update({"guideline": MB})), "field 'guideline' is 1,000,000 characters", echo=MB),
    Hostile("env-spec-without-env-id", edit_manifest(lambda m: m.update({"env_spec": {"env_kwargs": {}}})), "field 'env_spec' must name its env"),
    Hostile("env-kwargs-absolute-path", edit_manifest(lambda m: m.update({"env_spec": {"env_id": "Hopper-v5", "env_kwargs": {"xml_file": "/etc/passwd"}}})),
            "env_kwargs.xml_file' = '/etc/passwd'; a dataset may not name files"),
    Hostile("env-kwargs-nested-relative-path", edit_manifest(lambda m: m.update({"env_spec": {"env_id": "Hopper-v5", "env_kwargs": {"a": [{"b": "../../x.xml"}]}}})),
            "env_kwargs.a[0].b' = '../../x.xml'"),
    Hostile("env-kwargs-home-path", edit_manifest(lambda m: m.update({"env_spec": {"env_id": "Hopper-v5", "env_kwargs": {"xml_file": "~root.xml"}}})),
            "may not name files"),
    Hostile("env-id-with-a-command", edit_manifest(lambda m: m["env_spec"].update({"env_id": "CartPole-v1\n; rm -rf ~"})), "must name its env in 'env_id'"),
    Hostile("env-id-up-the-tree", edit_manifest(lambda m: m["env_spec"].update({"env_id": "../../CartPole-v1"})), "must name its env in 'env_id'"),
    Hostile("env-id-1mb", edit_manifest(lambda m: m["env_spec"].update({"env_id": MB})), "must name its env in 'env_id'", echo=MB),
    Hostile("counts-lie-with-1mb", edit_manifest(lambda m: m["counts"].update({"labels": MB})), "counts.labels says 'xxx", echo=MB),
]


def dump_store(url: str) -> dict[str, list[tuple]]:
    """Every row of every prefloop table, as stored."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {t.name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns))] for t in metadata.sorted_tables}
    finally:
        engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def precious(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A store on each backend whose run 'precious' holds labels an import must never touch (one
    database per backend for the module: creating one per case would cost more than the cases)."""
    with backend_database(request, request.param, tmp_path_factory) as url:
        with PreferenceStore(url, "precious") as store:
            store.set_meta("guideline", "keep me")
            (pair_id,) = store.add_pairs(make_pairs(1))
            store.claim_next("ada")
            store.answer(pair_id, "ada", Choice.LEFT, 1.0)
        yield url


def assert_short_excerpt(err: str, value: str | None) -> None:
    if value is not None:
        assert value[:81] not in err, "the error echoes more than 80 characters of the value"


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_a_hostile_dataset_is_refused_in_one_line_and_changes_nothing(
    case: Hostile, clean_dataset: Path, precious: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(clean_dataset, dataset)
    case.damage(dataset)
    if case.reseal:
        reseal(dataset)
    before = dump_store(precious)

    # into a store that holds another run's labels (SQLite file or PostgreSQL database)
    err = cli(capsys, "import", "--in", str(dataset), "--db-url", precious, "--run-name", f"new-{case.name}", *case.args)
    assert case.expect in err, err
    assert SECRET not in err and "root:" not in err
    assert_short_excerpt(err, case.echo)
    assert dump_store(precious) == before  # no row changed, no run added
    # into a new run folder: never created
    if precious.startswith("sqlite"):
        again = cli(capsys, "import", "--in", str(dataset), "--run-dir", str(tmp_path / "new-run"), *case.args)
        assert again == err
        assert not (tmp_path / "new-run").exists()


# -- what an import is for --------------------------------------------------------------------------

ODD_BUT_LEGAL = ["名前 テスト", "Robert'); DROP TABLE labels;--", "<img src=x onerror=alert(1)>",
                 "[Session expired - log in](https://evil.example/login)", "José", "🙂"]


def test_odd_but_legal_text_and_times_arrive_exactly_on_both_backends(
    clean_dataset: Path, precious: str, tmp_path: Path
) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(clean_dataset, dataset)
    labels = jsonl(dataset, "labels.jsonl")
    for label, rater in zip(labels, ODD_BUT_LEGAL):
        label["rater_id"] = rater
    labels[0]["created_at"] = 0.0  # 1970: legal, if odd; the dashboard must cope
    labels[1]["created_at"] = 1e10  # the year 2286
    write_jsonl(dataset, "labels.jsonl", labels)
    page = "# How to rate\n\n![tracker](https://evil.example/a.png) [Session expired](https://evil.example/login)\n"
    edit_manifest(lambda m: m.update({"guideline": "![x](https://evil.example/a.png) Which is better?", "guideline_page": page}))(dataset)
    reseal(dataset)

    run = f"odd-{uuid.uuid4().hex[:8]}"
    summary = import_dataset(dataset, precious, run)
    assert summary.labels == len(labels)
    with PreferenceStore(precious, run) as store:
        stored = store.labels(include_retracted=True)
        assert [(lab.rater_id, lab.created_at) for lab in stored] == [(lab["rater_id"], lab["created_at"]) for lab in labels]
        assert store.get_meta("guideline") == "![x](https://evil.example/a.png) Which is better?"
        assert store.get_meta("guideline_page") == page  # stored as written; the rater app renders it safely
    again = load_dataset(export_dataset(precious, run, tmp_path / "again").path)
    assert [lab.rater_id for lab in again.labels] == [lab["rater_id"] for lab in labels]
    assert again.manifest["guideline_page"] == page


def test_an_imported_run_is_a_run_doctor_export_and_replay_understand(
    clean_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "imported"
    assert main(["import", "--in", str(clean_dataset), "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()

    report = check_run(run_dir)
    assert report.healthy, report.to_text()
    text = report.to_text()
    assert "was imported" in text and "source-run" in text and "config.json is missing" not in text
    assert f"recorded:{run_dir}" in text  # says how to train on it
    assert main(["doctor", "--run-dir", str(run_dir)]) == 0

    # raters get the pairs still waiting for labels (the app opens the run the import made)
    url, run_name = resolve_store(argparse.Namespace(run_dir=run_dir, run_name=None, db_url=None))
    with PreferenceStore(url, run_name) as store:
        assert store.counts()["labels"] == 4 and store.counts()["pending"] == 2
        waiting = store.claim_next("carol")
        assert waiting is not None
        store.answer(waiting.id, "carol", Choice.LEFT, 3.0)
        store.release(store.claim_next("carol").id, "carol")

    assert main(["export", "--run-dir", str(run_dir), "--out", str(tmp_path / "exported")]) == 0
    original, exported = load_dataset(clean_dataset), load_dataset(tmp_path / "exported")
    assert [(lab.rater_id, lab.choice, lab.created_at, lab.retracted_at) for lab in original.labels] == [
        (lab.rater_id, lab.choice, lab.created_at, lab.retracted_at) for lab in exported.labels[:-1]
    ]
    assert exported.labels[-1].rater_id == "carol"

    # a replay reads the imported run like the dataset it came from
    from_run, from_dataset = make_recorded_teacher(run_dir), make_recorded_teacher(clean_dataset)
    assert len(from_run) == len(from_dataset) == 3 and from_run.source_run == "imported"
    for pair in original.pairs:
        segments = original.segment_by_id()
        left, right = segments[pair.left_segment_id], segments[pair.right_segment_id]
        if pair.id in original.live_labels():
            assert from_run.compare(left, right) == from_dataset.compare(left, right)


def test_a_write_that_fails_midway_leaves_no_run_and_no_row(
    clean_dataset: Path, precious: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """All or nothing: the store refusing a row after some were written (as PostgreSQL does with
    an out-of-range value) rolls the whole import back, removes the run it created and the run
    folder it made, and says so in one line."""
    from sqlalchemy.exc import DataError

    import prefloop.datasets.importing as dataset_module

    write = dataset_module._write_dataset

    def write_then_fail(conn, run_id, run_name, dataset):  # type: ignore[no-untyped-def]
        write(conn, run_id, run_name, dataset)
        raise DataError("INSERT ...", {}, Exception('value "1099511627776" is out of range for type integer'))

    monkeypatch.setattr(dataset_module, "_write_dataset", write_then_fail)
    before = dump_store(precious)
    err = cli(capsys, "import", "--in", str(clean_dataset), "--db-url", precious, "--run-name", "fails-midway")
    assert "the store refused the dataset" in err and "out of range" in err
    assert dump_store(precious) == before
    if precious.startswith("sqlite"):
        cli(capsys, "import", "--in", str(clean_dataset), "--run-dir", str(tmp_path / "new-run"))
        assert not (tmp_path / "new-run").exists()
    # and a run that already has pairs is never written into
    with pytest.raises(Exception, match="already has 1 pairs"):
        import_dataset(clean_dataset, precious, "precious")
    assert dump_store(precious) == before


@pytest.mark.parametrize("value", [-math.inf, math.inf], ids=["minus-infinity", "infinity"])
def test_export_of_a_store_holding_an_impossible_time_is_one_line(
    clean_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: float
) -> None:
    """A label time another tool wrote (SQLite keeps infinities) cannot go into a dataset: one line,
    no half-written folder, the store unchanged."""
    run_dir = tmp_path / "run"
    import_dataset(clean_dataset, sqlite_url((run_dir.mkdir() or run_dir) / "prefs.sqlite"), "run")
    url = sqlite_url(run_dir / "prefs.sqlite")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(labels_table).where(labels_table.c.rater_id == "bob").values(created_at=value))
    engine.dispose()
    before = dump_store(url)
    err = cli(capsys, "export", "--run-dir", str(run_dir), "--out", str(tmp_path / "out"))
    assert "created_at = " in err and "nothing was exported" in err
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [run_dir]
    assert dump_store(url) == before


# -- a zipped dataset (the dashboard's "Download preferences") ----------------------------------------


def zipped(clean: Path, path: Path, members: dict[str, bytes] | None = None, folder: str = "run-preferences/",
           extra: Callable[[zipfile.ZipFile], None] | None = None) -> Path:
    """A zip of the clean dataset's files in ``folder`` (``members`` replaces or adds some)."""
    files = {name: (clean / name).read_bytes() for name in ("manifest.json", "segments.npz", "segments.jsonl", "pairs.jsonl", "labels.jsonl", "checks.jsonl")}
    files.update(members or {})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(folder + name, data)
        if extra:
            extra(archive)
    return path


def test_a_zipped_dataset_imports_like_its_folder(clean_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prefloop.apps.export_download import export_zip

    source = tmp_path / "source"
    assert main(["import", "--in", str(clean_dataset), "--run-dir", str(source)]) == 0
    (tmp_path / "download.zip").write_bytes(export_zip(sqlite_url(source / "prefs.sqlite"), "source"))
    for path in (tmp_path / "download.zip", zipped(clean_dataset, tmp_path / "flat.zip", folder="")):
        run_dir = tmp_path / f"from-{path.stem}"
        assert main(["import", "--in", str(path), "--run-dir", str(run_dir)]) == 0
        with PreferenceStore(sqlite_url(run_dir / "prefs.sqlite"), run_dir.name) as store:
            assert [(lab.rater_id, lab.choice) for lab in store.labels(include_retracted=True)] == [
                (lab.rater_id, lab.choice) for lab in load_dataset(clean_dataset).labels]
    capsys.readouterr()


def symlink_member(archive: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("run-preferences/notes.txt")
    info.external_attr = (0o120777) << 16  # a symbolic link to /etc/passwd
    archive.writestr(info, "/etc/passwd")


def link_as_manifest(clean: Path, path: Path) -> Path:
    files = {n: (clean / n).read_bytes() for n in ("segments.npz", "segments.jsonl", "pairs.jsonl", "labels.jsonl")}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"d/{name}", data)
        info = zipfile.ZipInfo("d/manifest.json")
        info.external_attr = (0o120777) << 16
        archive.writestr(info, "/etc/passwd")
    return path


ZIP_CASES = [
    ("path-up-the-tree", lambda c, p: zipped(c, p, folder="../../"), "a zipped dataset holds only"),
    ("absolute-path", lambda c, p: zipped(c, p, folder="/etc/"), "a zipped dataset holds only"),
    ("two-folders-deep", lambda c, p: zipped(c, p, folder="a/b/"), "a zipped dataset holds only"),
    ("an-extra-script", lambda c, p: zipped(c, p, {"run.sh": b"rm -rf ~"}), "holds 'run-preferences/run.sh'"),
    ("a-symlink-member", lambda c, p: zipped(c, p, extra=symlink_member), "a zipped dataset holds only"),
    ("the-manifest-a-symlink", link_as_manifest, "is a symbolic link"),
    ("200-members", lambda c, p: zipped(c, p, extra=lambda a: [a.writestr(f"x{i}", b"") for i in range(200)]), "lists 2"),
    ("a-file-twice", lambda c, p: zipped(c, p, extra=lambda a: a.writestr("run-preferences/labels.jsonl", b"{}")), "holds a file twice"),
    ("unpacks-beyond-the-limit", lambda c, p: zipped(c, p, {"labels.jsonl": b" " * (16 << 20)}), "unpacks to 16,"),
    ("truncated", lambda c, p: (p.write_bytes(zipped(c, p).read_bytes()[:-30]), p)[1], "is a file but not a zip"),
]


@pytest.mark.parametrize(("make", "expect"), [c[1:] for c in ZIP_CASES], ids=[c[0] for c in ZIP_CASES])
def test_a_hostile_zip_is_refused_before_anything_is_unpacked(
    make: Callable[[Path, Path], Path], expect: str, clean_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it is asked to write
        path = make(clean_dataset, tmp_path / "dataset.zip")
    err = cli(capsys, "import", "--in", str(path), "--run-dir", str(tmp_path / "new-run"), "--max-gib", "0.01")
    assert expect in err, err
    assert "root:" not in err and not (tmp_path / "new-run").exists()
