"""Database passwords: kept out of every file, log line, export and command line.

A store URL is written anywhere (``config.json``, the store's run meta, an export's manifest, a
message) only without its password (:func:`url_without_password`). The password itself lives
where the user put it at run time and is added back only to open a connection
(:func:`connect_url`):

- ``PREFLOOP_DB_PASSWORD``: the password itself, in the environment;
- ``PREFLOOP_DB_PASSWORD_FILE``: the path of a file holding it (``--db-password-file``);
- PostgreSQL's own ``PGPASSWORD`` and ``~/.pgpass`` work as well (libpq reads them);
- a password inside ``--db-url`` is used for this process only and never written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV_DB_PASSWORD = "PREFLOOP_DB_PASSWORD"
ENV_DB_PASSWORD_FILE = "PREFLOOP_DB_PASSWORD_FILE"
# Where a password may come from, for messages about a server that refused or is unreachable.
PASSWORD_SOURCES = (f"${ENV_DB_PASSWORD}, --db-password-file or PostgreSQL's own PGPASSWORD / ~/.pgpass "
                    "(prefloop never saves it)")
MAX_PASSWORD_FILE_BYTES = 4096
_PASSWORD_QUERY_KEYS = ("password", "passwd")
_USERINFO = re.compile(r"^(?P<scheme>[^:/?#]+://)(?P<user>[^:@/?#]*):[^@/?#]*@")


class CredentialsError(ValueError):
    """A password file cannot be used; the message names the file and the fix, never its content."""


def url_without_password(url: str) -> str:
    """``url`` with its password (userinfo and ``?password=``) removed; safe to write anywhere.

    An unparsable URL still loses its ``user:password@`` part.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return _USERINFO.sub(r"\g<scheme>\g<user>@", str(url))
    query = {k: v for k, v in parsed.query.items() if k.lower() not in _PASSWORD_QUERY_KEYS}
    return parsed._replace(password=None).set(query=query).render_as_string(hide_password=False)


def url_password(url: str) -> str | None:
    """The password written inside ``url``, or None."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return None
    if parsed.password:
        return str(parsed.password)
    for key, value in parsed.query.items():
        if key.lower() in _PASSWORD_QUERY_KEYS and isinstance(value, str) and value:
            return value
    return None


def read_password_file(path: str | os.PathLike[str]) -> str:
    """The password in ``path`` (its first line, without the line end).

    Raises:
        CredentialsError: missing, unreadable, empty or oversized file (content never echoed).
    """
    file = Path(path)
    try:
        data = file.read_bytes()[: MAX_PASSWORD_FILE_BYTES + 1]
    except OSError as exc:
        raise CredentialsError(
            f"cannot read the database password file {file}: {exc.strerror or exc}; pass a readable "
            f"file (--db-password-file or ${ENV_DB_PASSWORD_FILE})"
        ) from None
    lines = data.decode("utf-8", "replace").splitlines()
    password = lines[0] if lines else ""
    if not password or len(data) > MAX_PASSWORD_FILE_BYTES:
        raise CredentialsError(
            f"the database password file {file} is empty or longer than {MAX_PASSWORD_FILE_BYTES} bytes; "
            "put the password alone on its first line"
        )
    return password


def password_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """``$PREFLOOP_DB_PASSWORD``, else the content of ``$PREFLOOP_DB_PASSWORD_FILE``, else None."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_DB_PASSWORD):
        return environ[ENV_DB_PASSWORD]
    if environ.get(ENV_DB_PASSWORD_FILE):
        return read_password_file(environ[ENV_DB_PASSWORD_FILE])
    return None


def connect_url(url: str, environ: Mapping[str, str] | None = None) -> str:
    """The URL to connect with: ``url`` itself when it holds a password or is SQLite, else with
    the password from the environment (:func:`password_from_environment`) when one is set.
    Only ever passed to the database driver, never shown or written."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return url  # the caller reports the unparsable URL
    if parsed.get_backend_name() == "sqlite" or url_password(url):
        return url
    password = password_from_environment(environ)
    if not password:
        return url
    return parsed.set(password=password).render_as_string(hide_password=False)


def scrub_config(config: Any) -> Any:
    """A run config (as JSON) with its ``db_url`` password removed; anything else unchanged."""
    if isinstance(config, dict) and isinstance(config.get("db_url"), str):
        return {**config, "db_url": url_without_password(config["db_url"])}
    return config
