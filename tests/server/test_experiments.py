"""Experiments: sticky assignment, the service over a real store and registry, routing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kernels.errors import ConfigError
from server.experiments import service
from server.experiments.assign import assign, assign_many, unit_hash
from server.experiments.router import Router
from server.holder import ModelHolder
from server.store import Store, open_store
from training.registry import Registry


def test_assignment_is_sticky_and_holds_the_split() -> None:
    ids = [f"order-{i}" for i in range(100_000)]
    for split in (0.1, 0.5, 0.9):
        share = assign_many("exp-a", ids, split).mean()
        assert abs(share - split) < 0.01, (split, share)
    first = assign_many("exp-a", ids, 0.5)
    assert np.array_equal(first, assign_many("exp-a", ids, 0.5))  # same order, same arm
    assert all(assign("exp-a", o, 0.5) == bool(f) for o, f in zip(ids[:1000], first, strict=False))
    # another experiment reshuffles: about half the orders change arm
    other = assign_many("exp-b", ids, 0.5)
    assert 0.48 < float((first != other).mean()) < 0.52
    # a larger split only adds orders to the candidate (monotone in split)
    assert not np.any(first & ~assign_many("exp-a", ids, 0.6))
    assert assign("exp-a", None, 0.99) is False  # no order id: baseline
    assert 0.0 <= unit_hash("e", "o") < 1.0


def _run(url: str, body: Any) -> Any:
    async def go() -> Any:
        async with await open_store(url) as store:
            return await body(store)

    return asyncio.run(go())


def test_start_stop_and_one_running_experiment(registry: Path, tmp_path: Path) -> None:
    reg = Registry(registry)
    url = f"sqlite:///{tmp_path / 'e.db'}"

    async def body(store: Store) -> Any:
        exp = await service.start(
            store, reg, "t1", service.StartOptions(candidate="v2", mode="ab", split=0.3), by="ann"
        )
        assert exp.baseline_version == "v1" and exp.candidate_version == "v2"
        assert exp.split == 0.3 and exp.status == "running"
        assert reg.aliases()["candidate"] == "v2"
        assert reg.history("candidate")[-1]["by"] == "ann"
        with pytest.raises(ConfigError, match=f"experiment {exp.experiment_id} is running"):
            await service.start(store, reg, "t1", service.StartOptions(candidate="v2"), by="bob")
        assert (await service.running(store, "t1")) == exp
        assert (await service.find(store, "t1", None)) == exp
        stopped = await service.stop(store, reg, "t1", None, by="bob", reason="wrong split")
        assert stopped.status == "stopped" and stopped.reason == "wrong split"
        assert "candidate" not in reg.aliases()
        assert await service.running(store, "t1") is None
        with pytest.raises(ConfigError, match="not running"):
            await service.stop(store, reg, "t1", exp.experiment_id, by="bob")
        with pytest.raises(ConfigError, match="unknown experiment 'nope'"):
            await service.find(store, "t1", "nope")
        # shadow mode stores no split: every request is scored by both
        sh = await service.start(store, reg, "t1", service.StartOptions(candidate="v2"), by="c")
        assert sh.mode == "shadow" and sh.split == 0.0
        return [e.experiment_id for e in await store.experiments("t1")]

    ids = _run(url, body)
    assert len(ids) == 2 and ids[1].startswith("exp-")


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"candidate": "v1"}, "candidate: v1 is the production version already"),
        ({"candidate": "v9"}, "unknown model 'v9'"),
        ({"candidate": "v2", "mode": "abc"}, "mode: must be one of ab, shadow"),
        ({"candidate": "v2", "split": 1.0}, "split: must be between 0 and 1"),
        ({"candidate": "v2", "hours": 0.0}, "hours: must be > 0"),
        ({"candidate": "v2", "mde": 0.0}, "mde: must be between 0 and 1"),
    ],
)
def test_start_refuses_bad_options(
    registry: Path, tmp_path: Path, opts: dict[str, Any], message: str
) -> None:
    reg = Registry(registry)

    async def body(store: Store) -> None:
        with pytest.raises(Exception, match=message):
            await service.start(store, reg, "t1", service.StartOptions(**opts), by="x")
        assert await store.experiments("t1") == []

    _run(f"sqlite:///{tmp_path / 'e.db'}", body)
    assert "candidate" not in reg.aliases()


def test_router_follows_the_running_experiment(registry: Path, tmp_path: Path) -> None:
    reg = Registry(registry)
    holder = ModelHolder(reg, "production", "numba")
    holder.load_initial()
    router = Router(holder, "t1")

    async def body(store: Store) -> list[Any]:
        seen: list[Any] = []
        await router.refresh(store)
        seen.append(router.route)
        exp = await service.start(
            store, reg, "t1", service.StartOptions(candidate="v2", mode="ab"), by="x"
        )
        await router.refresh(store)
        route = router.route
        assert route is not None
        seen.append((route.experiment.experiment_id == exp.experiment_id, route.candidate.version))
        assert not route.shadow
        await service.stop(store, reg, "t1", None, by="x")
        await router.refresh(store)
        seen.append(router.route)
        return seen

    seen = _run(f"sqlite:///{tmp_path / 'e.db'}", body)
    assert seen == [None, (True, "v2"), None]
    assert holder.model is not None and holder.model.version == "v1"  # production untouched


def test_router_refuses_a_broken_candidate(registry: Path, tmp_path: Path) -> None:
    reg = Registry(registry)
    holder = ModelHolder(reg, "production", "numba")
    holder.load_initial()
    router = Router(holder, "t1")

    async def body(store: Store) -> None:
        await service.start(store, reg, "t1", service.StartOptions(candidate="v2"), by="x")
        # the candidate's files are damaged after the experiment started
        (reg.path("v2") / "eta.txt").write_text("garbage")
        await router.refresh(store)
        assert router.route is None  # every order stays with production
        assert router.last_error is not None and "v2" in router.last_error

    _run(f"sqlite:///{tmp_path / 'e.db'}", body)


def _log_arms(
    exp: Any, n: int, *, cand_scale: float, seed: int, shadow: bool = False
) -> tuple[list[Any], list[Any]]:
    """Predictions of an experiment's arms with feedback: candidate errors are
    ``cand_scale`` times the baseline's on the same delivery."""
    from server.store import FeedbackRow, PredictionRow

    rng = np.random.default_rng(seed)
    actual = rng.gamma(6.0, 35.0 / 6.0, size=n)
    err = 0.2 * actual * rng.standard_normal(n)
    t0 = exp.started_at + 10.0
    preds: list[PredictionRow] = []
    in_cand = assign_many(exp.experiment_id, [f"o{i}" for i in range(n)], exp.split)

    def row(i: int, arm: str, version: str, eta: float) -> PredictionRow:
        return PredictionRow(
            row_id=f"{arm}-{i}:0",
            request_id=f"{arm}-{i}",
            order_id=f"o{i}",
            tenant="t1",
            model_version=version,
            arm=arm,
            inputs="{}",
            features=b"\0\0\0\0",
            eta=eta,
            p10=eta - 5,
            p90=eta + 5,
            created_at=t0 + i,
        )

    for i in range(n):
        base = float(actual[i] + err[i])
        cand = float(actual[i] + cand_scale * err[i])
        if shadow:
            preds.append(row(i, "baseline", exp.baseline_version, base))
            preds.append(row(i, "shadow", exp.candidate_version, cand))
        elif in_cand[i]:
            preds.append(row(i, "candidate", exp.candidate_version, cand))
        else:
            preds.append(row(i, "baseline", exp.baseline_version, base))
    fb = [
        FeedbackRow(
            order_id=f"o{i}",
            tenant="t1",
            actual_minutes=float(actual[i]),
            completed_at=t0 + i + 600,
            received_at=t0 + i + 700,
        )
        for i in range(n)
    ]
    return preds, fb


