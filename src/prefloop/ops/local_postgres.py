"""A throwaway PostgreSQL server on the loopback interface, for tests and benchmarks.

:func:`start_local_postgres` runs ``initdb`` into a fresh temporary folder and starts the server
with ``pg_ctl``. It listens on 127.0.0.1 only (a free port), keeps its unix socket inside that
folder, requires a password (scram-sha-256, random per server) and keeps ``fsync`` and
``synchronous_commit`` on, so commits are as durable as in production. :meth:`LocalPostgres.stop`
shuts it down (``pg_ctl stop -m fast``) and deletes the folder.

PostgreSQL refuses to run as root: when this process is root, every PostgreSQL program runs as
the ``postgres`` system user that Debian's ``postgresql`` package creates (``setuid`` in the
child), and the temporary folder is handed to that user.

Usage::

    with start_local_postgres() as pg:
        url = pg.create_database("prefs")   # postgresql+psycopg://prefloop:...@127.0.0.1:PORT/prefs
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL

LOOPBACK = "127.0.0.1"
SUPERUSER = "prefloop"
SYSTEM_USER = "postgres"  # who runs the server when we are root (created by Debian's package)
BINDIR_ENV = "PREFLOOP_PG_BINDIR"
INSTALL_HINT = (
    "install Debian's PostgreSQL server (`apt-get install postgresql`; `make test` does it when "
    f"run as root) or point {BINDIR_ENV} at the folder holding initdb and pg_ctl"
)
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresUnavailableError(RuntimeError):
    """The PostgreSQL server programs (initdb, pg_ctl, postgres) are not installed."""


class PostgresStartError(RuntimeError):
    """The server could not be initialised or started; the message holds the server log's tail."""


def find_postgres_bindir() -> Path | None:
    """The folder with ``initdb``/``pg_ctl``/``postgres``, or None when PostgreSQL is missing.

    Looks at ``$PREFLOOP_PG_BINDIR``, then Debian's ``/usr/lib/postgresql/<version>/bin``
    (newest version first), then ``initdb`` on ``PATH``.
    """
    candidates: list[Path] = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(Path(os.environ[BINDIR_ENV]))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.replace(".", "").isdigit()]
        versions.sort(key=lambda p: [int(x) for x in p.name.split(".")], reverse=True)
        candidates.extend(v / "bin" for v in versions)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


