"""Faults a running ``intellilog serve`` meets, each with its stated behaviour
(docs/reliability.md holds the matrix these tests prove).

* a registry alias naming a missing or half-written version: start-up refuses in one
  line; while serving the reload is refused and the old model keeps serving;
* the served version's files deleted: the model in memory keeps answering, a restart
  refuses in one line;
* the compiled-forest cache damaged or unwritable: the server recompiles with a warning
  and answers exactly as a healthy cache would;
* SIGTERM under load: the request in flight is answered, every answered prediction is
  in the database, exit status 0;
* a worker killed: the other keeps answering, granian starts a new one, request totals
  never go backwards;
* the database stuck (a locked table): predictions do not wait for it, feedback is
  answered once it is durable, the rows arrive when the database moves again. The
  database down is tests/e2e/test_store_fault.py.

Every server is a real process (tests/e2e/servekit.py) stopped in a ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest

from tests.e2e import servekit as kit
from tests.pgserver import PgServer
from tests.pgserver import postgres as postgres

__all__: list[str] = []

pytestmark = pytest.mark.slow

FAST_RELOAD = {"RELOAD_INTERVAL_S": "0.2"}
ENGINE_FILES = ("eta.forest.npz", "p10.forest.npz", "p90.forest.npz")


@pytest.fixture
def registry(models: Any, tmp_path: Path) -> Path:
    """A copy of the session's v1 (production) / v2 registry that a test may break."""
    return kit.copy_registry(models.registry, tmp_path / "registry")


def point_alias(registry: Path, version: str) -> None:
    """Move production by editing aliases.json, as a hand edit or a half-finished copy
    would: no check that the version exists or is whole."""
    p = registry / "aliases.json"
    state = json.loads(p.read_text())
    state["aliases"]["production"] = version
    p.write_text(json.dumps(state))


