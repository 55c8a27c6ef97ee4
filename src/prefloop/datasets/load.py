"""Load and validate a dataset folder (or its zip) before anything is stored.

A dataset may come from anyone, so loading treats every byte as hostile: files are opened
without following links and only if they are regular files; sizes, JSON numbers, nesting and
npy headers are bounded before anything is allocated (prefloop.untrusted); every value gets the
checks the store would make when the data arrived through the product
(:mod:`prefloop.datasets.records`); and an error quotes at most a short excerpt of the value it is
about.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefloop.datasets.format import (
    CHECKS_JSONL,
    CHECKS_PARQUET,
    DATA_FILES,
    FORMAT_NAME,
    FORMAT_VERSION,
    LABELS_JSONL,
    LAYOUT_PARQUET,
    MANIFEST,
    NPZ_ARRAYS,
    PAIRS_JSONL,
    PARQUET_FILES,
    SEGMENTS_JSONL,
    SEGMENTS_NPZ,
    DatasetError,
    DatasetPair,
    PreferenceDataset,
    checks_file,
    data_files,
)
from prefloop.datasets.rater_checks import checks_from_records
from prefloop.datasets.records import (
    BYTES_PER_SEGMENT,
    REEXPORT,
    check_record_budget,
    check_segment_lines,
    jsonl_objects,
    labels_from_records,
    pairs_from_records,
    segments_from_arrays,
    storable_text,
)
from prefloop.types import Label, Segment
from prefloop.untrusted import (
    TooLargeError,
    UntrustedInputError,
    excerpt,
    extract_zip,
    open_regular_file,
    parse_json,
    read_npz,
    read_regular_file,
)

DEFAULT_MAX_DATASET_BYTES = 1 << 30  # files plus uncompressed arrays; `prefloop import --max-gib`
MAX_MANIFEST_BYTES = 8 << 20
MAX_IMPORTED_GUIDELINE_CHARS = 20_000
MAX_SOURCE_RUN_NAME_CHARS = 200


def load_dataset(
    in_dir: str | os.PathLike[str],
    *,
    verify_checksums: bool = True,
    max_bytes: int = DEFAULT_MAX_DATASET_BYTES,
) -> PreferenceDataset:
    """Read and validate a dataset folder written by :func:`export_dataset`.

    Checks the manifest's format and version, that every file is a regular file in the folder
    (symbolic links are refused, never followed), sizes and npy headers before reading, every
    file's syntax, array shapes, dtypes and finiteness, field types and ranges, choices, rater ids,
    the references between files, that no pair has more live labels than it asked for, the rater
    checks (``checks.jsonl``, when the export has one: older ones do not, and load with none), the
    manifest's counts and (with ``verify_checksums``, required for an import) that the manifest
    holds a checksum of every file and no file changed since export.

    Args:
        max_bytes: the most the files and the uncompressed arrays may hold together.

    Raises:
        DatasetError: one line naming the file, line or array, the field, and the fix.
    """
    root = Path(in_dir)
    if root.is_file():
        if zipfile.is_zipfile(root):  # a zipped export (the dashboard's download)
            return _load_zipped(root, verify_checksums, max_bytes)
        raise DatasetError(
            f"{root} is a file but not a zip (or a truncated one); pass the folder `prefloop export "
            "--out` wrote, or the zip of it, copied again"
        )
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist (or is not a folder); pass the folder "
            "`prefloop export --out` wrote, or its zip"
        )
    try:
        return _load_checked(root, verify_checksums, max_bytes)
    except TooLargeError as exc:
        raise DatasetError(
            f"{exc}; nothing was read into memory beyond that. If the dataset is genuine and this "
            "machine has the memory, allow more with `prefloop import --max-gib N`"
        ) from None
    except UntrustedInputError as exc:
        raise DatasetError(f"{exc}; {REEXPORT}") from None


def _load_zipped(path: Path, verify_checksums: bool, max_bytes: int) -> PreferenceDataset:
    """Unpack a zipped dataset into a temporary folder (checked before anything is written, see
    :func:`prefloop.untrusted.extract_zip`) and load it from there like any folder."""
    with tempfile.TemporaryDirectory(prefix="prefloop-import-") as tmp:
        try:
            with open_regular_file(path.parent, path.name, max_bytes) as handle:
                allowed = (MANIFEST, *DATA_FILES, CHECKS_JSONL, *PARQUET_FILES, CHECKS_PARQUET)
                folder = extract_zip(handle, path.name, allowed, Path(tmp), max_bytes)
        except TooLargeError as exc:
            raise DatasetError(f"{exc}; if the dataset is genuine, allow more with `prefloop import --max-gib N`") from None
        except UntrustedInputError as exc:
            raise DatasetError(f"{exc}; {REEXPORT}") from None
        return load_dataset(folder, verify_checksums=verify_checksums, max_bytes=max_bytes)


@dataclass
class DatasetFiles:
    """What a layout's files hold, read and bounded but not yet checked record by record.

    Attributes:
        arrays: the per-segment arrays of :data:`NPZ_ARRAYS`, as read.
        segment_records, pair_records, label_records: ``(line or row number, object)`` of each
            file, plain JSON-like values.
        check_records: likewise for the rater checks; None when the export has no checks file.
        names: the file each kind of record came from, by ``"arrays"``, ``"segments"``,
            ``"pairs"``, ``"labels"``, ``"checks"`` (what errors name).
        unit: ``"line"`` (JSON Lines) or ``"row"`` (Parquet).
        array_kind: ``"array"`` (npz) or ``"column"`` (Parquet).
        check_context: a layout's own check of the loaded records (Parquet: the label table's
            pair and span columns agree with the pairs and segments), or None.
    """

    arrays: dict[str, np.ndarray]
    segment_records: list[tuple[int, dict[str, Any]]]
    pair_records: list[tuple[int, dict[str, Any]]]
    label_records: list[tuple[int, dict[str, Any]]]
    names: dict[str, str]
    check_records: list[tuple[int, dict[str, Any]]] | None = None
    unit: str = "line"
    array_kind: str = "array"
    check_context: Callable[[list[Segment], list[DatasetPair], list[Label]], None] | None = None


def _load_checked(root: Path, verify_checksums: bool, max_bytes: int) -> PreferenceDataset:
    manifest = _load_manifest(root, verify_checksums)
    if manifest.get("layout") == LAYOUT_PARQUET:
        from prefloop.datasets.parquet import read_parquet_files  # needs pyarrow

        files = read_parquet_files(root, manifest, verify_checksums, max_bytes)
    else:
        files = _read_jsonl_files(root, manifest, verify_checksums, max_bytes)
    return _checked_dataset(manifest, files, max_bytes)


def _read_jsonl_files(root: Path, manifest: dict[str, Any], verify_checksums: bool, max_bytes: int) -> DatasetFiles:
    texts: dict[str, bytes] = {}
    with_checks = has_checks(root, manifest)
    for name in (SEGMENTS_JSONL, PAIRS_JSONL, LABELS_JSONL, *([CHECKS_JSONL] if with_checks else [])):
        texts[name] = read_regular_file(root, name, max_bytes - sum(map(len, texts.values())))
    for name, data in texts.items():
        check_record_budget(name, data.count(b"\n") + 1, "lines", max_bytes)
    with open_regular_file(root, SEGMENTS_NPZ, max_bytes) as npz:
        if verify_checksums:
            checksums = manifest["checksums"]
            for name, data in texts.items():
                verify_checksum(name, hashlib.sha256(data).hexdigest(), checksums[name])
            verify_checksum(SEGMENTS_NPZ, sha256_handle(npz), checksums[SEGMENTS_NPZ])
        arrays = read_npz(npz, SEGMENTS_NPZ, NPZ_ARRAYS, max_bytes - sum(map(len, texts.values())))
    return DatasetFiles(
        arrays=arrays,
        segment_records=jsonl_objects(texts[SEGMENTS_JSONL], SEGMENTS_JSONL),
        pair_records=jsonl_objects(texts[PAIRS_JSONL], PAIRS_JSONL),
        label_records=jsonl_objects(texts[LABELS_JSONL], LABELS_JSONL),
        check_records=jsonl_objects(texts[CHECKS_JSONL], CHECKS_JSONL) if with_checks else None,
        names={"arrays": SEGMENTS_NPZ, "segments": SEGMENTS_JSONL, "pairs": PAIRS_JSONL, "labels": LABELS_JSONL,
               "checks": CHECKS_JSONL},
    )


def has_checks(root: Path, manifest: dict[str, Any]) -> bool:
    """Whether the export has a rater checks file: it is in the folder, or the manifest says it
    should be (a checksum or a count of it). An export from before checks has neither."""
    name = checks_file(manifest)
    checksums, counts = manifest.get("checksums"), manifest.get("counts")
    return (
        os.path.lexists(root / name)
        or (isinstance(checksums, dict) and name in checksums)
        or (isinstance(counts, dict) and "checks" in counts)
    )


def _checked_dataset(manifest: dict[str, Any], files: DatasetFiles, max_bytes: int) -> PreferenceDataset:
    """Every record of ``files`` through the checks of :mod:`prefloop.datasets.records`."""
    names, unit = files.names, files.unit
    n_segments = files.arrays["segment_id"].shape[0] if files.arrays["segment_id"].ndim else 0
    if n_segments * BYTES_PER_SEGMENT > max_bytes:
        raise TooLargeError(
            f"{names['arrays']} holds {n_segments:,} segments, which would take about "
            f"{n_segments * BYTES_PER_SEGMENT:,} bytes once read, more than the limit of {max_bytes:,}"
        )
    segments = segments_from_arrays(files.arrays, names["arrays"], files.array_kind)
    created_at = check_segment_lines(files.segment_records, segments, names["segments"], names["arrays"], unit)
    segment_ids = {int(s.id) for s in segments}  # type: ignore[arg-type]
    pairs = pairs_from_records(files.pair_records, segment_ids, names["pairs"], names["segments"], unit)
    labels = labels_from_records(files.label_records, pairs, names["labels"], names["pairs"], unit)
    checks = (
        [] if files.check_records is None
        else checks_from_records(files.check_records, pairs, names["checks"], names["pairs"], unit)
    )
    if files.check_context is not None:
        files.check_context(segments, pairs, labels)

    counts = manifest.get("counts")
    actual = {
        "segments": (len(segments), names["arrays"]),
        "pairs": (len(pairs), names["pairs"]),
        "labels": (len(labels), names["labels"]),
        **({"checks": (len(checks), names["checks"])} if files.check_records is not None else {}),
    }
    if isinstance(counts, dict):
        for key, (value, file) in actual.items():
            if key in counts and counts[key] != value:
                raise DatasetError(
                    f"{file} holds {value} {key} but {MANIFEST} counts.{key} says "
                    f"{excerpt(counts[key])}; the file is incomplete or was edited -- {REEXPORT}"
                )
    return PreferenceDataset(
        manifest=manifest, segments=segments, pairs=pairs, labels=labels, segment_created_at=created_at,
        checks=checks,
    )


def verify_checksum(name: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise DatasetError(
            f"{name}: its sha256 differs from {MANIFEST} checksums.{name}: the file changed since "
            f"export (damaged in transfer, or edited); {REEXPORT}"
        )


def sha256_handle(handle: Any) -> str:
    digest = hashlib.sha256()
    handle.seek(0)
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    handle.seek(0)
    return digest.hexdigest()


_ENV_ID = re.compile(r"[A-Za-z0-9_:./-]{1,200}")  # Gymnasium ids: [namespace/]name[-vN]


def _env_spec_problem(env_spec: dict[str, Any]) -> str | None:
    """Why a dataset's env spec cannot be used to rebuild its env here, or None. The spec is passed
    to ``gymnasium.make`` by whoever renders clips or trains on the run, so it may not name files
    on the importing machine (some envs read a model file named in their keyword arguments)."""
    env_id = env_spec.get("env_id")
    if not isinstance(env_id, str) or not _ENV_ID.fullmatch(env_id) or ".." in env_id:
        return f"must name its env in 'env_id' (a Gymnasium id such as 'CartPole-v1'), got {excerpt(env_id)}"
    kwargs = env_spec.get("env_kwargs", {})
    if not isinstance(kwargs, dict):
        return f"has 'env_kwargs' {excerpt(kwargs)}; it must be a JSON object"
    stack: list[tuple[str, Any]] = [(f"env_kwargs.{k}", v) for k, v in kwargs.items()]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{where}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str) and (
            "/" in value or "\\" in value or value.startswith(("~", ".")) or storable_text(value)
            or any(unicodedata.category(ch) == "Cc" for ch in value)
        ):
            return (
                f"has {excerpt(where, 60)} = {excerpt(value)}; a dataset may not name files or paths on "
                "the machine that imports it (nor hold control characters)"
            )
    return None


def _load_manifest(root: Path, require_checksums: bool) -> dict[str, Any]:
    try:
        data = read_regular_file(root, MANIFEST, MAX_MANIFEST_BYTES)
    except UntrustedInputError as exc:
        if not (root / MANIFEST).exists() and not (root / MANIFEST).is_symlink():
            raise DatasetError(
                f"{MANIFEST} is missing from {root}: this is not a prefloop preference dataset (or "
                "its export was interrupted); export it again with `prefloop export`"
            ) from None
        raise DatasetError(f"{exc}; {REEXPORT}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{MANIFEST} is not UTF-8 text (byte {exc.start}); {REEXPORT}") from None
    manifest = parse_json(text, MANIFEST)

    def bad(key: str, problem: str) -> DatasetError:
        return DatasetError(f"{MANIFEST}: field {key!r} {problem}; {REEXPORT}")

    if not isinstance(manifest, dict):
        raise DatasetError(f"{MANIFEST} must hold a JSON object, got {type(manifest).__name__}; {REEXPORT}")
    if manifest.get("format") != FORMAT_NAME:
        raise DatasetError(
            f"{MANIFEST}: field 'format' is {excerpt(manifest.get('format'))}, expected "
            f"{FORMAT_NAME!r}; this folder is not a prefloop preference dataset"
        )
    version = manifest.get("version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise DatasetError(
            f"{MANIFEST}: field 'version' is {excerpt(version)}; this prefloop reads version "
            f"{FORMAT_VERSION}. Use the prefloop version that wrote it"
        )
    layout = manifest.get("layout")
    if layout is not None and layout != LAYOUT_PARQUET:
        raise bad("layout", f"is {excerpt(layout)}; this prefloop reads {LAYOUT_PARQUET!r}, or no layout (JSON Lines + npz)")
    for key, kind in (("env_spec", dict), ("config", dict), ("guideline", str), ("guideline_page", str), ("counts", dict)):
        value = manifest.get(key)
        if value is not None and not isinstance(value, kind):
            raise bad(key, f"must be a JSON {'object' if kind is dict else 'string'} or null, got {type(value).__name__}")
    env_spec = manifest.get("env_spec")
    if env_spec is not None:
        problem = _env_spec_problem(env_spec)
        if problem:
            raise bad("env_spec", problem)
    for key in ("guideline", "guideline_page"):
        text = manifest.get(key)
        if text is not None:
            if len(text) > MAX_IMPORTED_GUIDELINE_CHARS:
                raise bad(key, f"is {len(text):,} characters long; at most {MAX_IMPORTED_GUIDELINE_CHARS:,}")
            if storable_text(text):
                raise bad(key, f"contains {storable_text(text)}")
    fps = manifest.get("render_fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000):
        raise bad("render_fps", f"must be a number from 0 to 1000 (frames per second) or null, got {excerpt(fps)}")
    source = manifest.get("source")
    name = source.get("run_name") if isinstance(source, dict) else None
    if not isinstance(name, str):
        raise bad("source", "must be an object with a string 'run_name'")
    if len(name) > MAX_SOURCE_RUN_NAME_CHARS or storable_text(name) or not name.strip():
        raise bad("source", f"has the run_name {excerpt(name)}; a run name is 1 to 200 characters of text")
    files = (*data_files(manifest), *([checks_file(manifest)] if has_checks(root, manifest) else []))
    for file in files:
        if not os.path.lexists(root / file):
            raise DatasetError(f"{file} is missing from {root}; the dataset is incomplete -- {REEXPORT}")
    if require_checksums:
        checksums = manifest.get("checksums")
        if not isinstance(checksums, dict):
            raise DatasetError(
                f"{MANIFEST} has no 'checksums' object, so the files cannot be verified and the "
                f"dataset is refused; {REEXPORT} (it writes the sha256 of every file)"
            )
        for file in files:
            value = checksums.get(file)
            if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
                raise DatasetError(
                    f"{MANIFEST}: checksums.{file} is {'missing' if value is None else excerpt(value)}; "
                    f"every file needs its sha256 (64 hex digits) or the dataset is refused; {REEXPORT}"
                )
    return manifest


