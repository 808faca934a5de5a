"""Fixtures of the end-to-end server tests: the session's models (see servekit.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def load_servekit() -> ModuleType:
    """tests/e2e/servekit.py as one module, shared with tests/server/conftest.py."""
    name = "intellilog_servekit"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("servekit.py"))
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


kit = load_servekit()


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Registries with v1 (production) and v2, and a reject-spec model; trained once."""
    return kit.models(tmp_path_factory.getbasetemp())
