"""Fixtures of the store tests: a fresh database URL per test on each backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pgserver import PgServer, postgres  # noqa: F401  (the session fixture)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of ``backend``: a SQLite file or a new PostgreSQL database."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'intellilog.db'}"
    server: PgServer = request.getfixturevalue("postgres")
    return server.new_database()
