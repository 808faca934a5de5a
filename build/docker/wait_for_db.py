"""Wait until the PostgreSQL server of ``DATABASE_URL`` accepts a connection.

Run by entrypoint.sh before the server (or a job) starts, so that a container started
beside its database waits for it instead of starting in spool mode. Bounded: after
``--timeout`` seconds it exits 1 with one line naming the host (never the password).
A refusal that waiting cannot cure (wrong password, unknown database or role) exits 1
at once. Exit 0 as soon as one connection succeeds (a database still starting up, or
refusing TCP connections, is retried every ``--interval`` seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from urllib.parse import parse_qs, urlsplit

__all__ = ["describe", "main", "wait"]


def describe(url: str) -> str:
    """``host:port/database`` of ``url``: what the messages name (no user, no password)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or query.get("host", ["localhost"])[0]
    port = parts.port or query.get("port", ["5432"])[0]
    db = parts.path.lstrip("/") or "(default database)"
    return f"{host}:{port}/{db}"


async def _try(url: str, timeout: float) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=timeout)
    await conn.close()


def _fatal(exc: BaseException) -> bool:
    """Errors that another try will not cure: credentials, unknown database or role."""
    import asyncpg

    return isinstance(
        exc,
        asyncpg.InvalidPasswordError
        | asyncpg.InvalidAuthorizationSpecificationError
        | asyncpg.InvalidCatalogNameError,
    )


def wait(url: str, timeout: float, interval: float) -> int:
    """0 once the database answers; 1 (one line on stderr) when it does not in time."""
    where = describe(url)
    t0 = time.monotonic()
    deadline = t0 + timeout
    said = False
    last = "no attempt"
    while True:
        try:
            asyncio.run(_try(url, timeout=max(1.0, min(5.0, deadline - time.monotonic()))))
        except Exception as exc:
            last = f"{type(exc).__name__}: {exc}".strip()
            if _fatal(exc):
                print(
                    f"error: PostgreSQL at {where} refused the connection: {last}", file=sys.stderr
                )
                return 1
        else:
            if said:
                print(
                    f"PostgreSQL at {where} answered after {time.monotonic() - t0:.1f} s",
                    file=sys.stderr,
                )
            return 0
        if time.monotonic() + interval > deadline:
            print(
                f"error: PostgreSQL at {where} did not accept a connection within {timeout:g} s "
                f"(DATABASE_WAIT_S; last error {last}); check that it is running and reachable",
                file=sys.stderr,
            )
            return 1
        if not said:
            print(f"waiting up to {timeout:g} s for PostgreSQL at {where} ...", file=sys.stderr)
            said = True
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait in all")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between tries")
    args = p.parse_args(argv)
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgresql://", "postgres://")):
        print(
            "error: DATABASE_URL is not a postgresql:// URL: nothing to wait for", file=sys.stderr
        )
        return 2
    return wait(url, args.timeout, args.interval)


if __name__ == "__main__":
    sys.exit(main())
