"""A throwaway PostgreSQL server for tests, started by the tests themselves.

Use it from any test folder by importing the session fixture into that folder's
``conftest.py``::

    from tests.pgserver import postgres  # noqa: F401  (the session fixture)

and then ``postgres.new_database()`` for a fresh database URL (asyncpg DSN) per test,
``postgres.stop()`` / ``postgres.start()`` to simulate an outage (a real
``pg_ctl stop -m fast``). Or, outside pytest fixtures, ``PgServer.launch()`` and
``server.destroy()``.

The server runs from a fresh ``initdb`` in a private folder under the system temp
folder, listening on a free 127.0.0.1 port and on a unix socket in that folder, with
``fsync=off`` (speed; the data is thrown away). ``initdb`` refuses to run as root, so as
root it runs as the ``postgres`` user (``runuser``). Binaries are looked up with
``INTELLILOG_PG_BINDIR``, ``pg_config --bindir``, ``/usr/lib/postgresql/15/bin`` and
``PATH``. When none is found the tests are skipped, except with ``CI=true``, where a
missing PostgreSQL fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PG_MISSING", "PgServer", "find_bindir", "postgres", "skip_or_fail"]

PG_MISSING = (
    "PostgreSQL 15 not found: install postgresql-15 (e.g. apt-get install postgresql-15) "
    "or set INTELLILOG_PG_BINDIR to the folder holding initdb and pg_ctl"
)


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it when ``CI=true`` (CI must run the PostgreSQL tests)."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} (CI=true: the PostgreSQL tests may not be skipped)")
    pytest.skip(reason)


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None."""
    candidates: list[str] = []
    if os.environ.get("INTELLILOG_PG_BINDIR"):
        candidates.append(os.environ["INTELLILOG_PG_BINDIR"])
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())
    candidates.append("/usr/lib/postgresql/15/bin")
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).resolve().parent))
    for c in candidates:
        d = Path(c)
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in ``root`` (data in ``root/data``, socket in ``root``)."""

    def __init__(self, bindir: Path, root: Path, port: int, run_as: str | None) -> None:
        self.bindir = bindir
        self.root = root
        self.port = port
        self.run_as = run_as
        self.data = root / "data"
        self.logfile = root / "server.log"
        self._names = itertools.count(1)

    @classmethod
    def launch(cls) -> PgServer:
        """initdb + start; skips (fails with CI=true) when PostgreSQL is missing."""
        bindir = find_bindir()
        if bindir is None:
            skip_or_fail(PG_MISSING)
            raise AssertionError("unreachable")
        run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                skip_or_fail("initdb refuses to run as root and there is no 'postgres' user")
                raise AssertionError("unreachable") from None
            run_as = "postgres"
        root = Path(tempfile.mkdtemp(prefix="intellilog-pg-"))
        if run_as is not None:
            os.chown(root, pw.pw_uid, pw.pw_gid)
        server = cls(bindir, root, _free_port(), run_as)
        try:
            server._pg(
                "initdb",
                "-D",
                str(server.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            )
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server

    def _pg(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.run_as is not None:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            raise RuntimeError(
                f"{tool} failed ({out.returncode}): {out.stderr.strip()}\n"
                f"{out.stdout.strip()}\n{log}"
            )

    def start(self) -> None:
        """Start (or restart after :meth:`stop`) and wait until it accepts connections."""
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c fsync=off "
            "-c full_page_writes=off -c max_connections=60"
        )
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "30",
            "-o",
            opts,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: clients are disconnected, the server is gone."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def ensure_running(self) -> None:
        """Start the server again if a test stopped it and did not restart it."""
        if not (self.data / "postmaster.pid").exists():
            self.start()

    def destroy(self) -> None:
        """Stop the server (if running) and delete its folder."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """An asyncpg DSN for ``database`` over the unix socket."""
        return f"postgresql://postgres@/{database}?host={self.root}&port={self.port}"

    def new_database(self) -> str:
        """Create a fresh, empty database; returns its URL."""
        import asyncpg

        self.ensure_running()
        name = f"t{os.getpid()}_{next(self._names)}"

        async def create() -> None:
            conn = await asyncpg.connect(self.url())
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole session (see the module docstring)."""
    server = PgServer.launch()
    try:
        yield server
    finally:
        server.destroy()