def serve_once(registry: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``intellilog serve`` expected to refuse to start (a timeout fails the test)."""
    cwd.mkdir(parents=True, exist_ok=True)
    args = [str(kit.INTELLILOG), "serve", "--port", str(kit.free_port())]
    return subprocess.run(
        [*args, "--registry", str(registry)],
        cwd=cwd,
        env=kit.clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def predict(url: str, row: dict[str, Any]) -> dict[str, Any]:
    """One prediction on a new connection (any worker may answer); must be 200."""
    with httpx.Client(base_url=url, timeout=10.0) as c:
        r = c.post("/v1/predict", json=row)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def same_answer(got: dict[str, Any], want: dict[str, Any]) -> bool:
    """The same prediction, whatever the request id."""
    return {**got, "request_id": ""} == {**want, "request_id": ""}


def scrape(url: str, name: str, **labels: str) -> float:
    return kit.metric(httpx.get(url + "/metrics", timeout=10.0).text, name, **labels)


def assert_one_line_refusal(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode not in (0, None), res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr and "granian" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ---- 1. the alias names a missing or half-written version ------------------------------------


def _missing(registry: Path) -> None:
    point_alias(registry, "v9")


def _truncated(registry: Path) -> None:
    f = registry / "versions" / "v2" / "eta.onnx"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a copy cut short
    point_alias(registry, "v2")


def _file_missing(registry: Path) -> None:
    (registry / "versions" / "v2" / "p90.forest.npz").unlink()  # a copy not finished
    point_alias(registry, "v2")


@pytest.mark.parametrize(
    ("breaks", "needles"),
    [
        (_missing, ("v9", "is missing", "promote an existing version")),
        (_truncated, ("v2", "eta.onnx", "checksum mismatch")),
        (_file_missing, ("v2", "p90.forest.npz", "is missing")),
    ],
    ids=["missing-version", "checksum-mismatch", "missing-file"],
)
def test_start_refuses_a_broken_alias_in_one_line(
    registry: Path, tmp_path: Path, breaks: Callable[[Path], None], needles: tuple[str, ...]
) -> None:
    breaks(registry)
    assert_one_line_refusal(serve_once(registry, tmp_path / "cwd"), *needles)


def test_broken_alias_while_serving_is_refused_and_old_model_keeps_serving(
    registry: Path, tmp_path: Path
) -> None:
    """Also fault 2: the served version's files deleted while serving, then a restart."""
    row = kit.sample_rows(1, seed=81)[0]
    s = kit.ServerProcess(registry, tmp_path / "srv", env=FAST_RELOAD)
    try:
        s.wait_ready(60)
        first = predict(s.url, row)
        assert first["model_version"] == "v1"

        def refused(needle: str) -> dict[str, Any] | None:
            """/v1/models once its last reload error mentions ``needle``."""
            info: dict[str, Any] = httpx.get(s.url + "/v1/models", timeout=10.0).json()
            return info if needle in (info["last_reload_error"] or "") else None

        for n, (breaks, needle) in enumerate(
            [(_missing, "v9"), (_truncated, "checksum mismatch")], start=1
        ):
            breaks(registry)
            info = wait_until(partial(refused, needle), 20, f"the watcher to refuse {needle!r}")
            assert info["serving"]["version"] == "v1", info
            ready = httpx.get(s.url + "/health/ready", timeout=10.0)
            assert ready.status_code == 200 and ready.json()["model_version"] == "v1"
            assert same_answer(predict(s.url, row), first)
            failed = scrape(s.url, "intellilog_model_reloads_total", result="failed")
            assert failed == n and "model reload refused" in s.log

        # SIGHUP to granian's process replaces the workers: refused while the alias is broken
        s.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP refused" in s.log, 20, "the SIGHUP refusal")
        assert "respawning workers" not in s.log, s.log[-2000:]
        assert predict(s.url, row)["model_version"] == "v1"

        # fault 2: the alias back on v1, then v1's engine files deleted under the server
        point_alias(registry, "v1")
        time.sleep(1.0)  # several watcher cycles: v1 is served, so nothing to reload
        for name in ENGINE_FILES:
            (registry / "versions" / "v1" / name).unlink()
        for _ in range(3):  # answered from memory, the same answer as before
            assert same_answer(predict(s.url, row), first)
        assert s.terminate(30) == 0, s.log[-2000:]
    finally:
        s.stop()
    assert "Traceback" not in s.log, s.log
    # ... and the next start says which file is gone
    refusal = serve_once(registry, tmp_path / "again")
    assert_one_line_refusal(refusal, "v1", "eta.forest.npz", "is missing")


# ---- 3. the compiled-forest cache ------------------------------------------------------------


@pytest.fixture
def expected(models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Rows and their answers from the compiled engine loaded in this process, through a
    cache folder of its own that the load fills (the server's path: decode, row, model)."""
    from server.models import load_model
    from training.registry import Registry

    cache = tmp_path / "cache"
    monkeypatch.setenv("INTELLILOG_CACHE_DIR", str(cache))
    model = load_model(Registry(models.registry), "production", engine="compiled")
    rows = kit.sample_rows(8, seed=82)
    dec = msgspec.json.Decoder(model.pipe.spec.request_struct)
    answers = []
    for r in rows:
        X = model.pipe.row(dec.decode(json.dumps(r)), np.empty((1, model.pipe.n_features), "f4"))
        answers.append([float(v[0]) for v in model.predict(X)])
    assert len(list(cache.glob("forest-*.o"))) == 3
    return cache, rows, answers


def serve_and_compare(
    models: Any, workdir: Path, cache_dir: Path, rows: list[Any], answers: list[Any]
) -> str:
    """Start a server on ``cache_dir``, check every answer, stop it; its log."""
    s = kit.ServerProcess(models.registry, workdir, env={"INTELLILOG_CACHE_DIR": str(cache_dir)})
    try:
        s.wait_ready(60)
        for r, want in zip(rows, answers, strict=True):
            got = predict(s.url, r)
            assert [got["eta_minutes"], got["eta_p10"], got["eta_p90"]] == want, r
        assert s.terminate(30) == 0, s.log[-2000:]
    finally:
        s.stop()
    return s.log


def test_damaged_forest_cache_is_recompiled_with_a_warning(
    models: Any, expected: Any, tmp_path: Path
) -> None:
    from server.objcache import FileObjectCache

    cache, rows, answers = expected
    files = sorted(cache.glob("forest-*.o"))
    files[0].write_bytes(os.urandom(files[0].stat().st_size))  # garbage throughout
    for f in files[1:]:  # header intact, object code flipped: only the hash can tell
        data = bytearray(f.read_bytes())
        data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
        f.write_bytes(bytes(data))
    log = serve_and_compare(models, tmp_path / "srv", cache, rows, answers)
    for f in files:
        assert f"compiled-forest cache {f} is damaged: recompiling" in log, log
    assert "Traceback" not in log
    # the recompiled object code replaced the damaged files
    assert all(FileObjectCache(cache).get(f.stem.removeprefix("forest-")) for f in files)


def test_unwritable_forest_cache_compiles_in_memory_with_a_warning(
    models: Any, expected: Any, tmp_path: Path
) -> None:
    _, rows, answers = expected
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder's parent should be\n")
    log = serve_and_compare(models, tmp_path / "srv", blocker / "compiled", rows, answers)
    assert f"compiled-forest cache folder {blocker / 'compiled'} is not writable" in log, log
    assert "compiled in memory" in log and "Traceback" not in log


# ---- 4. SIGTERM under load -------------------------------------------------------------------


def sqlite_orders(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT order_id FROM predictions")]


def test_sigterm_under_load_answers_in_flight_and_flushes_the_log(
    models: Any, tmp_path: Path
) -> None:
    s = kit.ServerProcess(models.registry, tmp_path / "srv")
    rows = kit.sample_rows(400, seed=83)
    answered: list[str] = []
    failures: list[str] = []
    signalled = threading.Event()
    lock = threading.Lock()

    def load(k: int) -> None:
        """Batches of 20 rows until the server goes away."""
        with httpx.Client(base_url=s.url, timeout=30.0) as c:
            for i in range(0, 10_000, 20):
                part = [
                    {**r, "order_id": f"load{k}-{i + j}"}
                    for j, r in enumerate(rows[i % 380 :][:20])
                ]
                try:
                    res = c.post("/v1/predict/batch", json={"deliveries": part})
                except httpx.TransportError as e:
                    if not signalled.is_set():  # refused only once the server is stopping
                        failures.append(f"before SIGTERM: {e!r}")
                    return
                if res.status_code != 200:
                    failures.append(f"{res.status_code}: {res.text[:200]}")
                    return
                with lock:
                    answered.extend(p["order_id"] for p in res.json()["predictions"])

    slow_body = json.dumps(
        {"deliveries": [{**r, "order_id": f"slow-{i}"} for i, r in enumerate(rows[:100])]}
    )
    slow: dict[str, Any] = {}
    head_sent = threading.Event()

    def upload() -> Iterator[bytes]:
        yield slow_body[:100].encode()
        head_sent.set()  # asked for more: the headers and first bytes are on the socket
        wait_until(signalled.is_set, 30, "SIGTERM")
        time.sleep(0.5)  # the server is shutting down while this body still arrives
        yield slow_body[100:].encode()

    def in_flight() -> None:
        res = httpx.post(
            s.url + "/v1/predict/batch",
            content=upload(),
            headers={"content-type": "application/json"},
            timeout=30.0,
        )
        slow["status"] = res.status_code
        if res.status_code == 200:
            with lock:
                answered.extend(p["order_id"] for p in res.json()["predictions"])

    try:
        s.wait_ready(60)
        threads = [threading.Thread(target=load, args=(k,)) for k in range(3)]
        threads.append(threading.Thread(target=in_flight))
        for t in threads:
            t.start()
        assert head_sent.wait(30), "the slow upload never started"
        # then more answers to other connections: the server has taken the slow one
        seen = len(answered)
        wait_until(lambda: len(answered) >= max(200, seen + 100), 30, "load to be answered")
        s.proc.send_signal(signal.SIGTERM)
        signalled.set()
        for t in threads:
            t.join(60)
        rc = s.proc.wait(60)
    finally:
        s.stop()
    assert rc == 0, s.log[-3000:]
    assert failures == [], failures[:5]
    assert slow.get("status") == 200, (slow, s.log[-2000:])
    stored = sqlite_orders(tmp_path / "srv" / "intellilog.db")
    assert len(stored) == len(set(stored))  # none twice
    assert sorted(stored) == sorted(answered), (len(stored), len(answered))
    assert {f"slow-{i}" for i in range(100)} <= set(stored)


# ---- 5. a worker killed ----------------------------------------------------------------------


def worker_pids(main: int) -> set[int]:
    """Child processes of granian's main process (its workers; not the log writer)."""
    out: set[int] = set()
    for task in Path(f"/proc/{main}/task").iterdir():
        with open(task / "children") as f:
            out |= {int(p) for p in f.read().split()}
    return {p for p in out if b"server.store.relay" not in _cmdline(p)}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_killed_worker_is_replaced_and_totals_never_go_backwards(
    models: Any, tmp_path: Path
) -> None:
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to find granian's worker processes (Linux)")
    row = kit.sample_rows(1, seed=84)[0]
    s = kit.ServerProcess(models.registry, tmp_path, workers=2, env={"TMPDIR": str(tmp_path)})
    sent = 0
    totals: list[float] = []

    def predict_and_scrape(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            assert predict(s.url, row)["model_version"] == "v1"
            sent += 1
            totals.append(scrape(s.url, "intellilog_http_requests_total", route="/v1/predict"))

    try:
        s.wait_ready(60)
        before = wait_until(
            lambda: len(worker_pids(s.proc.pid)) == 2 and worker_pids(s.proc.pid), 30, "2 workers"
        )
        predict_and_scrape(12)
        time.sleep(0.5)  # the prediction logs are written (0.2 s flush)
        victim, survivor = sorted(before)
        os.kill(victim, signal.SIGKILL)
        predict_and_scrape(12)  # the survivor answers while granian replaces the victim
        after = wait_until(
            lambda: (p := worker_pids(s.proc.pid)) != before and len(p) == 2 and p, 60, "respawn"
        )
        assert survivor in after and victim not in after
        fresh = (after - {survivor}).pop()
        wait_until(
            lambda: f'pid="{fresh}"' in httpx.get(s.url + "/metrics", timeout=10.0).text,
            60,
            "the new worker to serve",
        )
        predict_and_scrape(12)
        assert s.proc.poll() is None
        assert "Respawning worker" in s.log and "Traceback" not in s.log
    finally:
        s.stop()
    # every scrape counts every earlier answer (the killed worker's included): the totals
    # never go backwards and end on exactly what was answered
    assert totals == sorted(totals) and totals[-1] == sent == 36, totals


def test_metrics_scrape_skips_the_empty_file_of_a_worker_killed_at_birth(tmp_path: Path) -> None:
    """A worker's metrics file exists empty for a moment before it is sized; a scrape then,
    or a file left so by a worker killed then, must not fail the whole scrape."""
    import sys

    (tmp_path / "counter_4242.db").write_bytes(b"")
    code = (
        "import sys; from server import metrics; "
        "metrics.MODEL_RELOADS.labels('ok').inc(3); sys.stdout.write(metrics.render().decode())"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=kit.ROOT,
        env=kit.clean_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert kit.metric(res.stdout, "intellilog_model_reloads_total", result="ok") == 3


# ---- 6. the database stuck -------------------------------------------------------------------


class TableLock:
    """``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` held by a transaction on its own thread
    until :meth:`release`: every write to the table waits, as on a stuck database."""

    def __init__(self, url: str, table: str) -> None:
        self._release = threading.Event()
        self._locked = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._hold(url, table),))
        self._thread.start()
        assert self._locked.wait(30), "could not lock the table"

    async def _hold(self, url: str, table: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                self._locked.set()
                while not self._release.is_set():
                    await asyncio.sleep(0.02)
        finally:
            await conn.close()

    def release(self) -> None:
        self._release.set()
        self._thread.join(30)


def pg_fetch(url: str, sql: str) -> Any:
    import asyncpg

    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_stuck_database_does_not_hold_predictions_and_feedback_waits_until_durable(
    models: Any, postgres: PgServer, tmp_path: Path
) -> None:
    """Then the database down with a spool that cannot be written: feedback is a 503
    (with a spool it is a 202 ``spooled``: tests/e2e/test_store_fault.py)."""
    url = postgres.new_database()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the spool's folder should be\n")
    spool = blocker / "log.spool"
    s = kit.ServerProcess(
        models.registry, tmp_path / "srv", env={"DATABASE_URL": url, "SPOOL_PATH": str(spool)}
    )
    rows = kit.sample_rows(60, seed=85)
    lock: TableLock | None = None
    feedback: dict[str, Any] = {}
    try:
        s.wait_ready(60)
        predict(s.url, rows[0])
        wait_until(lambda: pg_fetch(url, "SELECT count(*) FROM predictions") == 1, 20, "row 1")
        lock = TableLock(url, "prediction_batches")
        latencies = []
        with httpx.Client(base_url=s.url, timeout=10.0) as c:
            t0 = time.perf_counter()
            assert c.post("/v1/predict", json=rows[1]).status_code == 200
            latencies.append(time.perf_counter() - t0)
            # the server's writer is now blocked on the lock
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            wait_until(lambda: pg_fetch(url, waiting) >= 1, 20, "the log writer to block")
            for r in rows[2:]:
                t0 = time.perf_counter()
                assert c.post("/v1/predict", json=r).status_code == 200
                latencies.append(time.perf_counter() - t0)
        # all answered while the writer is still stuck: none waited for the store
        assert pg_fetch(url, waiting) >= 1
        ready = httpx.get(s.url + "/health/ready", timeout=10.0).json()
        assert ready["ready"] is True, ready

        def send_feedback() -> None:
            fb = {
                "order_id": rows[5]["order_id"],
                "actual_minutes": 30.0,
                "completed_at": time.time(),
            }
            res = httpx.post(s.url + "/v1/feedback", json=fb, timeout=60.0)
            feedback.update(status=res.status_code, body=res.json(), at=time.monotonic())

        sender = threading.Thread(target=send_feedback)
        sender.start()
        time.sleep(1.5)
        assert not feedback, f"feedback answered while nothing could store it: {feedback}"
        released = time.monotonic()
        lock.release()
        lock = None
        sender.join(60)
        assert feedback["status"] == 202 and feedback["at"] >= released, feedback
        assert feedback["body"]["inserted"] == 1 and feedback["body"]["spooled"] == 0, feedback
        wait_until(
            lambda: pg_fetch(url, "SELECT count(*) FROM predictions") == len(rows), 20, "rows"
        )
        assert pg_fetch(url, "SELECT count(*) FROM feedback") == 1

        postgres.stop()  # down, and the spool cannot take the rows either
        try:
            fb = {
                "order_id": rows[6]["order_id"],
                "actual_minutes": 31.0,
                "completed_at": time.time(),
            }
            res = httpx.post(s.url + "/v1/feedback", json=fb, timeout=60.0)
        finally:
            postgres.start()
        assert res.status_code == 503, res.text
        err = res.json()["error"]
        assert err["code"] == "store_unavailable" and str(spool) in err["message"], err
        assert "feedback not stored" in err["message"]
        assert s.terminate(30) == 0, s.log[-2000:]
    finally:
        if lock is not None:
            lock.release()
        s.stop()
        postgres.ensure_running()
    lat = sorted(latencies)
    print(
        f"predict latency while stuck: median {lat[len(lat) // 2] * 1e3:.1f} ms, max {lat[-1] * 1e3:.1f} ms"
    )


# ---- the matrix ------------------------------------------------------------------------------


def test_reliability_matrix_names_real_tests_and_commands() -> None:
    """docs/reliability.md: every test it cites exists, every ``intellilog`` command parses."""
    import re

    from server.cli import build_parser

    doc = (kit.ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    sources = "".join(
        (kit.ROOT / "tests" / p).read_text(encoding="utf-8")
        for p in (
            "e2e/test_faults.py",
            "e2e/test_store_fault.py",
            "e2e/test_log_writer.py",
            "server/test_app.py",
            "server/store/test_store_relay.py",
        )
    )
    files = {"test_faults", "test_store_fault", "test_app", "test_log_writer", "test_store_relay"}
    cited = set(re.findall(r"\b(test_\w+)", doc)) - files
    assert len(cited) >= 8, cited
    for name in sorted(cited):
        assert f"def {name}(" in sources, f"docs/reliability.md cites {name}, which is not a test"
    commands = re.findall(r"`(intellilog [^`]+)`", doc)
    assert commands
    for line in commands:
        try:
            build_parser().parse_args(line.split()[1:])
        except SystemExit:
            pytest.fail(f"docs/reliability.md: {line!r} does not parse")