@pytest.mark.parametrize("mode", ["shadow", "ab"])
def test_analyze_conclude_promote_then_rollback(registry: Path, tmp_path: Path, mode: str) -> None:
    reg = Registry(registry)
    now = 1_750_000_000.0

    async def body(store: Store) -> Any:
        opts = service.StartOptions(candidate="v2", mode=mode, split=0.5, sequential=False)
        exp = await service.start(store, reg, "t1", opts, by="ann", now=now)
        # too early: nothing to decide, and conclude refuses to guess
        early = await service.analyze(store, reg, exp, now=now + 60)
        assert early.recommendation == "continue_testing"
        with pytest.raises(ConfigError, match="continue_testing"):
            await service.conclude(store, reg, "t1", None, by="ann", now=now + 60)
        # the candidate's errors are 30 % smaller on the same deliveries
        # (A/B needs more rows: its minimum per arm is ~4x the paired test's)
        n = 2000 if mode == "shadow" else 9000
        preds, fb = _log_arms(exp, n, cand_scale=0.7, seed=1, shadow=mode == "shadow")
        await store.write_predictions(preds)
        await store.write_feedback(fb)
        result = await service.analyze(store, reg, exp, now=now + 8000)
        assert result.recommendation == "promote_to_production", result.reason
        n_b, n_c = result.baseline.n, result.candidate.n
        if mode == "shadow":
            assert n_b == n_c == n  # the same deliveries, paired
        else:
            assert n_b + n_c == n and abs(n_c / n - 0.5) < 0.03
        assert result.candidate.mae < result.baseline.mae
        done, _ = await service.conclude(store, reg, "t1", None, by="bob", now=now + 9000)
        return exp, done

    exp, done = _run(f"sqlite:///{tmp_path / 'e.db'}", body)
    assert done.status == "concluded" and done.decision == "promote_to_production"
    assert done.options["concluded_by"] == "bob"
    assert reg.aliases() == {"production": "v2"}  # candidate alias removed
    assert "v1" in reg.archived() and "replaced by v2" in reg.archived()["v1"]["reason"]
    last = reg.history("production")[-1]
    assert (last["version"], last["by"]) == ("v2", "bob")
    assert exp.experiment_id in last["reason"]
    # one command restores the previous production, and un-archives it
    assert reg.rollback() == "v1"
    assert reg.aliases()["production"] == "v1" and "v1" not in reg.archived()


