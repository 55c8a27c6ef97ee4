"""Open data: a run's preferences as Parquet tables and its episodes as a Minari dataset.

The source is a real store with real CartPole segments, two raters, a retracted label, a
cant_tell, a gold pair and a pair nobody answered. The Parquet export must be read by pandas and
by Hugging Face ``datasets`` as a user would read it, and come back through ``prefloop import``
with the same pairs and labels; a damaged Parquet file meets the checks a JSON Lines file meets.
The Minari export must load with ``minari.load_dataset`` and hold every recorded step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_dataset import META, answer, cartpole_segments, fresh  # noqa: F401 -- cartpole_segments: the fixture
from test_hostile_datasets import dump_store
from test_hostile_input import cli

from prefloop.cli.main import main
from prefloop.datasets import DatasetError, export_dataset, import_dataset, load_dataset
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.types import Choice, Segment, SegmentPair

CONFIG = json.dumps({"env_id": "CartPole-v1", "seed": 0, "labels": 4, "query": {"method": "disagreement"}})


@dataclasses.dataclass
class Source:
    url: str
    run_name: str
    segments: list[Segment]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, cartpole_segments: list[Segment]) -> Source:  # noqa: F811
    url = sqlite_url(tmp_path_factory.mktemp("source") / "source.sqlite")
    segs = [fresh(s) for s in cartpole_segments[:9]]
    with PreferenceStore(url, run_name="human-run") as store:
        for key, value in {**META, "config": CONFIG}.items():
            store.set_meta(key, value)
        p1, p2, p3 = store.add_pairs(
            [SegmentPair(segs[0], segs[1], score=0.75), SegmentPair(segs[2], segs[3], score=0.5),
             SegmentPair(segs[1], segs[4], score=0.125)],
            labels_per_pair=2,
        )
        (gold,) = store.add_pairs([SegmentPair(segs[5], segs[6])], gold_choice=Choice.RIGHT)
        store.add_pairs([SegmentPair(segs[7], segs[8])])  # never answered: a pair without a label row
        answer(store, "alice", p1, Choice.LEFT, 1.25)
        answer(store, "alice", p2, Choice.RIGHT, 2.5)
        assert store.undo_last("alice").pair_id == p2
        store.answer(p2, "alice", Choice.EQUAL, 3.0)
        answer(store, "bob", p1, Choice.LEFT, 0.5)
        answer(store, "bob", p2, Choice.CANT_TELL, 4.0)
        answer(store, "alice", p3, Choice.RIGHT, 1.0)
        answer(store, "bob", gold, Choice.RIGHT, 0.75)
    return Source(url, "human-run", segs)


@pytest.fixture(scope="module")
def parquet_dataset(source: Source, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("parquet") / "dataset"
    summary = export_dataset(source.url, source.run_name, out, layout="parquet")
    assert (summary.segments, summary.pairs, summary.labels, summary.retracted_labels) == (9, 5, 7, 1)
    return out


def lines(folder: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def reshaped(table: Any, column: str, row: int) -> np.ndarray:
    """A segments.parquet array cell as the array it was, by the schema metadata."""
    spec = json.loads(pq.read_schema(table).metadata[b"prefloop.arrays"])[column]
    values = pq.read_table(table, columns=[column]).column(column)[row].values.to_numpy(zero_copy_only=False)
    return values.reshape(spec["shape"]).astype(spec["dtype"])


# -- Parquet ---------------------------------------------------------------------------------------


def test_parquet_round_trip_gives_the_same_pairs_and_labels(source: Source, parquet_dataset: Path, tmp_path: Path) -> None:
    """export parquet -> import -> export jsonl says what export jsonl of the source says."""
    assert sorted(p.name for p in parquet_dataset.iterdir()) == [
        "checks.parquet", "labels.parquet", "manifest.json", "pairs.parquet", "segments.parquet"]
    target = sqlite_url(tmp_path / "target.sqlite")
    imported = import_dataset(parquet_dataset, target, "copy")
    export_dataset(source.url, source.run_name, tmp_path / "original")
    export_dataset(target, "copy", tmp_path / "again")
    seg, pair, label = imported.segment_ids, imported.pair_ids, imported.label_ids

    def renumbered(line: dict[str, Any], kind: str) -> dict[str, Any]:
        out = dict(line)
        out["id"] = {"segments": seg, "pairs": pair, "labels": label}[kind][line["id"]]
        for key in ("left_segment_id", "right_segment_id"):
            if key in out:
                out[key] = seg[out[key]]
        if "pair_id" in out:
            out["pair_id"] = pair[out["pair_id"]]
        out.pop("run_name", None)
        return out

    for name, kind in (("pairs.jsonl", "pairs"), ("labels.jsonl", "labels"), ("segments.jsonl", "segments")):
        again = [{k: v for k, v in line.items() if k != "run_name"} for line in lines(tmp_path / "again", name)]
        assert again == [renumbered(line, kind) for line in lines(tmp_path / "original", name)], name
    original = np.load(tmp_path / "original" / "segments.npz")
    copy = np.load(tmp_path / "again" / "segments.npz")
    for name in original.files:
        if name != "segment_id":
            assert original[name].dtype == copy[name].dtype and np.array_equal(original[name], copy[name]), name


def test_parquet_tables_read_with_pandas(source: Source, parquet_dataset: Path) -> None:
    import pandas as pd

    labels = pd.read_parquet(parquet_dataset / "labels.parquet")
    pairs = pd.read_parquet(parquet_dataset / "pairs.parquet")
    segments = pd.read_parquet(parquet_dataset / "segments.parquet")
    assert len(labels) == 7 and len(pairs) == 5 and len(segments) == 9
    assert labels["retracted"].sum() == 1 and labels["retracted_at"].notna().sum() == 1
    assert set(labels["rater_id"]) == {"alice", "bob"}
    assert sorted(labels["choice"].unique()) == ["cant_tell", "equal", "left", "right"]
    assert set(pairs["query_method"]) == {"gold", "disagreement"}
    # the spans beside each label are its segments'
    merged = labels.merge(segments, left_on="left_segment_id", right_on="segment_id")
    assert (merged["left_episode_seed"] == merged["episode_seed"]).all()
    assert (merged["left_start_step"] == merged["start_step"]).all()
    assert (merged["left_n_valid"] == merged["n_valid"]).all()
    by_seed = {(s.episode_seed, s.start_step): s for s in source.segments}
    for row in range(len(segments)):
        recorded = by_seed[(int(segments["episode_seed"][row]), int(segments["start_step"][row]))]
        obs = reshaped(parquet_dataset / "segments.parquet", "obs", row)
        assert obs.dtype == recorded.obs.dtype and np.array_equal(obs, recorded.obs)
        assert np.array_equal(np.asarray(segments["obs"][row]).reshape(recorded.obs.shape), recorded.obs)


def test_parquet_tables_read_with_hugging_face_datasets(
    parquet_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    loaded = {  # one table each: a split of one load_dataset call shares one schema
        name: datasets.load_dataset(
            "parquet", data_files=str(parquet_dataset / f"{name}.parquet"), split="train", cache_dir=str(tmp_path / "cache")
        )
        for name in ("labels", "pairs", "segments")
    }
    assert loaded["labels"].num_rows == 7 and loaded["pairs"].num_rows == 5 and loaded["segments"].num_rows == 9
    first = loaded["labels"][0]
    assert first["rater_id"] == "alice" and first["choice"] == "left" and first["response_time_s"] == 1.25
    assert {"left_segment_id", "right_episode_seed", "query_method", "retracted"} <= set(first)
    segments = loaded["segments"].with_format("numpy")
    dataset = load_dataset(parquet_dataset)
    recorded = dataset.segment_by_id()[int(segments[0]["segment_id"])]
    assert np.array_equal(np.asarray(segments[0]["obs"], dtype=np.float32).reshape(recorded.obs.shape), recorded.obs)


def test_uint8_observations_keep_their_dtype_through_parquet(tmp_path: Path) -> None:
    """Pixel segments (uint8 frames) come back as uint8, not float32."""
    rng = np.random.default_rng(0)

    def pixel_segment(seed: int) -> Segment:
        actions = rng.integers(0, 3, size=6).astype(np.int64)
        return Segment(
            obs=rng.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8), actions=actions,
            true_rewards=rng.normal(size=6).astype(np.float32), n_valid=6, terminated=False,
            episode_seed=seed, start_step=0, episode_actions=actions, env_step=0,
        )

    url = sqlite_url(tmp_path / "pixels.sqlite")
    with PreferenceStore(url, "pixels") as store:
        (pair_id,) = store.add_pairs([SegmentPair(pixel_segment(1), pixel_segment(2))])
        answer(store, "ada", pair_id, Choice.LEFT, 1.0)
    export_dataset(url, "pixels", tmp_path / "out", layout="parquet")
    spec = json.loads(pq.read_schema(tmp_path / "out" / "segments.parquet").metadata[b"prefloop.arrays"])
    assert spec["obs"] == {"shape": [6, 8, 8, 3], "dtype": "uint8"}
    assert pq.read_schema(tmp_path / "out" / "segments.parquet").field("obs").type.value_type == pa.uint8()
    imported = import_dataset(tmp_path / "out", sqlite_url(tmp_path / "copy.sqlite"), "copy")
    assert imported.segments == 2
    for segment in load_dataset(tmp_path / "out").segments:
        assert segment.obs.dtype == np.uint8 and segment.obs.shape == (6, 8, 8, 3)


def test_the_cli_exports_parquet_and_imports_it(source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pq"
    assert main(["export", "--db-url", source.url, "--run-name", source.run_name, "--format", "parquet", "--out", str(out)]) == 0
    assert "9 segments, 5 pairs, 7 labels (1 retracted)" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["layout"] == "parquet"
    assert main(["import", "--in", str(out), "--run-dir", str(tmp_path / "run")]) == 0
    assert "9 segments, 5 pairs, 7 labels (1 retracted)" in capsys.readouterr().out
    err = cli(capsys, "export", "--db-url", source.url, "--run-name", source.run_name, "--format", "parquet")
    assert "needs --out FOLDER" in err


# -- hostile Parquet files ---------------------------------------------------------------------------


def reseal(d: Path, name: str) -> None:
    """Write a file's new sha256 into the manifest, as someone editing a dataset on purpose
    would, so the checks behind the checksum are what a damaged file meets."""
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["checksums"][name] = hashlib.sha256((d / name).read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(manifest))


def rewrite(name: str, change: Callable[[pa.Table], pa.Table], *, resealed: bool = True) -> Callable[[Path], None]:
    """Rewrite one table of a dataset (keeping its schema metadata) with ``change`` applied."""
    def damage(d: Path) -> None:
        pq.write_table(change(pq.read_table(d / name)), d / name)
        if resealed:
            reseal(d, name)
    return damage


def not_parquet(d: Path) -> None:
    (d / "pairs.parquet").write_bytes(b"PAR1 this is not a Parquet file PAR1")
    reseal(d, "pairs.parquet")


def set_column(name: str, values: list[Any], type: pa.DataType | None = None) -> Callable[[pa.Table], pa.Table]:
    def change(table: pa.Table) -> pa.Table:
        i = table.column_names.index(name)
        column = pa.array(values, type=type) if type is not None else pa.array(values)
        return table.set_column(i, pa.field(name, column.type), column).replace_schema_metadata(table.schema.metadata)
    return change


def edit_cell(name: str, row: int, value: Any, type: pa.DataType | None = None) -> Callable[[pa.Table], pa.Table]:
    def change(table: pa.Table) -> pa.Table:
        values = table.column(name).to_pylist()
        values[row] = value
        return set_column(name, values, type or table.schema.field(name).type)(table)
    return change


def nan_in_obs(table: pa.Table) -> pa.Table:
    rows = table.column("obs").to_pylist()
    rows[1][3] = float("nan")
    return set_column("obs", rows, table.schema.field("obs").type)(table)


def obs_as_float64(table: pa.Table) -> pa.Table:
    return set_column("obs", table.column("obs").to_pylist(), pa.list_(pa.float64()))(table)


def flip_a_byte(d: Path) -> None:
    data = bytearray((d / "labels.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "labels.parquet").write_bytes(bytes(data))


HOSTILE_PARQUET = [
    ("bad-checksum", flip_a_byte, "labels.parquet: its sha256 differs from manifest.json checksums.labels.parquet"),
    ("changed-and-not-resealed", rewrite("labels.parquet", edit_cell("choice", 0, "right"), resealed=False),
     "labels.parquet: its sha256 differs"),
    ("nan-in-obs", rewrite("segments.parquet", nan_in_obs), "segments.parquet: column 'obs' holds NaN or infinite values"),
    ("obs-wrong-dtype", rewrite("segments.parquet", obs_as_float64),
     "segments.parquet: column 'obs' holds float64 values but the schema metadata declares float32"),
    ("obs-as-text", rewrite("segments.parquet", lambda t: set_column("obs", [["x"]] * t.num_rows)(t)),
     "segments.parquet: column 'obs' holds string values but the schema metadata declares float32"),
    ("seed-as-float", rewrite("segments.parquet", lambda t: set_column("episode_seed", [1.5] * t.num_rows)(t)),
     "segments.parquet: column 'episode_seed' has dtype float64, expected an integer dtype"),
    ("obs-wrong-length", rewrite("segments.parquet", lambda t: set_column("obs", [[0.0] * 3] * t.num_rows, pa.list_(pa.float32()))(t)),
     "segments.parquet: column 'obs' has 3 values in row 0"),
    ("no-array-metadata", rewrite("segments.parquet", lambda t: t.replace_schema_metadata(None)),
     "schema metadata 'prefloop.arrays' is missing"),
    ("choice-as-number", rewrite("labels.parquet", lambda t: set_column("choice", [3] * t.num_rows)(t)),
     "labels.parquet row 0: field 'choice' is 3; it must be one of"),
    ("nan-response-time", rewrite("labels.parquet", edit_cell("response_time_s", 2, float("nan"))),
     "labels.parquet row 2: field 'response_time_s' must be a finite number"),
    ("negative-response-time", rewrite("labels.parquet", edit_cell("response_time_s", 0, -1.0)),
     "labels.parquet row 0: field 'response_time_s' must be >= 0"),
    ("year-30000", rewrite("labels.parquet", edit_cell("created_at", 0, 9e11)),
     "labels.parquet row 0: field 'created_at' must be unix seconds from 1970 to the year 9999"),
    ("null-rater", rewrite("labels.parquet", edit_cell("rater_id", 1, None)), "labels.parquet row 1: field 'rater_id'"),
    ("unknown-pair", rewrite("labels.parquet", edit_cell("pair_id", 0, 12345)),
     "labels.parquet row 0: field 'pair_id' is 12345, which is not a pair of pairs.parquet"),
    ("span-disagrees", rewrite("labels.parquet", edit_cell("left_start_step", 0, 99_999)),
     "labels.parquet row 0: field 'left_start_step' is 99999 but segments.parquet says"),
    ("missing-column", rewrite("pairs.parquet", lambda t: t.drop_columns(["labels_per_pair"])),
     "pairs.parquet: column 'labels_per_pair' is missing"),
    ("too-many-labels", rewrite("pairs.parquet", lambda t: set_column("labels_per_pair", [1] * t.num_rows)(t)),
     "labels.parquet row 3: field 'pair_id' pair"),
    ("not-parquet", not_parquet, "pairs.parquet is not a readable Parquet file"),
]


@pytest.mark.parametrize("case", HOSTILE_PARQUET, ids=[c[0] for c in HOSTILE_PARQUET])
def test_a_hostile_parquet_dataset_is_refused_in_one_line_and_changes_nothing(
    case: tuple, parquet_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, damage, expected = case
    dataset = tmp_path / "dataset"
    shutil.copytree(parquet_dataset, dataset)
    damage(dataset)
    target = sqlite_url(tmp_path / "target.sqlite")
    with PreferenceStore(target, "precious") as store:
        store.set_meta("guideline", "keep me")
    before = dump_store(target)
    err = cli(capsys, "import", "--in", str(dataset), "--db-url", target, "--run-name", "hostile")
    assert expected in err, err
    assert "export it again with `prefloop export`" in err  # the fix
    assert dump_store(target) == before


def test_a_parquet_dataset_over_the_size_limit_is_refused_before_reading(parquet_dataset: Path) -> None:
    with pytest.raises(DatasetError, match=r"(more than the limit|--max-gib)"):
        load_dataset(parquet_dataset, max_bytes=20_000)


# -- a missing optional dependency -----------------------------------------------------------------


@pytest.mark.parametrize("module", ["pyarrow", "minari"])
def test_a_missing_optional_dependency_names_the_extra(
    module: str, source: Source, parquet_dataset: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [module, *(n for n in sys.modules if n.startswith(module + "."))]:
        monkeypatch.setitem(sys.modules, name, None)  # what `import` finds when it is not installed
    for name in ("prefloop.datasets.parquet", "prefloop.datasets.episodes"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    fmt = "parquet" if module == "pyarrow" else "minari"
    out = ["--out", str(tmp_path / "out")] if fmt == "parquet" else []
    err = cli(capsys, "export", "--db-url", source.url, "--run-name", source.run_name, "--format", fmt, *out)
    assert f"needs the Python package '{module}', which is not installed" in err
    assert "pip install 'prefloop[data]'" in err
    if module == "pyarrow":
        err = cli(capsys, "import", "--in", str(parquet_dataset), "--run-dir", str(tmp_path / "run"))
        assert "pip install 'prefloop[data]'" in err and not (tmp_path / "run").exists()


# -- Minari ------------------------------------------------------------------------------------------


def episodes_by_seed(dataset: Any) -> dict[int, Any]:
    """A Minari dataset's episodes by the seed each was reset with (stored in its metadata)."""
    ids = list(range(dataset.total_episodes))
    seeds = [int(meta["seed"]) for meta in dataset.storage.get_episode_metadata(ids)]
    return dict(zip(seeds, dataset.iterate_episodes(ids)))


