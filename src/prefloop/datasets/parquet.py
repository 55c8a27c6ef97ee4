"""The Parquet layout: a run's segments, pairs, labels and rater checks as tables other tools read.

    dataset/
      manifest.json     as in the JSON Lines layout, with "layout": "parquet"
      segments.parquet  one row per segment: its span and provenance, and its arrays as list
                        columns (flattened in C order; shapes and dtypes in the schema metadata)
      pairs.parquet     one row per pair shown to raters
      labels.parquet    one row per label, with its pair's segments and their spans beside it
      checks.parquet    one row per rater check (not a label), with whether it agrees and its
                        pair's segments beside it; absent from exports made before checks existed

pandas (``pd.read_parquet``), Hugging Face ``datasets.load_dataset("parquet", ...)``, DuckDB,
Polars and Spark read the tables as they are. Timestamps are unix seconds (float64), as in the
JSON Lines files. Column names are the JSON Lines field names, so the two layouts describe the
same records (:data:`prefloop.datasets.format.PARQUET_FILE_DESCRIPTIONS`).

Loading a Parquet dataset turns its tables into the same arrays and records the JSON Lines
layout gives and sends them through the same checks (:mod:`prefloop.datasets.records`); what
is particular to Parquet is checked here: sizes before reading (the row count and the
uncompressed size each row group declares), that a file is Parquet at all, column types, nulls,
and that the array columns match the shapes and dtypes their metadata declares.

Needs pyarrow: ``pip install 'prefloop[data]'``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from prefloop.datasets.export import RunSnapshot
from prefloop.datasets.format import (
    ARRAYS_METADATA_KEY,
    CHECKS_PARQUET,
    LABELS_PARQUET,
    PAIRS_PARQUET,
    SEGMENTS_PARQUET,
    DatasetError,
    DatasetPair,
    missing_extra_error,
)
from prefloop.datasets.load import (
    DatasetFiles,
    has_checks,
    sha256_handle,
    verify_checksum,
)
from prefloop.datasets.records import REEXPORT, Fields, check_record_budget
from prefloop.types import Label, Segment
from prefloop.untrusted import TooLargeError, excerpt, open_regular_file, parse_json

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:
    raise missing_extra_error("the Parquet layout", "pyarrow") from None

ARRAY_COLUMNS = ("obs", "actions", "true_rewards", "episode_actions")
# Per-segment scalars, as in segments.npz (segment_id) and segments.jsonl (the rest).
SEGMENT_COLUMNS = {
    "segment_id": pa.int64(), "env_id": pa.string(), "episode_seed": pa.int64(),
    "start_step": pa.int64(), "n_valid": pa.int64(), "terminated": pa.bool_(),
    "env_step": pa.int64(), "run_name": pa.string(), "created_at": pa.float64(),
}
PAIR_COLUMNS = {
    "id": pa.int64(), "left_segment_id": pa.int64(), "right_segment_id": pa.int64(),
    "labels_per_pair": pa.int64(), "gold_choice": pa.string(), "score": pa.float64(),
    "created_at": pa.float64(), "status": pa.string(), "query_method": pa.string(),
}
SPAN_FIELDS = ("episode_seed", "start_step", "n_valid")
LABEL_COLUMNS = {
    "id": pa.int64(), "pair_id": pa.int64(), "rater_id": pa.string(), "choice": pa.string(),
    "response_time_s": pa.float64(), "created_at": pa.float64(), "retracted_at": pa.float64(),
    "retracted": pa.bool_(), "left_segment_id": pa.int64(), "right_segment_id": pa.int64(),
    **{f"{side}_{name}": pa.int64() for side in ("left", "right") for name in SPAN_FIELDS},
    "query_method": pa.string(),
}
CHECK_COLUMNS = {
    "id": pa.int64(), "pair_id": pa.int64(), "rater_id": pa.string(), "kind": pa.string(),
    "swapped": pa.bool_(), "expected": pa.string(), "choice": pa.string(), "response_time_s": pa.float64(),
    "served_at": pa.float64(), "answered_at": pa.float64(), "agrees": pa.bool_(),
    "left_segment_id": pa.int64(), "right_segment_id": pa.int64(),
}
# The dtypes an array column may declare (what numpy and Parquet both hold without loss).
ARRAY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64")
MAX_ARRAY_DIMS = 8
GOLD_METHOD = "gold"


# --------------------------------------------------------------------------------------------
# Write


def write_parquet_files(folder: Path, run: RunSnapshot) -> None:
    """Write ``segments.parquet``, ``pairs.parquet``, ``labels.parquet`` and ``checks.parquet``
    of ``run`` into ``folder``."""
    method = _query_method(run.config)
    pair_rows = [
        {**line, "query_method": GOLD_METHOD if line["gold_choice"] is not None else method}
        for line in run.pair_lines
    ]
    spans = {line["id"]: line for line in run.segment_lines}
    pairs = {row["id"]: row for row in pair_rows}
    label_rows = []
    for line in run.label_lines:
        pair = pairs[line["pair_id"]]
        row = {**line, "retracted": line["retracted_at"] is not None}
        for side in ("left", "right"):
            segment_id = pair[f"{side}_segment_id"]
            row[f"{side}_segment_id"] = segment_id
            row.update({f"{side}_{name}": spans[segment_id][name] for name in SPAN_FIELDS})
        row["query_method"] = pair["query_method"]
        label_rows.append(row)

    segment_rows = [{**{k: v for k, v in line.items() if k != "id"}, "segment_id": line["id"]} for line in run.segment_lines]
    segments = pa.Table.from_pylist(segment_rows, schema=pa.schema(SEGMENT_COLUMNS))
    shapes: dict[str, Any] = {}
    for name in ARRAY_COLUMNS:
        column, shapes[name] = _list_column(name, run.arrays)
        segments = segments.append_column(name, column)
    segments = segments.replace_schema_metadata({ARRAYS_METADATA_KEY: json.dumps(shapes)})
    pq.write_table(segments, folder / SEGMENTS_PARQUET, compression="zstd")
    pq.write_table(pa.Table.from_pylist(pair_rows, schema=pa.schema(PAIR_COLUMNS)), folder / PAIRS_PARQUET, compression="zstd")
    pq.write_table(pa.Table.from_pylist(label_rows, schema=pa.schema(LABEL_COLUMNS)), folder / LABELS_PARQUET, compression="zstd")
    check_rows = [
        {
            **line,
            "agrees": None if line["choice"] is None else line["choice"] == line["expected"],
            "left_segment_id": pairs[line["pair_id"]]["left_segment_id"],
            "right_segment_id": pairs[line["pair_id"]]["right_segment_id"],
        }
        for line in run.check_lines
    ]
    pq.write_table(pa.Table.from_pylist(check_rows, schema=pa.schema(CHECK_COLUMNS)), folder / CHECKS_PARQUET, compression="zstd")


def _query_method(config: Any) -> str | None:
    """The run's configured query method (``config["query"]["method"]``), if it names one."""
    query = config.get("query") if isinstance(config, dict) else None
    method = query.get("method") if isinstance(query, dict) else None
    return method if isinstance(method, str) else None


