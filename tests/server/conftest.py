"""Fixtures of the in-process server tests: the session's models and app clients.

The models come from tests/e2e/servekit.py (loaded once, shared with tests/e2e), so a
session that runs both directories trains them once.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import servekit as kit
from tests.pgserver import postgres  # noqa: F401  (the session fixture)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Registries with v1 (production) and v2, and a reject-spec model; trained once."""
    return kit.models(tmp_path_factory.getbasetemp())


@pytest.fixture
def registry(models: Any, tmp_path: Path) -> Path:
    """A private copy of the v1/v2 registry (production -> v1) that a test may change."""
    dst = tmp_path / "registry"
    shutil.copytree(models.registry, dst)
    return dst


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``make_client(registry, **settings)``: a started TestClient over ``create_app``.

    Server exceptions become responses (``raise_server_exceptions=False``), so a crash
    shows up as the 500 a real client would see. The alias watcher polls every hour
    unless ``reload_interval_s`` is given. Each client gets its own SQLite database (and
    spool) under ``tmp_path`` unless ``database_url`` is given. Every client is closed
    (lifespan shutdown) at teardown.
    """
    from litestar.testing import TestClient

    from server.app import create_app
    from server.config import Settings

    opened: list[Any] = []

    def make(registry: Path, **settings: Any) -> Any:
        kw: dict[str, Any] = {
            "reload_interval_s": 3600.0,
            "log_level": "WARNING",
            "database_url": f"sqlite:///{tmp_path / f'db{len(opened)}' / 'intellilog.db'}",
        }
        kw.update(settings)
        app = create_app(Settings(model_artifact_path=str(registry), **kw))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for c in reversed(opened):
        c.__exit__(None, None, None)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A simulated GPU (tests/server/fakegpu.py): ``load_gpu_engines`` returns the
    numba engines dressed as hummingbird on CUDA, recording what they are given."""
    from tests.server.fakegpu import FakeGpu

    return FakeGpu().install(monkeypatch)
