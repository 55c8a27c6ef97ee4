"""Exporting a run's preferences as an open dataset, importing it elsewhere, and replaying it.

The source is a real store with real CartPole segments, two raters, a retracted label, a cant_tell
and a gold pair. The round trip must give back every array bit for bit (dtypes too) and every label
as it was; broken datasets must be refused by name without touching the target store; and a
re-run whose teacher replays the export must ask and answer exactly the same pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sqlite3
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder
from prefloop.reward_models import RewardModelConfig
from sqlalchemy import create_engine, select

from prefloop.cli.datasets import add_export_parser, add_import_parser
from prefloop.datasets import (
    FORMAT_NAME,
    DatasetError,
    export_dataset,
    import_dataset,
    load_dataset,
)
from prefloop.store import PreferenceStore, pairs_table, sqlite_url
from prefloop.teachers import make_teacher
from prefloop.teachers.recorded import (
    RecordedTeacher,
    UnrecordedPairError,
    make_recorded_teacher,
    replay_caveats,
    segment_fingerprint,
)
from prefloop.training.config import TrainConfig
from prefloop.training.loop import build_vec_env, collect_random, train
from prefloop.types import Choice, Label, Segment, SegmentPair

SEGMENT_LENGTH = 25
META = {
    "env_spec": json.dumps({"env_id": "CartPole-v1", "env_kwargs": {}}),
    "render_fps": "50.0",
    "guideline": "Which cart keeps the pole upright longer?",
    "config": json.dumps({"env_id": "CartPole-v1", "seed": 0, "labels": 4}),
}


@pytest.fixture(scope="module")
def cartpole_segments() -> list[Segment]:
    """Segments of random CartPole play, some of them padded after termination."""
    buffer = SegmentBuffer(500)
    recorder = VecSegmentRecorder(build_vec_env(EnvSpec("CartPole-v1"), 2, seed=3), buffer, SEGMENT_LENGTH, seed=3)
    collect_random(recorder, 600, seed=3)
    segments = buffer.recent()
    assert len(segments) >= 10 and any(s.n_valid < SEGMENT_LENGTH for s in segments)
    return segments


def fresh(segment: Segment) -> Segment:
    """An unsaved copy (a store sets ``id`` on the segments it saves)."""
    return dataclasses.replace(segment, id=None)


def answer(store: PreferenceStore, rater: str, pair_id: int, choice: Choice, seconds: float) -> None:
    others = [p for p in range(1, 1000) if p != pair_id]
    pair = store.claim_next(rater, exclude=others)
    assert pair is not None and pair.id == pair_id
    store.answer(pair_id, rater, choice, seconds)


@dataclasses.dataclass
class Source:
    url: str
    run_name: str
    pair_ids: list[int]  # p1 (2 raters agree), p2 (retracted, re-answered, cant_tell), p3 (half done), gold


@pytest.fixture
def source(tmp_path: Path, cartpole_segments: list[Segment]) -> Source:
    url = sqlite_url(tmp_path / "source.sqlite")
    segs = [fresh(s) for s in cartpole_segments[:8]]
    with PreferenceStore(url, run_name="human-run") as store:
        for key, value in META.items():
            store.set_meta(key, value)
        store.add_segments([segs[7]])  # stored but never shown: exported all the same
        p1, p2, p3 = store.add_pairs(
            [SegmentPair(segs[0], segs[1], score=0.75), SegmentPair(segs[2], segs[3], score=0.5),
             SegmentPair(segs[1], segs[4], score=0.125)],
            labels_per_pair=2,
        )
        (gold,) = store.add_pairs([SegmentPair(segs[5], segs[6])], gold_choice=Choice.RIGHT)
        answer(store, "alice", p1, Choice.LEFT, 1.25)
        answer(store, "alice", p2, Choice.RIGHT, 2.5)
        assert store.undo_last("alice").pair_id == p2
        store.answer(p2, "alice", Choice.EQUAL, 3.0)  # undo leased the pair back to alice
        answer(store, "bob", p1, Choice.LEFT, 0.5)
        answer(store, "bob", p2, Choice.CANT_TELL, 4.0)
        answer(store, "alice", p3, Choice.RIGHT, 1.0)
        answer(store, "bob", gold, Choice.RIGHT, 0.75)
    return Source(url, "human-run", [p1, p2, p3, gold])


def open_store(url: str, run_name: str) -> PreferenceStore:
    return PreferenceStore(url, run_name=run_name)


def pair_rows(url: str, run_name: str) -> list:
    with open_store(url, run_name) as store:
        run_id = store.run_id
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(pairs_table).where(pairs_table.c.run_id == run_id).order_by(pairs_table.c.id)).all()
    engine.dispose()
    return rows


def dump(db_file: Path) -> list[str]:
    with sqlite3.connect(db_file) as conn:
        return list(conn.iterdump())


def assert_same_segment(a: Segment, b: Segment) -> None:
    for name in ("obs", "actions", "true_rewards", "episode_actions"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
    for name in ("n_valid", "terminated", "episode_seed", "start_step", "env_step"):
        assert getattr(a, name) == getattr(b, name), name


# --------------------------------------------------------------------------------------------
# Round trip


def test_export_then_import_gives_back_every_segment_pair_and_label(
    source: Source, tmp_path: Path, store_url: str
) -> None:
    out = tmp_path / "dataset"
    exported = export_dataset(source.url, source.run_name, out)
    assert (exported.segments, exported.pairs, exported.labels, exported.retracted_labels) == (8, 4, 7, 1)
    assert exported.raters == ["alice", "bob"]

    imported = import_dataset(out, store_url, "copy")
    with open_store(source.url, source.run_name) as src, open_store(store_url, "copy") as dst:
        assert dst.counts() == src.counts()
        for old, new in imported.segment_ids.items():
            assert_same_segment(src.get_segments([old])[0], dst.get_segments([new])[0])

        def label_view(label: Label, pair_map: dict[int, int] | None = None) -> tuple:
            pair_id = pair_map[label.pair_id] if pair_map else label.pair_id
            return (pair_id, label.rater_id, label.choice, label.response_time_s, label.created_at, label.retracted_at)

        src_labels = src.labels(include_retracted=True)
        assert [label_view(lab, imported.pair_ids) for lab in src_labels] == [
            label_view(lab) for lab in dst.labels(include_retracted=True)
        ]
        assert sum(lab.retracted_at is not None for lab in src_labels) == 1
        assert [(p.target, p.extra) for p in src.labeled_pairs()] == [(p.target, p.extra) for p in dst.labeled_pairs()]
        for key, value in META.items():
            assert dst.get_meta(key) == value
        assert json.loads(dst.get_meta("import_source"))["source_run_name"] == "human-run"

        seg_map = imported.segment_ids
        src_pairs = pair_rows(source.url, source.run_name)
        dst_pairs = pair_rows(store_url, "copy")
        assert [
            (imported.pair_ids[r.id], seg_map[r.left_segment_id], seg_map[r.right_segment_id], r.status,
             r.labels_per_pair, r.gold_choice, r.score, r.created_at)
            for r in src_pairs
        ] == [
            (r.id, r.left_segment_id, r.right_segment_id, r.status, r.labels_per_pair, r.gold_choice, r.score,
             r.created_at)
            for r in dst_pairs
        ]
        assert [r.status for r in dst_pairs] == ["answered", "answered", "pending", "answered"]

    # exporting the copy (from either backend) gives the same dataset again, up to ids
    again = load_dataset(export_dataset(store_url, "copy", tmp_path / "again").path)
    first = load_dataset(out)
    for a, b in zip(first.segments, again.segments, strict=True):
        assert_same_segment(a, b)
    assert [dataclasses.replace(lab, id=None, pair_id=imported.pair_ids[lab.pair_id]) for lab in first.labels] == [
        dataclasses.replace(lab, id=None) for lab in again.labels
    ]

    with open_store(store_url, "copy") as dst:
        # the half-labelled pair goes on where it was: bob may still give its second label
        p3 = imported.pair_ids[source.pair_ids[2]]
        assert dst.claim_next("alice") is None
        assert dst.claim_next("bob").id == p3


def test_dataset_files_are_open_formats_without_pickle(source: Source, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    export_dataset(source.url, source.run_name, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "checks.jsonl", "labels.jsonl", "manifest.json", "pairs.jsonl", "segments.jsonl", "segments.npz"
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["format"], manifest["version"]) == (FORMAT_NAME, 1)
    assert manifest["env_spec"]["env_id"] == "CartPole-v1" and manifest["render_fps"] == 50.0
    assert manifest["guideline"] == META["guideline"] and manifest["config"]["labels"] == 4
    assert manifest["counts"]["labels"] == 7 and manifest["counts"]["gold_pairs"] == 1
    assert manifest["segment_length"] == SEGMENT_LENGTH
    for name in ("segments.npz", "segments.jsonl", "pairs.jsonl", "labels.jsonl"):
        assert manifest["files"][name]["description"]
    assert set(manifest["files"]["segments.npz"]["arrays"]) >= {"obs", "actions", "episode_actions_offsets"}

    with np.load(out / "segments.npz", allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    assert arrays["obs"].shape[:2] == (8, SEGMENT_LENGTH) and arrays["obs"].dtype == np.float32
    assert arrays["actions"].dtype == np.int64 and arrays["terminated"].dtype == np.bool_
    assert arrays["episode_actions_offsets"][-1] == arrays["episode_actions"].shape[0]
    with zipfile.ZipFile(out / "segments.npz") as archive:
        members = [archive.read(name) for name in archive.namelist()]
    for blob in [*members, *(p.read_bytes() for p in out.iterdir())]:
        assert b"\x80\x04\x95" not in blob and b"\x80\x03" not in blob and b"cnumpy" not in blob

    lines = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert {line["choice"] for line in lines} == {"left", "right", "equal", "cant_tell"}
    segment_lines = [json.loads(line) for line in (out / "segments.jsonl").read_text().splitlines()]
    assert all(line["run_name"] == "human-run" and line["env_id"] == "CartPole-v1" for line in segment_lines)


def test_export_can_leave_out_retracted_labels(source: Source, tmp_path: Path) -> None:
    summary = export_dataset(source.url, source.run_name, tmp_path / "d", include_retracted=False)
    assert (summary.labels, summary.retracted_labels) == (6, 0)
    assert all(lab.retracted_at is None for lab in load_dataset(tmp_path / "d").labels)


def test_export_refuses_a_non_empty_folder_and_a_missing_run(source: Source, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty.*new --out"):
        export_dataset(source.url, source.run_name, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    export_dataset(source.url, source.run_name, out)  # an empty folder is fine

    before = dump(tmp_path / "source.sqlite")
    with pytest.raises(DatasetError, match="no run 'nope' in .*it holds: 'human-run'"):
        export_dataset(source.url, "nope", tmp_path / "other")
    assert dump(tmp_path / "source.sqlite") == before, "export never creates a run"
    with pytest.raises(DatasetError, match="no preference store"):
        export_dataset(sqlite_url(tmp_path / "missing.sqlite"), "x", tmp_path / "other")
    assert not (tmp_path / "missing.sqlite").exists()


# --------------------------------------------------------------------------------------------
# Refusals


def reseal(d: Path) -> None:
    """Write the sha256 of every file present into the manifest, as someone editing a dataset on
    purpose would, so the checks behind the checksum are what a damaged file meets."""
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["checksums"] = {
        name: hashlib.sha256((d / name).read_bytes()).hexdigest()
        for name in ("segments.npz", "segments.jsonl", "pairs.jsonl", "labels.jsonl", "checks.jsonl")
        if (d / name).is_file()
    }
    (d / "manifest.json").write_text(json.dumps(manifest))


def _truncate_npz(d: Path) -> None:
    data = (d / "segments.npz").read_bytes()
    (d / "segments.npz").write_bytes(data[: len(data) // 2])


def _bad_json_line(d: Path) -> None:
    lines = (d / "labels.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]
    (d / "labels.jsonl").write_text("\n".join(lines) + "\n")


def _unknown_choice(d: Path) -> None:
    lines = [json.loads(line) for line in (d / "labels.jsonl").read_text().splitlines()]
    lines[1]["choice"] = "both"
    (d / "labels.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def _wrong_obs_shape(d: Path) -> None:
    with np.load(d / "segments.npz", allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["obs"] = arrays["obs"][:, :-1]
    np.savez_compressed(d / "segments.npz", **arrays)


def _dangling_pair(d: Path) -> None:
    lines = [json.loads(line) for line in (d / "pairs.jsonl").read_text().splitlines()]
    lines[0]["right_segment_id"] = 9999
    (d / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def _edited_label(d: Path) -> None:  # valid, but not what was exported
    lines = [json.loads(line) for line in (d / "labels.jsonl").read_text().splitlines()]
    lines[0]["choice"] = "right" if lines[0]["choice"] == "left" else "left"
    (d / "labels.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def _lost_last_label(d: Path) -> None:
    lines = (d / "labels.jsonl").read_text().splitlines()
    (d / "labels.jsonl").write_text("\n".join(lines[:-1]) + "\n")


def _future_version(d: Path) -> None:
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["version"] = 2
    (d / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate_npz, r"segments\.npz cannot be read"),
        (_bad_json_line, r"labels\.jsonl line 3 is not valid JSON"),
        (_unknown_choice, r"labels\.jsonl line 2: field 'choice' is 'both'; it must be one of"),
        (_wrong_obs_shape, r"segments\.npz: array 'obs' has shape"),
        (_dangling_pair, r"pairs\.jsonl line 1: field 'right_segment_id' is 9999"),
        (_edited_label, r"labels\.jsonl: its sha256 differs"),
        (_lost_last_label, r"labels\.jsonl holds 6 labels but manifest\.json counts\.labels says 7"),
        (lambda d: (d / "manifest.json").unlink(), r"manifest\.json is missing"),
        (lambda d: (d / "pairs.jsonl").unlink(), r"pairs\.jsonl is missing"),
        (_future_version, r"manifest\.json: field 'version' is 2"),
    ],
)
def test_malformed_dataset_is_refused_by_name_and_the_store_is_left_unchanged(
    source: Source, tmp_path: Path, damage, message: str
) -> None:
    out = tmp_path / "dataset"
    export_dataset(source.url, source.run_name, out)
    damage(out)
    if damage is not _edited_label and (out / "manifest.json").exists():
        reseal(out)
    target = tmp_path / "target.sqlite"
    with open_store(sqlite_url(target), "existing") as store:
        store.set_meta("guideline", "keep me")
    before = dump(target)
    with pytest.raises(DatasetError, match=message):
        import_dataset(out, sqlite_url(target), "copy")
    assert dump(target) == before


def test_import_never_mixes_labels_into_a_run_that_has_pairs(
    source: Source, tmp_path: Path, cartpole_segments: list[Segment]
) -> None:
    out = tmp_path / "dataset"
    export_dataset(source.url, source.run_name, out)
    target = tmp_path / "target.sqlite"
    with open_store(sqlite_url(target), "busy") as store:
        store.add_pairs([SegmentPair(fresh(cartpole_segments[0]), fresh(cartpole_segments[1]))])
    before = dump(target)
    with pytest.raises(DatasetError, match="already has 1 pairs.*new run"):
        import_dataset(out, sqlite_url(target), "busy")
    assert dump(target) == before

    import_dataset(out, sqlite_url(target), "fresh")
    with pytest.raises(DatasetError, match="already has 4 pairs"):
        import_dataset(out, sqlite_url(target), "fresh")
    with open_store(sqlite_url(target), "fresh") as store:
        assert store.counts()["labels"] == 6


def test_cli_export_and_import_with_run_folders(source: Source, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "folder-name"
    run_dir.mkdir(parents=True)
    shutil.copy(tmp_path / "source.sqlite", run_dir / "prefs.sqlite")
    (run_dir / "config.json").write_text(json.dumps({"run_name": "human-run"}))

    parser = argparse.ArgumentParser(prog="prefloop")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    add_import_parser(sub)

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return args.func(args)

    assert run("export", "--run-dir", str(run_dir), "--out", str(tmp_path / "ds")) == 0
    new_run = tmp_path / "runs" / "replica"
    assert run("import", "--in", str(tmp_path / "ds"), "--run-dir", str(new_run)) == 0
    with open_store(sqlite_url(new_run / "prefs.sqlite"), "replica") as store:
        assert store.counts()["labels"] == 6
    with pytest.raises(DatasetError, match="--run-dir DIR, or --db-url URL with --run-name"):
        run("import", "--in", str(tmp_path / "ds"), "--db-url", sqlite_url(tmp_path / "x.sqlite"))
    with pytest.raises(DatasetError, match="manifest.json is missing"):
        run("import", "--in", str(tmp_path), "--run-dir", str(tmp_path / "never"))
    assert not (tmp_path / "never").exists(), "a bad dataset creates no run folder"


# --------------------------------------------------------------------------------------------
# Recorded teacher


def test_recorded_teacher_replays_every_recorded_choice_in_either_order(source: Source, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    export_dataset(source.url, source.run_name, out)
    teacher = make_recorded_teacher(out)
    expected = {  # majority of live labels; cant_tell does not vote
        source.pair_ids[0]: Choice.LEFT,  # alice LEFT, bob LEFT
        source.pair_ids[1]: Choice.EQUAL,  # alice's RIGHT retracted, then EQUAL; bob CANT_TELL
        source.pair_ids[2]: Choice.RIGHT,  # alice only
        source.pair_ids[3]: Choice.RIGHT,  # gold pair, bob
    }
    swapped = {Choice.LEFT: Choice.RIGHT, Choice.RIGHT: Choice.LEFT, Choice.EQUAL: Choice.EQUAL}
    # segments as another store holds them (new ids): the pair is known by content
    imported = import_dataset(out, sqlite_url(tmp_path / "copy.sqlite"), "copy")
    with open_store(sqlite_url(tmp_path / "copy.sqlite"), "copy") as store:
        for old_id, choice in expected.items():
            pair = store.get_pair(imported.pair_ids[old_id])
            assert teacher.compare(pair.left, pair.right) is choice
            assert teacher.compare(pair.right, pair.left) is swapped[choice]
    assert teacher.rater_id == "recorded" and len(teacher) == 4


def test_recorded_teacher_rules_and_unknown_pairs(source: Source, tmp_path: Path, cartpole_segments: list[Segment]) -> None:
    out = tmp_path / "dataset"
    export_dataset(source.url, source.run_name, out)
    dataset = load_dataset(out)
    segments = dataset.segment_by_id()
    p1 = dataset.pairs[0]
    left, right = segments[p1.left_segment_id], segments[p1.right_segment_id]

    def with_labels(*choices: Choice) -> RecordedTeacher:
        labels = [
            Label(pair_id=p1.id, rater_id=f"r{i}", choice=c, response_time_s=1.0, created_at=100.0 - i, id=i)
            for i, c in enumerate(choices)
        ]
        return dataclasses.replace(dataset, labels=labels)

    def ask(data, **kwargs) -> Choice:
        return RecordedTeacher(data, **kwargs).compare(left, right)

    assert ask(with_labels(Choice.LEFT, Choice.RIGHT)) is Choice.EQUAL  # a tie
    assert ask(with_labels(Choice.RIGHT, Choice.LEFT, Choice.RIGHT)) is Choice.RIGHT
    assert ask(with_labels(Choice.LEFT, Choice.CANT_TELL)) is Choice.LEFT  # cant_tell does not vote
    assert ask(with_labels(Choice.CANT_TELL, Choice.CANT_TELL)) is Choice.CANT_TELL
    # "first": the earliest label (created_at 98 is r2's)
    assert ask(with_labels(Choice.RIGHT, Choice.RIGHT, Choice.LEFT), rule="first") is Choice.LEFT

    stranger = fresh(cartpole_segments[9])
    teacher = RecordedTeacher(dataset)
    with pytest.raises(UnrecordedPairError, match="does not have.*--when-behind wait") as info:
        teacher.compare(left, stranger)
    assert isinstance(info.value, ValueError)
    assert RecordedTeacher(dataset, on_missing="cant_tell").compare(left, stranger) is Choice.CANT_TELL
    with pytest.raises(UnrecordedPairError, match="no live label"):
        RecordedTeacher(with_labels()).compare(left, right)
    # the same segment content hashes the same however the arrays are laid out
    copy = dataclasses.replace(left, obs=np.asfortranarray(left.obs), id=12345)
    assert segment_fingerprint(copy) == segment_fingerprint(left)
    assert segment_fingerprint(dataclasses.replace(left, start_step=left.start_step + 1)) != segment_fingerprint(left)


# --------------------------------------------------------------------------------------------
# End to end: a re-run with the recorded teacher asks and answers exactly the recorded pairs


def _labels_by_content(run_dir: Path, run_name: str) -> list[tuple[str, str, Choice]]:
    with open_store(sqlite_url(run_dir / "prefs.sqlite"), run_name) as store:
        out = []
        for label in store.labels():
            pair = store.get_pair(label.pair_id)
            out.append((segment_fingerprint(pair.left), segment_fingerprint(pair.right), label.choice))
    return out


@pytest.mark.slow
def test_rerun_with_the_recorded_teacher_gives_identical_labels(tmp_path: Path) -> None:
    torch.set_num_threads(1)

    def config(name: str, teacher: str) -> TrainConfig:
        return TrainConfig(
            env_id="CartPole-v1", run_dir=tmp_path / name, teacher=teacher, labels=16, steps=3_000, seed=0,
            progress_bar=False, eval_episodes=2, reward_model=RewardModelConfig(epochs=5),
        )

    first = train(config("original", "oracle"))
    export_dataset(sqlite_url(tmp_path / "original" / "prefs.sqlite"), "original", tmp_path / "dataset")
    # the labels travel as a dataset into a run folder elsewhere; the replay trains on that run
    import_dataset(tmp_path / "dataset", sqlite_url((tmp_path / "imported").mkdir() or tmp_path / "imported" / "prefs.sqlite"), "imported")
    replay_config = config("replay", f"recorded:{tmp_path / 'imported'}")
    teacher = make_recorded_teacher(tmp_path / "dataset")
    assert teacher.caveats == []
    assert teacher.config_differences(replay_config.resolve().to_json()) == []
    assert teacher.config_differences(dataclasses.replace(replay_config, seed=1).resolve().to_json()) == [
        "seed: recorded 0, now 1"
    ]
    second = train(replay_config)

    original = _labels_by_content(tmp_path / "original", "original")
    replay = _labels_by_content(tmp_path / "replay", "replay")
    assert len(original) == 16 and replay == original
    assert second.eval_returns == first.eval_returns
    with open_store(sqlite_url(tmp_path / "replay" / "prefs.sqlite"), "replay") as store:
        assert {label.rater_id for label in store.labels()} == {"recorded"}


def _rater_thread(url: str, run_name: str, stop: threading.Event) -> None:
    """A "person" answering through the store as the rater app does (an oracle's judgement)."""
    oracle = make_teacher("oracle")
    with PreferenceStore(url, run_name=run_name) as store:
        while not stop.is_set():
            pair = store.claim_next("alice")
            if pair is None:
                stop.wait(0.02)
                continue
            store.answer(pair.id, "alice", oracle.compare(pair.left, pair.right), 2.0)


@pytest.mark.slow
def test_a_human_run_that_waited_for_its_raters_replays_exactly(tmp_path: Path) -> None:
    torch.set_num_threads(1)

    def config(name: str, teacher: str) -> TrainConfig:
        return TrainConfig(
            env_id="CartPole-v1", run_dir=tmp_path / name, teacher=teacher, labels=12, steps=2_500, seed=0,
            progress_bar=False, eval_episodes=2, when_behind="wait", gold_fraction=0.0,
            reward_model=RewardModelConfig(epochs=5),
        )

    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start_rater(run_dir, url: str, run_name: str) -> None:
        threads.append(threading.Thread(target=_rater_thread, args=(url, run_name, stop), daemon=True))
        threads[0].start()

    try:
        human = train(config("human", "human"), on_ready=start_rater)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    export_dataset(sqlite_url(tmp_path / "human" / "prefs.sqlite"), "human", tmp_path / "dataset")
    assert make_recorded_teacher(tmp_path / "dataset").caveats == []
    replay = train(config("replay", f"recorded:{tmp_path / 'dataset'}"))

    recorded = _labels_by_content(tmp_path / "human", "human")
    assert len(recorded) == 12 and _labels_by_content(tmp_path / "replay", "replay") == recorded
    assert replay.eval_returns == human.eval_returns


def test_replay_caveats_name_what_makes_a_human_run_unrepeatable() -> None:
    assert replay_caveats({"teacher": "oracle"}) == []
    assert replay_caveats({"teacher": "human", "when_behind": "wait", "gold_fraction": 0.0, "raters_per_pair": 1}) == []
    caveats = replay_caveats({"teacher": "human", "when_behind": "continue", "gold_fraction": 0.05, "raters_per_pair": 3})
    assert len(caveats) == 3
    assert "when_behind='continue'" in caveats[0] and "gold pairs" in caveats[1] and "3 raters" in caveats[2]
