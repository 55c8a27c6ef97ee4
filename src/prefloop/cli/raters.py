"""``prefloop raters ...``: the people who rate a run.

- ``prefloop raters add NAME --run-dir DIR`` registers a rater and prints their personal link
  (``?rater=NAME&key=SECRET``). Only the hash of the secret is stored; the link is printed once,
  to the admin's terminal, and nowhere else. ``--new-link`` replaces a lost link.
- ``prefloop raters list --run-dir DIR`` shows who rates: labels, flagged labels, onboarding.
- ``prefloop raters fit --run-dir DIR [--json PATH]`` fits B-Pref's teacher parameters to each
  rater's labels, with bootstrap intervals (:mod:`prefloop.teachers.fitted`); replay one with
  ``--teacher fitted:PATH,rater=NAME``.
- ``prefloop raters cost --run-dir DIR --hourly-rate 20`` (or ``--cost-per-label``) sets what
  labels cost, for the dashboard's cost per label and return per unit of cost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import urllib.parse
from collections import Counter
from pathlib import Path

from prefloop.serialization import strict_json
from prefloop.store import PreferenceStore
from prefloop.store.identity import IdentityError, invite
from prefloop.training.config import ConfigError
from prefloop.untrusted import TooLargeError, read_users_text

ENV_RATER_TOKEN = "PREFLOOP_RATER_TOKEN"


def add_raters_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``prefloop raters`` (``add``, ``list``, ``fit``) on the CLI's subparsers."""
    parser = subparsers.add_parser("raters", help="the raters of a run: personal links, who rated what, fitted teacher models")
    sub = parser.add_subparsers(dest="raters_command", required=True)

    add_p = sub.add_parser("add", help="register a rater and print their personal link (shown once)")
    add_p.add_argument("name", help="the rater's name as it will show on the dashboard")
    _add_store_arguments(add_p)
    add_p.add_argument("--url", default="http://127.0.0.1:8501/", type=app_address,
                       help="the rater app's address as raters reach it (default: http://127.0.0.1:8501/)")
    add_p.add_argument("--new-link", action="store_true",
                       help="the rater exists: give them a new link (the old one stops working)")
    add_p.set_defaults(func=cmd_raters_add)

    list_p = sub.add_parser("list", help="the run's raters: labels, flagged labels, onboarding")
    _add_store_arguments(list_p)
    list_p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    list_p.set_defaults(func=cmd_raters_list)

    fit_p = sub.add_parser(
        "fit",
        help="fit B-Pref's teacher parameters (beta, gamma, epsilon, skip/equal thresholds) to each rater's labels",
        description="Maximum-likelihood fit of B-Pref's simulated-teacher parameters to each rater's labels, "
        "from the true returns of the segments they compared, with bootstrap intervals. Replay a fit with "
        "--teacher fitted:PATH,rater=NAME.",
    )
    _add_store_arguments(fit_p)
    fit_p.add_argument("--rater", action="append", default=[], metavar="NAME", help="fit only this rater (repeatable)")
    fit_p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals (0: none; default 200)")
    fit_p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the fits as JSON here")
    fit_p.set_defaults(func=cmd_raters_fit)
    cost_p = sub.add_parser("cost", help="what a label costs: an hourly rate or a price per label (dashboard and bench)")
    _add_store_arguments(cost_p)
    price = cost_p.add_mutually_exclusive_group(required=True)
    price.add_argument("--hourly-rate", type=non_negative_number, help="pay per rating hour")
    price.add_argument("--cost-per-label", type=non_negative_number, help="pay per label")
    cost_p.add_argument("--currency", default="USD", help="currency shown beside costs (default: USD)")
    cost_p.set_defaults(func=cmd_raters_cost)

    guide_p = sub.add_parser("guideline", help="the Markdown page raters read above the clips (rendered safely)")
    _add_store_arguments(guide_p)
    guide_p.add_argument("--file", type=Path, required=True,
                         help="a short Markdown file; ![caption](pair:N) shows pair N's clips as an example")
    guide_p.set_defaults(func=cmd_raters_guideline)

    onboard_p = sub.add_parser("onboarding", help="new raters practise on gold pairs first; their labels count once they pass")
    _add_store_arguments(onboard_p)
    onboard_p.add_argument("--pairs", type=int, required=True, help="gold pairs to practise on (0: no onboarding)")
    onboard_p.add_argument("--pass", dest="to_pass", type=int, default=None,
                           help="how many of them must be right (default: all but one)")
    onboard_p.set_defaults(func=cmd_raters_onboarding)
    return parser