def _list_column(name: str, arrays: dict[str, np.ndarray]) -> tuple[pa.Array, dict[str, Any]]:
    """One array of segments.npz as a list column (row i: segment i's array, flattened in C
    order) and its metadata: the shape of one row (``-1`` first for the episode's actions,
    whose length differs by segment) and the dtype."""
    array = arrays[name]
    if name == "episode_actions":
        tail = array.shape[1:]
        offsets = arrays["episode_actions_offsets"] * int(np.prod(tail, dtype=np.int64))
        shape = [-1, *tail]
    else:
        offsets = np.arange(array.shape[0] + 1, dtype=np.int64) * int(np.prod(array.shape[1:], dtype=np.int64))
        shape = list(array.shape[1:])
    values = pa.array(np.ascontiguousarray(array).reshape(-1))
    if offsets[-1] < 2**31:  # the plain list type every reader knows
        column = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
    else:
        column = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)
    return column, {"shape": [int(n) for n in shape], "dtype": array.dtype.name}


# --------------------------------------------------------------------------------------------
# Read (hostile input: see the module docstring)


def read_parquet_files(root: Path, manifest: dict[str, Any], verify_checksums: bool, max_bytes: int) -> DatasetFiles:
    """The tables of a Parquet dataset folder as arrays and records for the common checks (the
    checks table only when the export has one).

    Raises:
        DatasetError: a file is not Parquet, lacks a column, has a column of the wrong type or
            with nulls, or an array column that does not match its declared shape and dtype.
        prefloop.untrusted.TooLargeError: a file, its rows or its uncompressed data exceed the budget.
    """
    budget = max_bytes
    tables: dict[str, pa.Table] = {}
    with_checks = has_checks(root, manifest)
    for name in (SEGMENTS_PARQUET, PAIRS_PARQUET, LABELS_PARQUET, *([CHECKS_PARQUET] if with_checks else [])):
        with open_regular_file(root, name, budget) as handle:
            if verify_checksums:
                verify_checksum(name, sha256_handle(handle), manifest["checksums"][name])
            tables[name], size = _read_table(handle, name, budget)
        budget -= size
    segments = tables[SEGMENTS_PARQUET]
    arrays = _segment_arrays(segments)
    segment_records = [  # under segments.jsonl's field names
        (row, {("id" if key == "segment_id" else key): value for key, value in obj.items()})
        for row, obj in _records(segments, SEGMENT_COLUMNS, SEGMENTS_PARQUET, skip=("env_id", "run_name"))
    ]
    pair_records = _records(tables[PAIRS_PARQUET], PAIR_COLUMNS, PAIRS_PARQUET)
    label_records = _records(tables[LABELS_PARQUET], LABEL_COLUMNS, LABELS_PARQUET)
    check_records = _records(tables[CHECKS_PARQUET], CHECK_COLUMNS, CHECKS_PARQUET) if with_checks else None

    def check_context(segments: list[Segment], pairs: list[DatasetPair], labels: list[Label]) -> None:
        _check_pair_methods(pair_records)
        _check_label_context(label_records, segments, pairs)
        _check_check_context(check_records or [], pairs)

    return DatasetFiles(
        arrays=arrays,
        segment_records=segment_records,
        pair_records=pair_records,
        label_records=label_records,
        check_records=check_records,
        names={"arrays": SEGMENTS_PARQUET, "segments": SEGMENTS_PARQUET, "pairs": PAIRS_PARQUET, "labels": LABELS_PARQUET,
               "checks": CHECKS_PARQUET},
        unit="row",
        array_kind="column",
        check_context=check_context,
    )


