"""The rater app's configuration and who may use it: tokens, rater names, loopback addresses.

Secrets (the database URL may hold a password; the tokens) can come from the environment instead
of the command line, so they do not show up in ``ps``: ``PREFLOOP_DB_URL``,
``PREFLOOP_RATER_TOKEN``, ``PREFLOOP_ADMIN_TOKEN``. ``apps/launch.py`` passes them that way.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prefloop.store.identity import MAX_RATER_NAME_CHARS, normalize_rater_name  # noqa: F401 (re-exported)

ENV_DB_URL = "PREFLOOP_DB_URL"
ENV_TOKEN = "PREFLOOP_RATER_TOKEN"
ENV_ADMIN_TOKEN = "PREFLOOP_ADMIN_TOKEN"
# The rate limit for a whole deployment (``prefloop run`` passes its environment to the app);
# benchmarks that drive the page with a bot faster than a person raise it.
ENV_MAX_ANSWERS_PER_MINUTE = "PREFLOOP_MAX_ANSWERS_PER_MINUTE"

MIN_TOKEN_CHARS = 8


class AppConfigError(ValueError):
    """The app was started with missing or bad settings; the message says which and how to fix."""


@dataclass(frozen=True)
class AppConfig:
    """Settings of one rater app process.

    Attributes:
        db_url: SQLAlchemy URL of the preference store.
        run_name: the run whose pairs are rated.
        token: access token raters must present (``?token=`` or a field); None: open app.
        admin_token: token for the dashboard and the preferences download; None: both are open
            to whoever may rate (allowed on a loopback address only, see :func:`check_exposure`).
        lease_seconds: how long a shown pair stays reserved for its rater without a heartbeat
            (the open page renews it every quarter of this; a closed tab lets it run out).
        idle_seconds: a pair on screen this long without an answer pauses the rater's session
            and gives its pairs back until they press "I'm back".
        invite_only: only raters added with ``prefloop raters add`` (personal links) may rate;
            otherwise a new name is claimed on its first visit and bound to a key in its link.
        max_answers_per_minute: a rater's answers beyond this many within 60 s are refused.
        break_minutes: remind a rater to take a break after this many minutes of rating
            (0: never).
    """

    db_url: str
    run_name: str = "default"
    token: str | None = None
    admin_token: str | None = None
    lease_seconds: float = 30.0
    idle_seconds: float = 120.0
    invite_only: bool = False
    max_answers_per_minute: int = 30
    break_minutes: float = 20.0


def parse_app_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> AppConfig:
    """Build the config from the script's arguments (those after ``--`` of ``streamlit run``),
    falling back to the environment for the database URL and tokens.

    Raises:
        AppConfigError: no database URL, a bad lease, or a token shorter than 8 characters.
    """
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="rater_app.py", add_help=False)
    parser.add_argument("--db-url", default=None)
    parser.add_argument("--run-name", default="default")
    parser.add_argument("--token", default=None)
    parser.add_argument("--admin-token", default=None)
    parser.add_argument("--lease-seconds", default="30")
    parser.add_argument("--idle-seconds", default="120")
    parser.add_argument("--max-answers-per-minute", default=environ.get(ENV_MAX_ANSWERS_PER_MINUTE, "30"))
    parser.add_argument("--invite-only", action="store_true")
    parser.add_argument("--break-minutes", default="20")
    args, _unknown = parser.parse_known_args(list(argv))
    db_url = args.db_url or environ.get(ENV_DB_URL)
    if not db_url:
        raise AppConfigError(
            "the rater app needs the preference store's URL: pass --db-url URL after '--' "
            f"(or set {ENV_DB_URL}); start it with `prefloop rate --run-dir RUN_FOLDER`"
        )
    lease, idle, breaks = _number(args.lease_seconds), _number(args.idle_seconds), _number(args.break_minutes)
    check_timings(lease, idle, breaks)
    rate = _number(args.max_answers_per_minute)
    if not (math.isfinite(rate) and rate >= 1 and rate == int(rate)):
        raise AppConfigError(
            f"--max-answers-per-minute must be a whole number >= 1, got {args.max_answers_per_minute!r}"
        )
    token = check_token_value(args.token or environ.get(ENV_TOKEN), "--token")
    admin_token = check_token_value(args.admin_token or environ.get(ENV_ADMIN_TOKEN), "--admin-token")
    return AppConfig(
        break_minutes=breaks,
        db_url=db_url, run_name=args.run_name, token=token, admin_token=admin_token, lease_seconds=lease,
        idle_seconds=idle, invite_only=bool(args.invite_only), max_answers_per_minute=int(rate),
    )


def check_timings(lease_seconds: float | None, idle_seconds: float | None, break_minutes: float | None) -> None:
    """Refuse lease, idle and break settings the app cannot work with (None: the default).

    Raises:
        AppConfigError: naming the option and what it takes.
    """
    if lease_seconds is not None and not (math.isfinite(lease_seconds) and lease_seconds >= 5):
        raise AppConfigError(f"--lease-seconds must be a number of seconds >= 5, got {lease_seconds:g}")
    if idle_seconds is not None and not (math.isfinite(idle_seconds) and idle_seconds >= 5):
        raise AppConfigError(f"--idle-seconds must be a number of seconds >= 5, got {idle_seconds:g}")
    if break_minutes is not None and not (math.isfinite(break_minutes) and break_minutes >= 0):
        raise AppConfigError(f"--break-minutes must be a number of minutes >= 0 (0: no reminder), got {break_minutes:g}")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def check_token_value(token: str | None, what: str) -> str | None:
    """A configured token, validated: None or a string of at least 8 non-space characters."""
    if token is None or token == "":
        return None
    if len(token) < MIN_TOKEN_CHARS or any(ch.isspace() for ch in token):
        raise AppConfigError(
            f"{what} must be at least {MIN_TOKEN_CHARS} characters without spaces; generate one "
            "with `python -c \"import secrets; print(secrets.token_urlsafe(16))\"`"
        )
    return token


def token_matches(expected: str | None, given: object) -> bool:
    """True when no token is configured, or ``given`` equals it (compared in constant time)."""
    if expected is None:
        return True
    if not isinstance(given, str) or not given or len(given) > 4 * len(expected) + 64:
        return False
    # surrogatepass: a forged parameter with an unpaired surrogate is a wrong token, not a crash.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def check_exposure(
    host: str,
    token: str | None,
    admin_token: str | None,
    *,
    token_flag: str = "--token",
    admin_flag: str = "--admin-token",
) -> None:
    """Refuse to serve beyond this machine without both tokens.

    On a loopback address (see :func:`is_loopback_host`) only people on this machine reach the
    app, so tokens are optional. Anywhere else the app needs a rater token (to rate at all) and a
    different admin token (for the dashboard and for downloading the run's preferences), or
    anyone who can reach the host could label the run or take its data.

    Raises:
        AppConfigError: a non-loopback ``host`` without both tokens, or with the same token twice;
            the message names the missing option (``token_flag``/``admin_flag``).
    """
    if is_loopback_host(host):
        return
    missing = [flag for flag, value in ((token_flag, token), (admin_flag, admin_token)) if not value]
    if missing:
        raise AppConfigError(
            f"refusing to serve the rater app on {host!r} without {' and '.join(missing)}: anyone "
            "who can reach this machine could label the run, open its dashboard and download its "
            "preferences. Raters open the link with ?token=TOKEN; the dashboard and the download "
            "need the admin token. Generate each with "
            "`python -c \"import secrets; print(secrets.token_urlsafe(16))\"`, or keep the "
            "default --host 127.0.0.1."
        )
    if token == admin_token:
        raise AppConfigError(
            f"{admin_flag} must differ from {token_flag}: every rater knows the rater token, and "
            "the admin token guards the dashboard and the download of the run's preferences"
        )


def is_loopback_host(host: str) -> bool:
    """True for addresses only this machine can reach: ``localhost``, 127.0.0.0/8, ``::1``.

    ``0.0.0.0``, ``::``, a LAN address or a host name other than localhost are not loopback.
    """
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def clean_rater_name(name: object) -> str:
    """The rater id for a typed or ``?rater=`` name (see :func:`prefloop.store.identity.normalize_rater_name`).

    Raises:
        ValueError: the message is shown to the rater as is.
    """
    return normalize_rater_name(name)