def non_negative_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def cmd_raters_cost(args: argparse.Namespace) -> int:
    from prefloop.apps.rater_quality import COST_META

    currency = args.currency.strip()
    if not (0 < len(currency) <= 8 and currency.isprintable()):
        raise ConfigError(f"--currency must be a short code such as USD or EUR, got {args.currency!r}")
    settings = {"hourly_rate": args.hourly_rate, "cost_per_label": args.cost_per_label, "currency": currency}
    with _open_store(args) as store:
        store.set_meta(COST_META, json.dumps({k: v for k, v in settings.items() if v is not None}))
        run = store.run_name
    what = (f"{args.hourly_rate:g} {currency} per rating hour" if args.hourly_rate is not None
            else f"{args.cost_per_label:g} {currency} per label")
    print(f"run {run!r}: labels cost {what}; the dashboard shows cost per label, total cost and return per cost")
    return 0


def cmd_raters_guideline(args: argparse.Namespace) -> int:
    from prefloop.apps.guideline import (
        GUIDELINE_META,
        MAX_GUIDELINE_PAGE_CHARS,
        render_guideline,
    )

    try:
        text = read_users_text(args.file, MAX_GUIDELINE_PAGE_CHARS)
    except TooLargeError:
        raise ConfigError(f"{args.file} has more than {MAX_GUIDELINE_PAGE_CHARS} characters; a guideline page holds "
                          f"at most {MAX_GUIDELINE_PAGE_CHARS} (keep it short: raters read it while rating)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the guideline file {args.file}: {exc}; pass a UTF-8 Markdown file") from None
    text = text.replace("\x00", "")
    examples = [b.pair_id for b in render_guideline(text) if hasattr(b, "pair_id")]
    with _open_store(args) as store:
        store.set_meta(GUIDELINE_META, text)
        run = store.run_name
    print(f"run {run!r}: guideline page set ({len(text)} characters, {len(examples)} example pairs); "
          "raters see it above the clips. HTML, images and links in it are shown as text.")
    return 0


def cmd_raters_onboarding(args: argparse.Namespace) -> int:
    from prefloop.apps.onboarding import ONBOARDING_META

    to_pass = args.to_pass if args.to_pass is not None else max(1, args.pairs - 1)
    if args.pairs and not 0 < to_pass <= args.pairs <= 50:
        raise ConfigError(f"--pass must be between 1 and --pairs, and --pairs at most 50; got --pairs "
                          f"{args.pairs} --pass {to_pass}")
    with _open_store(args) as store:
        if args.pairs <= 0:
            store.set_meta(ONBOARDING_META, "{}")
            print(f"run {store.run_name!r}: no onboarding; every rater's answers count from the start")
            return 0
        store.set_meta(ONBOARDING_META, json.dumps({"pairs": args.pairs, "pass": to_pass}))
        gold = len(store.gold_pairs())
        run = store.run_name
    print(f"run {run!r}: new raters practise on {args.pairs} gold pairs and need {to_pass} right before "
          "their answers count.")
    if gold < args.pairs:
        print(f"note: the run has {gold} gold pairs with clips so far; onboarding uses what there is "
              f"(and is skipped while there are fewer than {to_pass})", file=sys.stderr)
    return 0


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", type=Path, help="the run folder")
    where.add_argument("--db-url", help="SQLAlchemy URL of the preference store (with --run-name)")
    parser.add_argument("--run-name", default=None, help="run name in the store (default: the run folder's)")


def _open_store(args: argparse.Namespace) -> PreferenceStore:
    from prefloop.apps.cli_rate import resolve_store

    db_url, run_name = resolve_store(args)
    return PreferenceStore(db_url, run_name, create_run=False)  # a misspelt --run-name creates nothing


def app_address(text: str) -> str:
    """An argparse type: the rater app's address as raters reach it, ``http(s)://HOST[:PORT][/PATH]``
    (a link of any other kind would not open the app, or would run in the rater's browser)."""
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme in ("http", "https") and parsed.hostname and not parsed.query and not parsed.fragment:
        return text
    raise argparse.ArgumentTypeError(f"expected the app's address, http(s)://HOST[:PORT]/ (e.g. https://rate.example.org/), got {text!r}")


def invite_link(base_url: str, name: str, secret: str, token: str | None = None) -> str:
    """The rater's personal link: the app's address with ``rater``, ``key`` (and the shared
    ``token`` when the app needs one) as query parameters."""
    query = {"rater": name, "key": secret}
    if token:
        query["token"] = token
    return base_url.rstrip("/") + "/?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