def _read_table(handle: BinaryIO, name: str, max_bytes: int) -> tuple[pa.Table, int]:
    """The table of a Parquet file and the uncompressed bytes it declares, checked against the
    budget from the footer before any column is read."""
    try:
        file = pq.ParquetFile(handle)
        meta = file.metadata
        check_record_budget(name, meta.num_rows, "rows", max_bytes)
        declared = 0
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            chunks = sum(group.column(j).total_uncompressed_size for j in range(group.num_columns))
            declared += max(group.total_byte_size, chunks)
        if declared > max_bytes:
            raise TooLargeError(f"{name} unpacks to {declared:,} bytes, more than the limit of {max_bytes:,}")
        table = file.read()
    except (pa.ArrowException, OSError) as exc:
        reason = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise DatasetError(f"{name} is not a readable Parquet file ({excerpt(reason, 120)}); {REEXPORT}") from None
    if table.nbytes > max_bytes:  # the footer understated it
        raise TooLargeError(f"{name} holds {table.nbytes:,} bytes, more than the limit of {max_bytes:,}")
    return table, max(declared, table.nbytes)


def _column(table: pa.Table, name: str, file: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DatasetError(f"{file}: column {name!r} is missing; {REEXPORT}")
    return table.column(name)


def _records(
    table: pa.Table, columns: dict[str, pa.DataType], file: str, skip: tuple[str, ...] = ()
) -> list[tuple[int, dict[str, Any]]]:
    """``(row number from 0, {column: Python value})`` of each row; the values' types and ranges
    are checked by the common record checks."""
    names = [name for name in columns if name not in skip]
    for name in names:
        _column(table, name, file)
    try:
        rows = table.select(names).to_pylist()
    except (pa.ArrowException, ValueError, OverflowError) as exc:
        raise DatasetError(f"{file}: its values cannot be read ({excerpt(str(exc), 120)}); {REEXPORT}") from None
    return list(enumerate(rows))


def _segment_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """segments.npz's arrays from segments.parquet's columns (types checked by the common checks)."""
    arrays: dict[str, np.ndarray] = {}
    for name in ("segment_id", "n_valid", "terminated", "episode_seed", "start_step", "env_step"):
        column = _column(table, name, SEGMENTS_PARQUET)
        _refuse_nulls(column, name)
        arrays[name] = column.to_numpy()
    specs = _array_specs(table)
    for name in ARRAY_COLUMNS:
        arrays[name], lengths = _array_column(table, name, specs[name])
        if name == "episode_actions":
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum(lengths)
            arrays["episode_actions_offsets"] = offsets
    return arrays


def _refuse_nulls(column: pa.ChunkedArray | pa.Array, name: str) -> None:
    if column.null_count:
        raise DatasetError(
            f"{SEGMENTS_PARQUET}: column {name!r} holds {column.null_count} null value(s); every "
            f"segment has a value; {REEXPORT}"
        )


def _array_specs(table: pa.Table) -> dict[str, dict[str, Any]]:
    """The shapes and dtypes the schema metadata declares, checked."""
    key = ARRAYS_METADATA_KEY.encode()
    raw = (table.schema.metadata or {}).get(key)

    def bad(problem: str) -> DatasetError:
        return DatasetError(f"{SEGMENTS_PARQUET}: schema metadata {ARRAYS_METADATA_KEY!r} {problem}; {REEXPORT}")

    if raw is None:
        raise bad("is missing, so the array columns' shapes and dtypes are unknown")
    try:
        specs = parse_json(raw.decode("utf-8"), f"{SEGMENTS_PARQUET} metadata")
    except UnicodeDecodeError:
        raise bad("is not UTF-8 text") from None
    if not isinstance(specs, dict):
        raise bad("must be a JSON object")
    for name in ARRAY_COLUMNS:
        spec = specs.get(name)
        shape = spec.get("shape") if isinstance(spec, dict) else None
        dtype = spec.get("dtype") if isinstance(spec, dict) else None
        variable = name == "episode_actions"
        if (
            not isinstance(shape, list) or not 1 <= len(shape) <= MAX_ARRAY_DIMS
            or any(isinstance(n, bool) or not isinstance(n, int) for n in shape)
            or any(n < 0 for n in shape[1 if variable else 0:]) or (variable and shape[0] != -1)
        ):
            raise bad(f"gives {name!r} the shape {excerpt(shape)}; expected a list of 1 to {MAX_ARRAY_DIMS} sizes "
                      f">= 0{' starting with -1' if variable else ''}")
        if dtype not in ARRAY_DTYPES:
            raise bad(f"gives {name!r} the dtype {excerpt(dtype)}; expected one of {list(ARRAY_DTYPES)}")
    return specs


def _array_column(table: pa.Table, name: str, spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A list column as ``(N, *shape)`` (``episode_actions``: rows concatenated, ``(T, *tail)``)
    and the number of rows of ``shape`` each segment holds."""

    def bad(problem: str) -> DatasetError:
        return DatasetError(f"{SEGMENTS_PARQUET}: column {name!r} {problem}; {REEXPORT}")

    column = _column(table, name, SEGMENTS_PARQUET)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        raise bad(f"has type {column.type}; expected a list of numbers per segment")
    _refuse_nulls(column, name)
    lists = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    values_array = lists.flatten()
    if values_array.null_count:
        raise bad(f"holds {values_array.null_count} null value(s) inside its lists; a recorded segment holds numbers only")
    values = values_array.to_numpy(zero_copy_only=False)
    if values.dtype.name != spec["dtype"]:
        held = values_array.type if values.dtype.hasobject else values.dtype
        raise bad(f"holds {held} values but the schema metadata declares {spec['dtype']}")
    shape = spec["shape"]
    row = int(np.prod(shape[1:] if name == "episode_actions" else shape, dtype=np.int64))
    lengths = lists.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    if name == "episode_actions":
        if row == 0 or np.any(lengths % row):
            raise bad(f"has a row whose length is not a multiple of {row} (shape {shape})")
        return values.reshape(-1, *shape[1:]), lengths // row
    if np.any(lengths != row):
        first = int(np.flatnonzero(lengths != row)[0])
        raise bad(f"has {int(lengths[first])} values in row {first}; the schema metadata declares shape {shape} ({row} values)")
    return values.reshape(len(lengths), *shape), np.ones(len(lengths), dtype=np.int64)


def _check_pair_methods(records: list[tuple[int, dict[str, Any]]]) -> None:
    for number, obj in records:
        _optional_text(Fields(PAIRS_PARQUET, number, obj, "row"), "query_method")


def _optional_text(f: Fields, name: str) -> None:
    value = f.obj.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > 200):
        raise f.error(name, f"must be text of at most 200 characters or null, got {excerpt(value)}")


def _check_label_context(
    records: list[tuple[int, dict[str, Any]]], segments: list[Segment], pairs: list[DatasetPair]
) -> None:
    """labels.parquet's pair and span columns must say what pairs.parquet and segments.parquet say
    (they are there for readers; an import takes them from those tables)."""
    by_segment = {int(s.id): s for s in segments}  # type: ignore[arg-type]
    by_pair = {p.id: p for p in pairs}
    for number, obj in records:
        f = Fields(LABELS_PARQUET, number, obj, "row")
        pair = by_pair[obj["pair_id"]]  # checked by the common label checks
        if f.bool("retracted") != (obj["retracted_at"] is not None):
            raise f.error("retracted", f"is {obj['retracted']} but retracted_at is {obj['retracted_at']}")
        for side in ("left", "right"):
            segment_id = getattr(pair, f"{side}_segment_id")
            if f.int(f"{side}_segment_id") != segment_id:
                raise f.error(f"{side}_segment_id", f"is {obj[f'{side}_segment_id']} but {PAIRS_PARQUET} says {segment_id}")
            for name in SPAN_FIELDS:
                expected = getattr(by_segment[segment_id], name)
                if f.int(f"{side}_{name}") != expected:
                    raise f.error(f"{side}_{name}", f"is {obj[f'{side}_{name}']} but {SEGMENTS_PARQUET} says {expected}")
        _optional_text(f, "query_method")


def _check_check_context(records: list[tuple[int, dict[str, Any]]], pairs: list[DatasetPair]) -> None:
    """checks.parquet's agrees and segment columns must say what its answer and pairs.parquet say
    (they are there for readers; an import takes them from those)."""
    by_pair = {p.id: p for p in pairs}
    for number, obj in records:
        f = Fields(CHECKS_PARQUET, number, obj, "row")
        pair = by_pair[obj["pair_id"]]  # checked by the common check checks
        agrees = None if obj["choice"] is None else obj["choice"] == obj["expected"]
        if obj["agrees"] is not agrees:
            raise f.error("agrees", f"is {excerpt(obj['agrees'])} but choice {excerpt(obj['choice'])} and expected "
                          f"{excerpt(obj['expected'])} say {'null' if agrees is None else agrees}")
        for side in ("left", "right"):
            segment_id = getattr(pair, f"{side}_segment_id")
            if f.int(f"{side}_segment_id") != segment_id:
                raise f.error(f"{side}_segment_id", f"is {obj[f'{side}_segment_id']} but {PAIRS_PARQUET} says {segment_id}")
