"""Helpers shared by the server tests (tests/server) and the end-to-end tests (tests/e2e).

Not a test module and not a conftest: both ``tests/e2e/conftest.py`` and
``tests/server/conftest.py`` load it (see :func:`load` there) so that the models are
trained once per session, whichever directory asks first.

* :func:`models` trains, once per session, a registry with ``v1`` (production) and ``v2``
  (same spec, other data, not promoted) and a second registry whose model was trained
  with a spec that rejects unknown ``vehicle_type`` values.
* :func:`sample_rows` gives realistic request bodies (the generator's rows without the
  target).
* :class:`ServerProcess` runs ``intellilog serve`` as a real process and always stops it.
* :func:`metric` reads one sample out of a Prometheus exposition text.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INTELLILOG = BIN / "intellilog"

#: Product settings (server/config.py) and process settings that must not leak into the
#: servers and CLI runs the tests start.
ENV_VARS = (
    "GRPC_PORT",
    "GRPC_HOST",
    "TRUSTED_PROXIES",
    "ENVIRONMENT",
    "TENANT_ID",
    "DATABASE_URL",
    "MODEL_ARTIFACT_PATH",
    "INTELLILOG_ENGINE",
    "INTELLILOG_ALLOW_GPU",
    "ENABLE_DRIFT_DETECTION",
    "ENABLE_AB_TESTING",
    "QUALITY_THRESHOLD",
    "LOG_LEVEL",
    "MODEL_ALIAS",
    "ADMIN_TOKEN",
    "RATE_LIMIT_PER_MINUTE",
    "MAX_BATCH_SIZE",
    "MAX_BODY_MB",
    "RELOAD_INTERVAL_S",
    "PROMETHEUS_MULTIPROC_DIR",
    "INTELLILOG_DEBUG",
    "PREDICTION_LOG",
    "PREDICTION_LOG_WRITER",
    "INTELLILOG_LOG_RELAY",
)

#: One valid /v1/predict body for the default spec (the server tests' reference row).
ROW: dict[str, Any] = {
    "order_id": "o-1",
    "pickup_lat": 52.5003,
    "pickup_lon": 13.4100,
    "dropoff_lat": 52.5205,
    "dropoff_lon": 13.4502,
    "created_at": "2025-06-03T12:30:00+02:00",
    "vehicle_type": "bike",
    "weather": "clear",
    "zone": "Mitte",
    "items_count": 3,
    "prep_minutes": 12.5,
}

TRAIN_ROWS = 3000
#: The vehicle_type line of kernels/deliveries.toml and its "reject unknown levels" twin.
VEHICLE_LINE = 'vehicle_type = ["bike", "scooter", "car", "van"]'
VEHICLE_REJECT = 'vehicle_type = { levels = ["bike", "scooter", "car", "van"], unknown = "reject" }'


@dataclass(frozen=True)
class Models:
    """Read-only session artifacts: copy a registry (:func:`copy_registry`) to change it."""

    registry: Path  # v1 -> production, v2 registered (other training data), not promoted
    reject_registry: Path  # v1 -> production, trained with ``unknown = "reject"`` for vehicles
    reject_spec: Path
    data: Path  # the v1 training file


def _train(data: Path, registry: Path, spec_path: Path | None, promote: bool) -> str:
    """Train a tiny model in-process; returns its version.

    Calls ``train_job`` directly with its own ``out`` stream: the CLI path writes to the
    ``sys.stderr`` bound when training.job was first imported, which may be a closed
    capture stream by now (see tests/conftest.py, ``stderr_at_call_time``).
    """
    from kernels.spec import load_spec
    from server.models import served_check
    from training.job import train_job
    from training.registry import Registry
    from training.train import TrainSettings

    out = io.StringIO()
    reg = Registry(registry)
    res = train_job(
        data,
        load_spec(spec_path),
        reg,
        TrainSettings(max_rounds=60, num_leaves=15, seed=0),
        promote=promote,
        out=out,
        served_check=served_check(reg),
    )
    assert res.version is not None, out.getvalue()
    return res.version


_CACHE: dict[Path, Models] = {}


def models(base: Path) -> Models:
    """The session's models under ``base`` (the pytest base temp), trained on first use."""
    base = base / "intellilog-server-models"
    if base in _CACHE:
        return _CACHE[base]
    from training.io import write_table
    from training.synth import generate

    if base.exists():  # a half-built folder from an earlier failure in this session
        shutil.rmtree(base)
    base.mkdir(parents=True)
    d1, d2 = base / "d1.parquet", base / "d2.parquet"
    write_table(generate(TRAIN_ROWS, seed=1), d1)
    write_table(generate(TRAIN_ROWS, seed=2), d2)
    reg = base / "registry"
    assert _train(d1, reg, None, promote=True) == "v1"
    assert _train(d2, reg, None, promote=False) == "v2"

    text = (ROOT / "kernels" / "deliveries.toml").read_text(encoding="utf-8")
    assert VEHICLE_LINE in text, "kernels/deliveries.toml changed: update VEHICLE_LINE"
    spec = base / "reject.toml"
    spec.write_text(text.replace(VEHICLE_LINE, VEHICLE_REJECT), encoding="utf-8")
    rreg = base / "reject-registry"
    assert _train(d1, rreg, spec, promote=True) == "v1"

    m = Models(reg, rreg, spec, d1)
    _CACHE[base] = m
    return m


def copy_registry(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def sample_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` generated deliveries as request bodies (no target column), unique order ids."""
    from training.synth import generate

    rows = generate(n, seed=seed).drop_columns(["actual_minutes"]).to_pylist()
    for i, r in enumerate(rows):
        r["order_id"] = f"s{seed}-{i}"
    return rows


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without the product's settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class ServerProcess:
    """``intellilog serve`` in a subprocess on a free port; :meth:`stop` always ends it.

    Output goes to a log file (a pipe could fill up and block the server); :attr:`log`
    reads it back for assertion messages.
    """

    def __init__(
        self,
        registry: Path,
        workdir: Path,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"serve-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        args = [str(INTELLILOG), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--workers", str(workers), "--registry", str(registry)]
        self.proc = subprocess.Popen(
            args,
            cwd=workdir,  # no .env from the repository
            env=clean_env(**(env or {})),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() can end every worker
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"server exited with {self.proc.returncode} before it was ready:\n{self.log}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if c.get("/health/ready").status_code == 200:
                        return
                time.sleep(0.1)
        raise AssertionError(f"server not ready within {timeout} s:\n{self.log}")

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the server; its exit code, or None if it did not exit within ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """End the server and every process of its group, whatever state it is in."""
        try:
            if self.proc.poll() is None and self.terminate(10.0) is None:
                # still running, so its process group (workers included) is still ours
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10.0)
        finally:
            self._log.close()