def test_a_worse_candidate_is_archived(registry: Path, tmp_path: Path) -> None:
    reg = Registry(registry)
    now = 1_750_000_000.0

    async def body(store: Store) -> Any:
        opts = service.StartOptions(candidate="v2", mode="shadow", sequential=True)
        exp = await service.start(store, reg, "t1", opts, by="ann", now=now)
        preds, fb = _log_arms(exp, 4000, cand_scale=1.4, seed=2, shadow=True)
        await store.write_predictions(preds)
        await store.write_feedback(fb)
        return await service.conclude(store, reg, "t1", None, by="bob", now=now + 8000)

    done, result = _run(f"sqlite:///{tmp_path / 'e.db'}", body)
    assert result.recommendation == "archive_candidate" and result.msprt is not None
    assert done.decision == "archive_candidate"
    assert reg.aliases() == {"production": "v1"} and "v2" in reg.archived()


def test_conclude_override_needs_a_reason(registry: Path, tmp_path: Path) -> None:
    reg = Registry(registry)

    async def body(store: Store) -> Any:
        await service.start(store, reg, "t1", service.StartOptions(candidate="v2"), by="a")
        with pytest.raises(ConfigError, match="reason: overriding"):
            await service.conclude(store, reg, "t1", None, by="b", decision="archive_candidate")
        done, _ = await service.conclude(
            store, reg, "t1", None, by="b", decision="archive_candidate", reason="bad data"
        )
        return done

    done = _run(f"sqlite:///{tmp_path / 'e.db'}", body)
    assert done.decision == "archive_candidate" and "bad data" in (done.reason or "")
    assert "v2" in reg.archived() and "candidate" not in reg.aliases()