def test_minari_round_trip_holds_every_recorded_step(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    import minari

    assert main(["export", "--db-url", source.url, "--run-name", source.run_name, "--format", "minari",
                 "--dataset-id", "prefloop/cartpole-human-v0"]) == 0
    assert "Minari dataset 'prefloop/cartpole-human-v0'" in capsys.readouterr().out
    dataset = minari.load_dataset("prefloop/cartpole-human-v0")
    episodes = {int(e.id): e for e in dataset.iterate_episodes()}
    spans: dict[int, int] = {}
    for segment in source.segments:
        spans[segment.episode_seed] = max(spans.get(segment.episode_seed, 0), len(segment.episode_actions))
    assert dataset.total_episodes == len(spans) and dataset.total_steps == sum(spans.values())
    by_seed = episodes_by_seed(dataset)
    assert sorted(by_seed) == sorted(spans)
    for segment in source.segments:
        episode = by_seed[segment.episode_seed]
        steps = slice(segment.start_step, segment.start_step + segment.n_valid)
        assert np.allclose(episode.observations[steps], segment.obs[: segment.n_valid], atol=1e-6)
        assert np.array_equal(episode.actions[steps], segment.actions[: segment.n_valid])
        assert np.allclose(episode.rewards[steps], segment.true_rewards[: segment.n_valid])
        assert len(episode.observations) == len(episode.actions) + 1
        if segment.terminated and len(segment.episode_actions) == spans[segment.episode_seed]:
            assert episode.terminations[-1]
    assert all(e.terminations[-1] or e.truncations[-1] for e in episodes.values())
    assert dataset.recover_environment().spec.id == "CartPole-v1"
    # an id that is taken is refused, never overwritten
    err = cli(capsys, "export", "--db-url", source.url, "--run-name", source.run_name, "--format", "minari",
              "--dataset-id", "prefloop/cartpole-human-v0")
    assert "already exists" in err


def test_minari_export_refuses_an_env_that_does_not_replay(source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recording the env does not reproduce (here: one observation changed in the store's
    copy) is refused by name rather than exported as episodes that never happened."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    from prefloop.datasets.episodes import export_minari

    url = sqlite_url(tmp_path / "edited.sqlite")
    segment = dataclasses.replace(source.segments[0], obs=source.segments[0].obs + 0.5, id=None)
    with PreferenceStore(url, "edited") as store:
        store.set_meta("env_spec", META["env_spec"])
        store.add_segments([segment])
    with pytest.raises(DatasetError, match="not deterministic given its seed and actions"):
        export_minari(url, "edited")
    assert not (tmp_path / "minari" / "prefloop" / "edited-v0").exists()


def test_pixel_episodes_go_to_minari_and_parquet_as_uint8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stacked uint8 frames of pixel CartPole: kept as uint8, losslessly, in both exports."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    import minari
    from prefloop.envs import PIXEL_CARTPOLE_ID
    from test_pixels import pixel_segments

    from prefloop.datasets.episodes import export_minari

    segments = pixel_segments(steps=120, length=10)[:4]
    url = sqlite_url(tmp_path / "pixels.sqlite")
    with PreferenceStore(url, "pixels") as store:
        store.set_meta("env_spec", json.dumps({"env_id": PIXEL_CARTPOLE_ID, "env_kwargs": {}}))
        store.add_pairs([SegmentPair(segments[0], segments[1]), SegmentPair(segments[2], segments[3])])
    summary = export_minari(url, "pixels", "prefloop/pixels-v0")
    dataset = minari.load_dataset("prefloop/pixels-v0")
    assert summary.episodes == dataset.total_episodes >= 1
    for episode in dataset.iterate_episodes():
        assert episode.observations.dtype == np.uint8 and episode.observations.shape[1:] == segments[0].obs.shape[1:]
    by_seed = episodes_by_seed(dataset)
    for segment in segments:
        steps = slice(segment.start_step, segment.start_step + segment.n_valid)
        assert np.array_equal(by_seed[segment.episode_seed].observations[steps], segment.obs[: segment.n_valid])
    loaded = load_dataset(export_dataset(url, "pixels", tmp_path / "pq", layout="parquet").path)
    assert all(s.obs.dtype == np.uint8 for s in loaded.segments)


def test_a_zipped_parquet_export_imports(parquet_dataset: Path, tmp_path: Path) -> None:
    """The dashboard-style zip of a folder works for the Parquet layout as for JSON Lines."""
    import zipfile

    archive = tmp_path / "dataset.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(parquet_dataset.iterdir()):
            zipped.write(path, f"my-run/{path.name}")
    summary = import_dataset(archive, sqlite_url(tmp_path / "target.sqlite"), "from-zip")
    assert (summary.segments, summary.pairs, summary.labels) == (9, 5, 7)


@pytest.mark.parametrize("structure", ["dict", "tuple"])
def test_dict_and_tuple_observations_go_to_minari_as_their_structure(
    structure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A goal env's Dict (or Tuple) observations: recorded flat, replayed and stored by Minari in
    their own structure, each leaf the recorded values."""
    import goal_env
    import gymnasium as gym
    import minari
    from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder

    from prefloop.datasets.episodes import export_minari
    from prefloop.training.loop import build_vec_env, collect_random

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    goal_env.register()
    env_id = goal_env.ENV_ID if structure == "dict" else goal_env.TUPLE_ENV_ID
    buffer = SegmentBuffer(100)
    recorder = VecSegmentRecorder(build_vec_env(EnvSpec(env_id), 2, seed=1), buffer, 10, seed=1)
    collect_random(recorder, 120, seed=1)
    segments = buffer.recent()[:4]
    url = sqlite_url(tmp_path / "goal.sqlite")
    with PreferenceStore(url, "goal") as store:
        store.set_meta("env_spec", json.dumps(EnvSpec(env_id).to_json()))
        store.add_pairs([SegmentPair(segments[0], segments[1]), SegmentPair(segments[2], segments[3])])
    export_minari(url, "goal", f"prefloop/goal-{structure}-v0")
    dataset = minari.load_dataset(f"prefloop/goal-{structure}-v0")
    space = dataset.observation_space
    assert isinstance(space, gym.spaces.Dict if structure == "dict" else gym.spaces.Tuple)
    by_seed = episodes_by_seed(dataset)
    for segment in segments:
        episode = by_seed[segment.episode_seed]
        for t in range(segment.n_valid):
            if structure == "dict":
                step = {key: value[segment.start_step + t] for key, value in episode.observations.items()}
            else:
                step = tuple_step(episode.observations, segment.start_step + t)
            assert np.allclose(gym.spaces.flatten(space, step), segment.obs[t], atol=1e-6)


def tuple_step(observations: Any, t: int) -> Any:
    """Step ``t`` of a Tuple space's stacked observations (nested tuples of arrays)."""
    if isinstance(observations, tuple):
        return tuple(tuple_step(leaf, t) for leaf in observations)
    return observations[t]


def test_the_pandas_and_hugging_face_examples_of_the_docs_run_on_any_segment_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/open-data.md's Python blocks, run as a user copies them, on segments of 6 steps of 3 floats
    (not the 25 x 4 of the other tests here): shapes come from the schema metadata, never from the page."""
    import re

    rng = np.random.default_rng(1)

    def segment(seed: int) -> Segment:
        actions = rng.integers(0, 2, size=6).astype(np.int64)
        return Segment(
            obs=rng.normal(size=(6, 3)).astype(np.float32), actions=actions, true_rewards=np.ones(6, np.float32),
            n_valid=6, terminated=False, episode_seed=seed, start_step=0, episode_actions=actions, env_step=0,
        )

    url = sqlite_url(tmp_path / "run.sqlite")
    with PreferenceStore(url, "run") as store:
        (pair_id,) = store.add_pairs([SegmentPair(segment(1), segment(2))])
        answer(store, "alice", pair_id, Choice.LEFT, 1.0)
    export_dataset(url, "run", tmp_path / "datasets" / "my-run-pq", layout="parquet")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    page = (Path(__file__).resolve().parents[1] / "docs" / "open-data.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "parquet" in b]
    assert len(blocks) == 2  # pandas, Hugging Face datasets
    pandas_example: dict[str, Any] = {}
    exec(compile(blocks[0], "open-data.md (pandas)", "exec"), pandas_example)
    assert pandas_example["obs"].shape == (2, 6, 3) and len(pandas_example["live"]) == 1
    hf_example: dict[str, Any] = {}
    exec(compile(blocks[1], "open-data.md (Hugging Face datasets)", "exec"), hf_example)
    assert hf_example["obs0"].shape == (6, 3)
