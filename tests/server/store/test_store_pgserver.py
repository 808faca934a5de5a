"""The PostgreSQL test server helper: a missing PostgreSQL skips, except under CI."""

from __future__ import annotations

import pytest

from tests import pgserver


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_postgres_skips_or_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(pgserver, "find_bindir", lambda: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="PostgreSQL 15 not found: install postgresql-15"):
        pgserver.PgServer.launch()


def test_outage_helpers(postgres: pgserver.PgServer) -> None:
    url = postgres.new_database()
    assert url.startswith("postgresql://postgres@/") and f"port={postgres.port}" in url
    postgres.stop()
    assert not (postgres.data / "postmaster.pid").exists()
    postgres.ensure_running()  # what new_database() does after a test left it stopped
    assert (postgres.data / "postmaster.pid").exists()