def test_ab_cli_verbs(cli: Any, registry: Path) -> None:
    reg = ("--registry", registry)
    assert cli("ab", "status", *reg).code == 2  # nothing started yet: one error line
    res = cli("ab", "start", "v2", "--mode", "ab", "--split", "0.2", "--hours", "24", *reg)
    assert res.code == 0, res.err
    assert res.out.startswith("started: exp-") and "ab     split 0.2" in res.out
    exp = cli("ab", "status", "--json", *reg).json()
    assert (exp["status"], exp["candidate_version"], exp["planned_hours"]) == (
        "running",
        "v2",
        24.0,
    )
    again = cli("ab", "start", "v2", *reg)
    assert again.code == 2 and "is running" in again.err and "Traceback" not in again.err
    bad = cli("ab", "start", "v2", "--split", "1.5", "--mode", "ab", *reg)
    assert bad.code == 2 and "split: must be between 0 and 1" in bad.err
    analysis = cli("ab", "analyze", "--json", *reg).json()["analysis"]
    assert analysis["recommendation"] == "continue_testing" and analysis["baseline"]["n"] == 0
    text = cli("ab", "analyze", exp["experiment_id"], *reg)
    assert text.code == 0 and "recommendation: continue_testing" in text.out
    stopped = cli("ab", "stop", "--reason", "testing", *reg)
    assert stopped.code == 0 and stopped.out.startswith("stopped: ")
    listed = cli("ab", "list", "--json", *reg).json()
    assert [(e["experiment_id"], e["status"]) for e in listed] == [
        (exp["experiment_id"], "stopped")
    ]
    assert cli("models", "list", "--json", *reg).json()["aliases"] == {"production": "v1"}
    archived = cli("models", "archive", "v2", "--reason", "superseded", *reg)
    assert archived.code == 0 and "archived v2" in archived.out
    table = cli("models", "list", *reg).out
    assert any(line.startswith("v2") and line.endswith("archived") for line in table.splitlines())


