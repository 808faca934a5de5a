"""Fixtures of the monitoring tests: the session's trained models (tests/e2e/servekit.py)
for the live-server test, and the throwaway PostgreSQL server for the runbooks' SQL."""

from __future__ import annotations

import pytest

from tests.e2e import servekit as kit
from tests.pgserver import postgres  # noqa: F401  (the session fixture)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Registries with v1 (production) and v2, and a reject-spec model; trained once."""
    return kit.models(tmp_path_factory.getbasetemp())
