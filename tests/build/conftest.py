"""Fixtures of the deployment tests: the throwaway PostgreSQL server (tests/pgserver.py)
that the entrypoint's database wait is tested against."""

from __future__ import annotations

from tests.pgserver import postgres  # noqa: F401  (the session fixture)
