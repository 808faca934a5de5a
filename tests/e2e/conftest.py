"""Fixtures of the end-to-end server tests: the session's models (see servekit.py)."""

from __future__ import annotations

import pytest

from tests.e2e import servekit as kit


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Registries with v1 (production) and v2, and a reject-spec model; trained once."""
    return kit.models(tmp_path_factory.getbasetemp())
