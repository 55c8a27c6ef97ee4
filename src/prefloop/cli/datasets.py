"""``prefloop export`` and ``prefloop import``: a run's preferences to and from a dataset folder."""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path
from typing import Any

from prefloop.datasets import (
    DEFAULT_MAX_DATASET_BYTES,
    DatasetError,
    export_dataset,
    import_loaded_dataset,
    load_dataset,
    store_of_run_dir,
)

EXPORT_FORMATS = ("jsonl", "parquet", "minari")


def _target(args: argparse.Namespace, *, create: bool) -> tuple[str, str]:
    if args.run_dir is None:
        if args.db_url is None or args.run_name is None:
            raise DatasetError(
                f"prefloop {args.command} needs --run-dir DIR, or --db-url URL with --run-name NAME"
            )
        return args.db_url, args.run_name
    run_dir = Path(args.run_dir)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        raise DatasetError(f"run folder {run_dir} does not exist; pass the folder of a prefloop run")
    return store_of_run_dir(run_dir, args.db_url, args.run_name)


def _route_raters_as_the_source_run(url: str, run_name: str) -> None:
    """Give the imported run the source run's rater-check policy, read from its config (imported
    with it): `prefloop raters list` then says what each imported rater gets next as it did in the
    source run (a rater failing their gold checks: checks only, not labels), and people rating the
    imported run's pending pairs (`prefloop rate`) are routed by the same rules. A dataset whose
    config is missing or not a prefloop run's keeps the policy off (every rater gets labels)."""
    import json

    from prefloop.store import PreferenceStore
    from prefloop.training.config import TrainConfig
    from prefloop.training.rater_checks import CheckPolicy, publish_policy

    with PreferenceStore(url, run_name=run_name) as store:
        try:
            config = TrainConfig.from_json(json.loads(store.get_meta("config") or "null"))
            policy = CheckPolicy.for_reward_model(config.reward_model, config.probation_checks)
        except ValueError:  # not JSON, or a ConfigError: not a config this version reads -- no routing, as before
            return
        publish_policy(store, policy)


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``prefloop export`` to the CLI's subparsers; its ``func`` returns the exit code."""
    parser = subparsers.add_parser(
        "export",
        help="write a run's segments, pairs and labels as a portable dataset folder (JSON + npz, or Parquet), "
        "or its episodes as a Minari dataset",
        description="Export a run's preferences as an open, pickle-free dataset folder.",
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="the run folder to export")
    parser.add_argument("--db-url", default=None, help="the store's SQLAlchemy URL (default: the run folder's)")
    parser.add_argument("--run-name", default=None, help="the run in the store (default: the run folder's)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl",
                        help="jsonl: JSON Lines + npz (default); parquet: Parquet tables for pandas and Hugging "
                        "Face datasets; minari: the episodes as a Minari dataset (parquet and minari need "
                        "pip install 'prefloop[data]')")
    parser.add_argument("--out", type=Path, default=None,
                        help="the dataset folder to write (new or empty); jsonl and parquet only")
    parser.add_argument("--dataset-id", default=None,
                        help="minari only: the Minari dataset id (default prefloop/<run name>-v0), written "
                        "where Minari keeps datasets (MINARI_DATASETS_PATH, else ~/.minari/datasets)")
    parser.add_argument("--no-retracted", action="store_true", help="leave out retracted labels")
    parser.set_defaults(func=cmd_export)
    return parser


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "minari":
        if args.out is not None:
            raise DatasetError("--out is for --format jsonl or parquet; a Minari dataset is named by --dataset-id")
        url, run_name = _target(args, create=False)
        from prefloop.datasets.episodes import export_minari  # needs minari

        minari_summary = export_minari(url, run_name, args.dataset_id)
        print(f"exported run {run_name!r} as Minari dataset {minari_summary.dataset_id!r} "
              f"({minari_summary.path}): {minari_summary.to_text()}")
        sys.stdout.flush()
        return 0
    if args.out is None:
        raise DatasetError(f"prefloop export --format {args.format} needs --out FOLDER, the dataset folder to write")
    if args.dataset_id is not None:
        raise DatasetError("--dataset-id is for --format minari")
    url, run_name = _target(args, create=False)
    summary = export_dataset(url, run_name, args.out, include_retracted=not args.no_retracted, layout=args.format)
    print(f"exported run {run_name!r} to {summary.path}: {summary.to_text()}")
    sys.stdout.flush()
    return 0


def add_import_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``prefloop import`` to the CLI's subparsers; its ``func`` returns the exit code."""
    parser = subparsers.add_parser(
        "import",
        help="load an exported preference dataset into a new run of a store",
        description="Import a dataset folder written by `prefloop export` (JSON Lines or Parquet) into a run without pairs.",
    )
    parser.add_argument("--in", dest="in_dir", type=Path, required=True,
                        help="the dataset folder, or its zip (the dashboard's download)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="the run folder to import into (created if missing, store prefs.sqlite)")
    parser.add_argument("--db-url", default=None, help="the store's SQLAlchemy URL (default: the run folder's)")
    parser.add_argument("--run-name", default=None, help="the run in the store (default: the run folder's)")
    parser.add_argument("--max-gib", type=float, default=DEFAULT_MAX_DATASET_BYTES / 2**30,
                        help="refuse a dataset whose files and uncompressed arrays hold more than this many GiB "
                        "(checked before reading; default %(default)g)")
    parser.set_defaults(func=cmd_import)
    return parser


def cmd_import(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.max_gib) and args.max_gib > 0):
        raise DatasetError(f"--max-gib must be a positive number of GiB, got {args.max_gib}")
    # A bad dataset fails before any folder or store is made.
    dataset = load_dataset(args.in_dir, max_bytes=int(args.max_gib * 2**30))
    new_folder = args.run_dir is not None and not Path(args.run_dir).exists()
    try:
        url, run_name = _target(args, create=True)
        summary = import_loaded_dataset(dataset, Path(args.in_dir), url, run_name)
        _route_raters_as_the_source_run(url, run_name)
    except BaseException:
        if new_folder:  # made by this import, holding only what it wrote: all or nothing
            shutil.rmtree(args.run_dir, ignore_errors=True)
        raise
    print(f"imported {summary.path} into run {run_name!r}: {summary.to_text()}")
    sys.stdout.flush()
    return 0