def cmd_raters_add(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        try:
            name, secret = invite(store, args.name, replace=args.new_link)
        except IdentityError as exc:
            raise ConfigError(str(exc)) from None
    link = invite_link(args.url, name, secret, os.environ.get(ENV_RATER_TOKEN))
    print(f"rater {name!r} added to run {store.run_name!r}. Send them this personal link "
          "(it is shown only now; `--new-link` makes a new one):", file=sys.stderr)
    print(link)
    return 0


def rater_summary(store: PreferenceStore) -> list[dict[str, object]]:
    """One row per rater of the run: name, registered, onboarded, live labels, flagged labels
    by flag, gold checks answered (and how many right), repeats answered (and how many the same
    as before), and what the rater gets next (``labels``, ``probation``: a gold check first,
    ``checks only``: flagged, ``a repeat``;
    :mod:`prefloop.training.rater_checks`), and the error rate the last reward-model fit estimated
    (``error_rate``, None before any fit has judged the rater) with whether it flagged them
    (``unreliable``: their labels get weight 0)."""
    from prefloop.training.rater_checks import RATER_RELIABILITY_META, RaterRouter

    router = RaterRouter.for_run(store)
    estimates = _fit_estimates(store.get_meta(RATER_RELIABILITY_META))
    checks = store.rater_checks()
    registered = {r["name"]: r for r in store.raters()}
    labels = store.labels()
    flags = store.label_flags()
    per_rater = Counter(label.rater_id for label in labels)
    flagged: dict[str, Counter[str]] = {}
    for label in labels:
        for flag in flags.get(label.id or -1, {}):
            flagged.setdefault(label.rater_id, Counter())[flag] += 1
    rows = []
    for name in store.rater_ids():
        record = registered.get(name)
        rows.append({
            "name": name,
            "registered": record is not None,
            "onboarded": bool(record and record["onboarded_at"] is not None),
            "labels": per_rater.get(name, 0),
            "flags": dict(sorted(flagged.get(name, Counter()).items())),
            "checks": sum(c.rater_id == name and c.kind == "gold" for c in checks),
            "checks_right": sum(c.rater_id == name and c.kind == "gold" and c.agrees for c in checks),
            "repeats": sum(c.rater_id == name and c.kind == "repeat" for c in checks),
            "repeats_same": sum(c.rater_id == name and c.kind == "repeat" and c.agrees for c in checks),
            "gets": {"flagged": "checks only", "repeat": "a repeat"}.get(mode := router.mode(name), mode),
            "error_rate": estimates.get(name, (None, None))[0],
            "unreliable": estimates.get(name, (None, None))[1],
        })
    return rows


def _fit_estimates(raw: str | None) -> dict[str, tuple[float | None, bool | None]]:
    """Per rater, ``(estimated error rate, flagged)`` from the last fit's run meta; {} without one."""
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        return {}
    entries = data.get("raters") if isinstance(data, dict) else None
    found: dict[str, tuple[float | None, bool | None]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("rater_id"), str):
            rate = entry.get("error_rate")
            ok = isinstance(rate, (int, float)) and not isinstance(rate, bool) and math.isfinite(rate)
            found[entry["rater_id"]] = (float(rate) if ok else None, bool(entry.get("flagged")))
    return found


def cmd_raters_list(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        rows = rater_summary(store)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no raters yet: add one with `prefloop raters add NAME --run-dir DIR`")
        return 0
    print(f"{'rater':<24} {'link':<5} {'onboarded':<9} {'labels':>6} {'gold right':>10} {'repeats same':>12}  "
          f"{'gets next':<11}  {'est. error':<16}  label flags")
    for row in rows:
        flags = ", ".join(f"{k} {v}" for k, v in row["flags"].items()) or "-"  # type: ignore[union-attr]
        gold, repeats = f"{row['checks_right']}/{row['checks']}", f"{row['repeats_same']}/{row['repeats']}"
        rate = row["error_rate"]
        error = "-" if rate is None else f"{rate:.2f}" + (" unreliable" if row["unreliable"] else "")
        print(f"{row['name']!s:<24} {'yes' if row['registered'] else 'no':<5} "
              f"{'yes' if row['onboarded'] else 'no':<9} {row['labels']:>6} {gold:>10} {repeats:>12}  "
              f"{row['gets']!s:<11}  {error:<16}  {flags}")
    if any(row["unreliable"] for row in rows):
        print("est. error: the error rate the last reward-model fit estimated; an unreliable rater's labels get "
              "weight 0 (kept, not deleted). label flags: answers the server flagged (too_fast, time_cut).")
    return 0


def cmd_raters_fit(args: argparse.Namespace) -> int:
    from prefloop.teachers.fitted import (
        INTERVAL,
        answers_from_store,
        fit_rater,
        fits_document,
    )

    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    with _open_store(args) as store:
        answers = answers_from_store(store, args.rater)
        run_name = store.run_name
    if not answers:
        which = f" by {', '.join(args.rater)}" if args.rater else ""
        raise ConfigError(f"run {run_name!r} has no live labels{which} to fit")
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
        args.json.write_text(strict_json(fits_document(fits, f"run {run_name}"), indent=1))
        print(f"written: {args.json}  (replay a rater with --teacher fitted:{args.json},rater=NAME)")
    sys.stdout.flush()
    return 0