@dataclass
class LocalPostgres:
    """A running throwaway server. Do not build it yourself: use :func:`start_local_postgres`.

    Attributes:
        base_dir: the temporary folder (``data/`` cluster, ``server.log``, the unix socket).
        port: TCP port on 127.0.0.1.
        password: the superuser's password (user :data:`SUPERUSER`).
    """

    base_dir: Path
    port: int
    password: str
    bindir: Path
    _run_as: pwd.struct_passwd | None = field(repr=False, default=None)
    _stopped: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL of ``database`` on this server, password included."""
        return URL.create(
            driver,
            username=SUPERUSER,
            password=self.password,
            host=LOOPBACK,
            port=self.port,
            database=database,
        ).render_as_string(hide_password=False)

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL.

        Raises:
            ValueError: ``name`` is not a plain lower-case identifier (``[a-z_][a-z0-9_]*``).
        """
        if not _DB_NAME.match(name):
            raise ValueError(
                f"database name {name!r} must match {_DB_NAME.pattern} (lower-case letters, "
                "digits, underscores; at most 63 characters)"
            )
        self._admin_sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database made by :meth:`create_database`, closing its leftover connections."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
        self._admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin_sql(self, statement: str) -> None:
        import psycopg  # optional dependency: only needed when a server is actually used

        with psycopg.connect(
            host=LOOPBACK,
            port=self.port,
            user=SUPERUSER,
            password=self.password,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Shut the server down (fast: open transactions are rolled back) and delete its folder.

        Safe to call twice. Kills the server if it does not stop within 60 s.
        """
        if self._stopped:
            return
        self._stopped = True
        try:
            if (self.data_dir / "postmaster.pid").exists():
                result = _run(
                    [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                     "-t", "60", "stop"],
                    self._run_as,
                )
                if result.returncode != 0:
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    def __enter__(self) -> LocalPostgres:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_local_postgres(
    parent: str | os.PathLike[str] | None = None,
    *,
    max_connections: int = 200,
    timeout_s: float = 60.0,
) -> LocalPostgres:
    """Initialise and start a throwaway server; the caller must :meth:`~LocalPostgres.stop` it.

    Args:
        parent: where the temporary folder goes (default: the system temp folder). When running
            as root it must be traversable by the ``postgres`` user (``/tmp`` is).
        max_connections: the server's connection limit (each store process pools a few).
        timeout_s: how long to wait for the server to accept connections.

    Raises:
        PostgresUnavailableError: the server programs are not installed (the message says how).
        PostgresStartError: initdb or the server failed; the message has the log's tail.
    """
    bindir = find_postgres_bindir()
    if bindir is None:
        raise PostgresUnavailableError(f"PostgreSQL server programs not found: {INSTALL_HINT}")
    run_as = _system_user() if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="prefloop-pg-", dir=parent))
    try:
        password = secrets.token_urlsafe(18)
        pwfile = base / "pwfile"
        pwfile.write_text(password + "\n")
        if run_as is not None:
            os.chown(base, run_as.pw_uid, run_as.pw_gid)
            os.chown(pwfile, run_as.pw_uid, run_as.pw_gid)
        data = base / "data"
        # --no-sync only skips flushing the template files once; the server itself runs with fsync.
        init = _run(
            [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, f"--pwfile={pwfile}",
             "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            run_as,
        )
        pwfile.unlink()
        if init.returncode != 0:
            raise PostgresStartError(f"initdb failed (exit {init.returncode}):\n{init.stdout[-3000:]}")
        last_error = ""
        for _ in range(3):  # a free port can be taken by someone else before the server binds it
            port = _free_loopback_port()
            _write_settings(data, base, port, max_connections)
            server = LocalPostgres(base, port, password, bindir, run_as)
            started = _run(
                [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(server.log_path), "-w",
                 "-t", str(int(timeout_s)), "start"],
                run_as,
            )
            if started.returncode == 0:
                return server
            last_error = _tail(server.log_path) or started.stdout
            server._kill_postmaster()
            if "already in use" not in last_error:
                break
        raise PostgresStartError(f"the PostgreSQL server did not start:\n{last_error[-3000:]}")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresStartError(
            f"running as root, but PostgreSQL refuses to run as root and there is no "
            f"'{SYSTEM_USER}' user to run it as; install Debian's postgresql package (it creates "
            f"the user) or `useradd --system {SYSTEM_USER}`, or run as a non-root user"
        ) from None


def _write_settings(data: Path, base: Path, port: int, max_connections: int) -> None:
    # postgresql.auto.conf is read last, so these override anything initdb wrote.
    settings = {
        "listen_addresses": f"'{LOOPBACK}'",
        "port": str(port),
        "unix_socket_directories": f"'{base}'",
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
        "max_connections": str(max_connections),
        "shared_buffers": "'32MB'",
        "log_min_messages": "warning",
    }
    text = "".join(f"{key} = {value}\n" for key, value in settings.items())
    (data / "postgresql.auto.conf").write_text(text)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _run(argv: list[str], run_as: pwd.struct_passwd | None) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program, as ``run_as`` when given; stdout and stderr merged."""
    kwargs: dict = {}
    if run_as is not None:
        kwargs = {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C", "HOME": run_as.pw_dir if run_as else os.environ.get("HOME", "/")}
    # A temporary file, not a pipe: the server inherits pg_ctl's descriptors and never closes them.
    with tempfile.TemporaryFile(mode="w+") as out:
        result = subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd="/", check=False, **kwargs,
        )
        out.seek(0)
        output = out.read()
    return subprocess.CompletedProcess(argv, result.returncode, output, "")


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""

