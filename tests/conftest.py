"""Shared fixtures: an in-process CLI runner, generated data and one tiny trained model.

The expensive things (a generated training file, a model trained and promoted into a
registry) are made once per session under ``tmp_path_factory`` and reused; tests that
change a registry work on a copy (:func:`registry_copy`). Nothing is written into the
repository folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

#: The repository root (tests never write below it).
ROOT = Path(__file__).resolve().parents[1]

# To import this file pytest puts tests/ first on sys.path; tests/kernels, tests/training
# and tests/server would then shadow the real packages (as empty namespace packages, e.g.
# "cannot import name '__version__' from 'training' (unknown location)"). The project root
# goes first instead.
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))

# A shared 2-core machine: OpenMP worker threads (LightGBM's default) spin against other
# processes and make a 60-round model take seconds instead of ~0.1 s. Must be set before
# LightGBM / libgomp are loaded; an explicit setting in the environment wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Property tests call numba kernels whose first call compiles (or loads the on-disk cache)
# inside the first example; Hypothesis's default 200 ms deadline then fails a correct
# test on a busy machine. Correctness is what these tests check; speed is gated in bench/.
settings.register_profile("intellilog", deadline=None)
settings.load_profile("intellilog")

#: Settings that could leak in from a developer's shell and change CLI behaviour.
CLI_ENV_VARS = (
    "INTELLILOG_DEBUG",
    "MODEL_ARTIFACT_PATH",
    "INTELLILOG_ENGINE",
    "INTELLILOG_ALLOW_GPU",
    "QUALITY_THRESHOLD",
    "ENVIRONMENT",
    "TENANT_ID",
    "DATABASE_URL",
    "LOG_LEVEL",
)

#: Training settings small enough for a 2-core machine (a few seconds per model).
TINY_TRAIN = ("--max-rounds", "60", "--num-leaves", "15", "--seed", "0")
TRAIN_ROWS = 3000
TRAIN_SEED = 1


@dataclass
class CliResult:
    """Exit code and captured output of one in-process ``intellilog`` run."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()

    def json(self) -> Any:
        return json.loads(self.out)


def isolate_cli_env(mp: pytest.MonkeyPatch, workdir: Path) -> None:
    """Clear settings from the caller's environment and run in ``workdir``.

    Running in an empty folder keeps a developer's ``.env`` (read from the current
    folder) out of the tests and makes sure relative paths never land in the repository.
    """
    for var in CLI_ENV_VARS:
        mp.delenv(var, raising=False)
    mp.chdir(workdir)


def run_main(*args: str | Path) -> int:
    from server.cli import main

    return main([str(a) for a in args])


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., CliResult]:
    """``cli("score", IN, "--out", OUT)``: run ``server.cli.main`` in-process.

    Returns the exit code with what the run printed to stdout and stderr. Runs in an
    empty working folder with the product's settings cleared from the environment.
    """
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    isolate_cli_env(monkeypatch, workdir)

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()  # drop anything printed before this run
        code = run_main(*args)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@contextlib.contextmanager
def _session_cli(workdir: Path) -> Iterator[io.StringIO]:
    """Isolated environment for session fixtures; yields the captured stderr."""
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        isolate_cli_env(mp, workdir)
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
            yield buf


@pytest.fixture(scope="session")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated, clean training file (3000 rows, seed 1), written once."""
    folder = tmp_path_factory.mktemp("data")
    path = folder / "train.parquet"
    with _session_cli(folder) as err:
        code = run_main("generate", "--rows", TRAIN_ROWS, "--seed", TRAIN_SEED, "--out", path)
    assert code == 0, err.getvalue()
    return path


@dataclass
class TrainedModel:
    """The session's model: registry folder, its training file, log and manifest."""

    registry: Path
    data: Path
    log: str  # what ``train`` printed on stderr
    result: dict[str, Any]  # ``train --json`` output: version and metrics
    manifest: dict[str, Any]


@pytest.fixture(scope="session")
def trained(train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A tiny model trained on :func:`train_data` and promoted to production, once.

    Read-only for tests: use :func:`registry_copy` to change a registry.
    """
    root = tmp_path_factory.mktemp("trained")
    registry = root / "registry"
    out = io.StringIO()
    with _session_cli(root) as err, contextlib.redirect_stdout(out):
        code = run_main(
            "train",
            "--data",
            train_data,
            "--registry",
            registry,
            "--promote",
            "--json",
            *TINY_TRAIN,
        )
    assert code == 0, err.getvalue()
    manifest = json.loads((registry / "versions" / "v1" / "manifest.json").read_text())
    return TrainedModel(registry, train_data, err.getvalue(), json.loads(out.getvalue()), manifest)


@pytest.fixture
def registry_copy(trained: TrainedModel, tmp_path: Path) -> Path:
    """A private copy of the session registry (v1, promoted to production)."""
    dst = tmp_path / "registry"
    shutil.copytree(trained.registry, dst)
    return dst


@pytest.fixture(scope="session", autouse=True)
def compiled_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The compiled engine's object cache (``INTELLILOG_CACHE_DIR``) in a session folder:
    tests never write to ``~/.cache``; servers and CLI runs started by tests inherit it."""
    folder = tmp_path_factory.mktemp("compiled-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INTELLILOG_CACHE_DIR", str(folder))
        yield folder
