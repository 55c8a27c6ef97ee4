"""``prefloop raters ...``: commands about a run's raters (``fit``: their fitted teacher models)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefloop.teacher_fit import INTERVAL, answers_from_store, fit_rater, fits_document


def add_raters_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``prefloop raters`` (with its subcommands) to the CLI's subparsers."""
    parser = subparsers.add_parser("raters", help="a run's raters: fit their teacher models")
    sub = parser.add_subparsers(dest="raters_command", required=True)
    fit_p = sub.add_parser(
        "fit",
        help="fit B-Pref's teacher parameters (beta, gamma, epsilon, skip/equal thresholds) to each rater's labels",
        description="Maximum-likelihood fit of B-Pref's simulated-teacher parameters to each rater's labels, "
        "from the true returns of the segments they compared, with bootstrap intervals. Replay a fit with "
        "--teacher fitted:PATH,rater=NAME.",
    )
    fit_p.add_argument("--run-dir", type=Path, default=None, help="the run folder whose labels to fit")
    fit_p.add_argument("--db-url", default=None, help="the store's SQLAlchemy URL (default: the run folder's)")
    fit_p.add_argument("--run-name", default=None, help="the run in the store (default: the run folder's)")
    fit_p.add_argument("--rater", action="append", default=[], metavar="NAME", help="fit only this rater (repeatable)")
    fit_p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals (0: none; default 200)")
    fit_p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the fits as JSON here")
    fit_p.set_defaults(func=cmd_raters_fit)
    return parser


def cmd_raters_fit(args: argparse.Namespace) -> int:
    from prefloop.dataset import DatasetError, _target
    from prefloop.store import PreferenceStore

    if args.bootstrap < 0:
        raise DatasetError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    url, run_name = _target(args, create=False)
    with PreferenceStore(url, run_name=run_name) as store:
        answers = answers_from_store(store, args.rater)
    if not answers:
        which = f" by {', '.join(args.rater)}" if args.rater else ""
        raise DatasetError(f"run {run_name!r} has no live labels{which} to fit")
    fits = [fit_rater(a, bootstrap=args.bootstrap) for a in answers]
    interval = f" [{INTERVAL:.0%} bootstrap interval]" if args.bootstrap else ""
    print(f"B-Pref teacher parameters fitted to the labels of run {run_name!r}{interval}:")
    for fit in fits:
        print(
            f"  {fit.rater_id}: {fit.labels} labels ({fit.decided} left/right, {fit.equal} equal, {fit.skipped} can't tell)\n"
            f"    beta {fit.beta.text()}  gamma {fit.gamma.text()}  epsilon {fit.epsilon.text()}\n"
            f"    skip_threshold {fit.skip_threshold.text()}  equal_threshold {fit.equal_threshold.text()}"
            f"  (fractions of a typical segment return {fit.return_scale:.3g})"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(fits_document(fits, f"{url} run {run_name}"), indent=1))
        print(f"written: {args.json}  (replay a rater with --teacher fitted:{args.json},rater=NAME)")
    sys.stdout.flush()
    return 0