def test_cli_parser_imports_no_metrics() -> None:
    """`serve` sets PROMETHEUS_MULTIPROC_DIR before the metrics are imported; a parser
    that imports them first leaves every worker's counters out of /metrics."""
    import subprocess
    import sys

    code = (
        "import sys; from server.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_route_answers_and_logs_by_arm(
    registry: Path, make_client: Any, tmp_path: Path
) -> None:
    """Single, batch and V2 requests in an A/B test and then a shadow test: the assigned
    arm answers, the answer says which, and the log holds what each version said."""
    import json
    import time

    from tests.e2e import servekit as kit
    from tests.server.store.storekit import raw_sql
    from tests.server.test_feedback import v2_request

    url = f"sqlite:///{tmp_path / 'ab.db'}"
    c = make_client(
        registry, database_url=url, enable_ab_testing=True, admin_token="t", reload_interval_s=0.05
    )
    auth = {"Authorization": "Bearer t"}
    rows = kit.sample_rows(40, seed=5)
    for i, r in enumerate(rows):
        r["order_id"] = f"ab-{i}"

    def until(cond: Any) -> None:
        end = time.monotonic() + 10
        while not cond():
            assert time.monotonic() < end, "routing did not follow the experiment"
            time.sleep(0.02)

    res = c.post("/v1/admin/experiments", headers=auth, json={"candidate": "v2", "mode": "ab"})
    assert res.status_code == 201, res.text
    eid = res.json()["experiment_id"]
    until(lambda: c.post("/v1/predict", json=rows[0]).json()["arm"] != "production")
    want = [assign(eid, r["order_id"], 0.5) for r in rows]
    assert 5 < sum(want) < 35
    single = [c.post("/v1/predict", json=r).json() for r in rows]
    assert [s["arm"] == "candidate" for s in single] == want
    assert [s["model_version"] for s in single] == ["v2" if w else "v1" for w in want]
    batch = c.post(
        "/v1/predict/batch", json={"deliveries": rows}, headers={"x-request-id": "ab-batch"}
    ).json()["predictions"]
    assert [(b["arm"], b["model_version"]) for b in batch] == [
        (s["arm"], s["model_version"]) for s in single
    ]
    assert [b["eta_minutes"] for b in batch] == [s["eta_minutes"] for s in single]
    v2 = c.post(
        "/v2/models/eta/infer",
        json=v2_request(rows, with_key=True),
        headers={"x-request-id": "ab-v2"},
    ).json()
    assert v2["parameters"]["arm"] == "mixed" and v2["parameters"]["candidate_version"] == "v2"
    assert v2["parameters"]["candidate_rows"] == ",".join(str(i) for i, w in enumerate(want) if w)
    assert v2["outputs"][0]["data"] == [s["eta_minutes"] for s in single]

    # the log holds each row of a split request under its arm, with its input as sent
    def by_request(rid: str) -> dict[str, tuple[str, str, float, Any]]:
        sql = (
            "SELECT order_id, arm, model_version, eta, inputs FROM predictions WHERE request_id = ?"
        )
        return {o: (a, v, e, json.loads(i)) for o, a, v, e, i in raw_sql(url, sql, rid)}

    expect = {
        r["order_id"]: (s["arm"], s["model_version"], s["eta_minutes"], r)
        for r, s in zip(rows, single, strict=True)
    }
    until(lambda: len(by_request("ab-batch")) == len(by_request("ab-v2")) == len(rows))
    assert by_request("ab-batch") == expect == by_request("ab-v2")
    # without order ids every V2 row goes to the baseline
    keyless = c.post("/v2/models/eta/infer", json=v2_request(rows[:3], with_key=False)).json()
    assert keyless["parameters"] == {"arm": "baseline"} and keyless["model_version"] == "v1"

    # shadow: production answers; the candidate's answers are logged, not returned
    assert c.post(f"/v1/admin/experiments/{eid}/stop", headers=auth).status_code == 200
    res = c.post("/v1/admin/experiments", headers=auth, json={"candidate": "v2", "mode": "shadow"})
    assert res.status_code == 201, res.text
    until(lambda: c.post("/v1/predict", json=rows[0]).json()["model_version"] == "v1")
    shadowed = {**rows[1], "order_id": "shadow-1"}
    one = c.post("/v1/predict", json=shadowed).json()
    assert (one["arm"], one["model_version"]) == ("baseline", "v1")
    c.post(
        "/v1/predict/batch",
        json={"deliveries": [{**r, "order_id": f"sb-{i}"} for i, r in enumerate(rows)]},
    )

    def logged(order: str) -> set[tuple[str, str]]:
        return set(
            raw_sql(url, "SELECT arm, model_version FROM predictions WHERE order_id = ?", order)
        )

    until(lambda: logged("shadow-1") == {("baseline", "v1"), ("shadow", "v2")})
    until(
        lambda: all(logged(f"sb-{i}") == {("baseline", "v1"), ("shadow", "v2")} for i in range(40))
    )
    shadow_eta = dict(
        raw_sql(
            url,
            "SELECT order_id, eta FROM predictions WHERE arm = 'shadow' AND order_id LIKE 'sb-%'",
        )
    )
    # the shadow rows hold what v2 answers for those inputs
    for i, w in enumerate(want):
        if w:
            assert shadow_eta[f"sb-{i}"] == pytest.approx(single[i]["eta_minutes"], rel=1e-12)


def test_a_running_experiment_survives_a_restart(
    registry: Path, make_client: Any, tmp_path: Path
) -> None:
    import time

    from tests.e2e import servekit as kit

    url = f"sqlite:///{tmp_path / 'restart.db'}"
    settings = {
        "database_url": url,
        "enable_ab_testing": True,
        "admin_token": "t",
        "reload_interval_s": 0.05,
    }
    first = make_client(registry, **settings)
    res = first.post(
        "/v1/admin/experiments",
        headers={"Authorization": "Bearer t"},
        json={"candidate": "v2", "mode": "ab", "split": 0.99},
    )
    assert res.status_code == 201, res.text
    first.__exit__(None, None, None)  # the server stops
    second = make_client(registry, **settings)  # a new process would read the same store
    row = {**kit.sample_rows(1, seed=9)[0], "order_id": "after-restart"}
    end = time.monotonic() + 10
    while (got := second.post("/v1/predict", json=row).json())["arm"] == "production":
        assert time.monotonic() < end, "the restarted server did not resume the experiment"
        time.sleep(0.02)
    assert (got["arm"], got["model_version"]) == ("candidate", "v2")
    listed = second.get("/v1/admin/experiments", headers={"Authorization": "Bearer t"}).json()
    assert [e["status"] for e in listed["experiments"]] == ["running"]
