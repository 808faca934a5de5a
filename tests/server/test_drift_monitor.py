"""Drift monitoring (server.monitoring.drift) and ``intellilog drift`` over a SQLite store
filled through the store API with real feature rows: generated deliveries through the
default spec's pipeline, the reference built as the train job builds it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from kernels.errors import ConfigError, ModelLoadError
from kernels.features import Pipeline
from kernels.spec import default_spec
from server import cli
from server.monitoring.drift import (
    DriftMonitor,
    DriftSnapshot,
    _eta_reference,
    _regrid,
    drift_route_payload,
    drift_snapshot,
    format_snapshot,
    parse_cycles,
    promoted_at,
)
from server.store import PredictionRow, Store, open_store, pack_features
from training.drift import reference_histograms
from training.io import learn_levels, to_columns
from training.registry import Registry
from training.synth import generate

T0 = 1_750_000_000.0
HOUR = 3600.0


class Data:
    """A manifest (feature names, levels, reference) and windows of real feature rows."""

    def __init__(self) -> None:
        spec = default_spec()
        self.names = list(spec.feature_names)
        table = generate(60_000, seed=0)
        self.pipe = Pipeline(spec, learn_levels(table, spec))
        X = self.pipe.matrix(to_columns(table, self.pipe).columns)
        self.manifest: dict[str, Any] = {
            "version": "v1",
            "feature_names": self.names,
            "levels": {k: list(v) for k, v in self.pipe.levels.items()},
            "reference": reference_histograms(
                X, self.names, categorical=list(spec.categorical_feature_indices)
            ),
        }
        cols = to_columns(generate(6_000, seed=77), self.pipe).columns
        # generated rows are in time order: shuffle, so any slice is a sample of the period
        cols = cols.take(np.random.default_rng(0).permutation(len(cols)))
        self.fresh = self.pipe.matrix(cols)
        zone = [c.name for c in spec.categorical].index("zone")
        cats = cols.cats.copy()
        cats[np.random.default_rng(1).random(len(cols)) < 0.3, zone] = self.pipe.unknown_code(
            "zone"
        )
        self.new_zone = self.pipe.matrix(replace(cols, cats=cats))

    @staticmethod
    def eta(X: np.ndarray) -> np.ndarray:
        return 12.0 + 3.0 * X[:, 4].astype(np.float64)  # minutes, from distance_km


@pytest.fixture(scope="module")
def data() -> Data:
    return Data()


def rows(
    X: np.ndarray,
    times: np.ndarray,
    *,
    version: str = "v1",
    tag: str = "r",
    tenant: str = "t1",
    eta_scale: float = 1.0,
) -> list[PredictionRow]:
    blobs = pack_features(np.ascontiguousarray(X, dtype=np.float32))
    eta = Data.eta(X) * eta_scale
    return [
        PredictionRow(
            row_id=f"{tag}:{i}",
            request_id=tag,
            order_id=f"{tag}-{i}",
            tenant=tenant,
            model_version=version,
            inputs="{}",
            features=blobs[i],
            eta=float(eta[i]),
            p10=float(eta[i]) - 5,
            p90=float(eta[i]) + 5,
            created_at=float(times[i]),
        )
        for i in range(len(X))
    ]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _store(tmp_path: Path) -> Store:
    return await open_store(f"sqlite:///{tmp_path / 'db' / 'intellilog.db'}")


def spread(n: int, start: float, end: float) -> np.ndarray:
    return np.linspace(start, end, n, endpoint=False)


# ---- drift_snapshot ----------------------------------------------------------------------------


def test_snapshot_of_fresh_and_shifted_windows(data: Data, tmp_path: Path) -> None:
    async def go() -> tuple[DriftSnapshot, ...]:
        async with await _store(tmp_path) as store:
            await store.write_predictions(rows(data.fresh[:3000], spread(3000, T0, T0 + 86_400)))
            await store.write_predictions(
                rows(data.new_zone[:3000], spread(3000, T0, T0 + 86_400), version="v2", tag="z")
            )
            await store.write_predictions(
                rows(data.fresh[:40], spread(40, T0, T0 + 10), version="v3", tag="t")
            )
            now = T0 + 86_400
            ok = await drift_snapshot(store, data.manifest, "t1", 86_400, now)
            shifted = await drift_snapshot(store, data.manifest, "t1", 86_400, now, version="v2")
            tiny = await drift_snapshot(store, data.manifest, "t1", 86_400, now, version="v3")
            none = await drift_snapshot(store, data.manifest, "other", 86_400, now)
            return ok, shifted, tiny, none

    ok, shifted, tiny, none = run(go())
    assert (ok.version, ok.rows, ok.verdict, ok.score) == ("v1", 3000, "ok", 0.0)
    assert ok.covered_s == 86_400 and not ok.truncated
    # a 24 h window compares the hour but not the day of the week
    assert ok.feature("hour_sin").skipped is None
    assert ok.feature("dow_sin").skipped is not None and ok.feature("dow_sin").critical is None
    assert shifted.verdict == "drift" and shifted.drifted[0] == "zone"
    assert shifted.score == shifted.feature("zone").psi > 0.3
    assert shifted.feature("zone").score == shifted.score
    assert tiny.rows == 40 and tiny.verdict == "insufficient data" and tiny.score == 0.0
    assert none.rows == 0 and none.verdict == "insufficient data"
    assert any("prediction_reference" in n for n in ok.notes) and ok.prediction is None
    payload = drift_route_payload(shifted)
    assert json.loads(json.dumps(payload, allow_nan=False)) == payload
    assert payload["verdict"] == "drift" and payload["rule"]["min_rows"] == 500
    assert drift_route_payload(None)["verdict"] == "no data"
    text = format_snapshot(shifted)
    assert (
        "verdict: DRIFT (zone)" in text and "skipped: the window covers 24 h, not whole 7 d" in text
    )


def test_snapshot_truncated_read_and_serving_since(data: Data, tmp_path: Path) -> None:
    async def go() -> tuple[DriftSnapshot, DriftSnapshot]:
        async with await _store(tmp_path) as store:
            await store.write_predictions(rows(data.fresh[:2000], spread(2000, T0, T0 + 86_400)))
            now = T0 + 86_400
            cut = await drift_snapshot(store, data.manifest, "t1", 86_400, now, limit=800)
            late = await drift_snapshot(
                store, data.manifest, "t1", 86_400, now, serving_since=now - 6 * HOUR
            )
            return cut, late

    cut, late = run(go())
    assert cut.truncated and cut.covered_s is None and cut.rows == 800
    assert all(cut.feature(n).skipped for n in ("hour_sin", "hour_cos", "dow_sin", "weekend"))
    assert any("limit of 800 rows" in n for n in cut.notes)
    assert late.covered_s == pytest.approx(6 * HOUR)
    assert late.rows == pytest.approx(500, abs=1)
    assert "covers 6 h, not whole 24 h" in (late.feature("hour_sin").skipped or "")


def test_snapshot_compares_etas_with_a_manifest_reference(data: Data, tmp_path: Path) -> None:
    manifest = dict(
        data.manifest,
        prediction_reference=reference_histograms(Data.eta(data.fresh)[:, None], ["eta"])["eta"],
    )

    async def go() -> tuple[DriftSnapshot, DriftSnapshot]:
        async with await _store(tmp_path) as store:
            await store.write_predictions(rows(data.fresh[:2000], spread(2000, T0, T0 + HOUR)))
            await store.write_predictions(
                rows(
                    data.fresh[:2000],
                    spread(2000, T0, T0 + HOUR),
                    version="v2",
                    tag="s",
                    eta_scale=1.5,
                )
            )
            now = T0 + HOUR
            same = await drift_snapshot(store, manifest, "t1", HOUR, now)
            slow = await drift_snapshot(store, manifest, "t1", HOUR, now, version="v2")
            return same, slow

    same, slow = run(go())
    assert same.prediction is not None and slow.prediction is not None
    assert same.prediction.reference == "manifest" and not same.prediction.flagged
    assert slow.prediction.flagged and slow.prediction.psi > 0.3
    assert slow.verdict == "ok"  # the ETA check is not part of the input verdict


def test_manifest_without_reference_is_refused(data: Data, tmp_path: Path) -> None:
    async def go() -> None:
        async with await _store(tmp_path) as store:
            await drift_snapshot(store, {"version": "v9"}, "t1", 60.0, T0)

    with pytest.raises(ModelLoadError, match="retrain"):
        run(go())
    with pytest.raises(ConfigError, match="window_s"):
        run(drift_snapshot(None, data.manifest, "t1", 0.0))  # type: ignore[arg-type]


# ---- the monitor -------------------------------------------------------------------------------


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_monitor_window_slides_tick_by_tick(data: Data, tmp_path: Path) -> None:
    window = 400.0
    clock = Clock(T0 + window)
    t = spread(1600, T0, T0 + window)  # 4 rows a second before the monitor starts

    async def go() -> list[DriftSnapshot | None]:
        out: list[DriftSnapshot | None] = []
        async with await _store(tmp_path) as store:
            await store.write_predictions(rows(data.fresh[:1600], t))
            served: list[Any] = [("v1", data.manifest)]
            mon = DriftMonitor(
                store,
                lambda: served[0],
                "t1",
                window_s=window,
                clock=clock,
                bootstrap_pieces=4,
                limit=5000,
            )
            out.append(await mon.refresh())  # bootstrap: 4 pieces of 100 s
            clock.t += 50
            await store.write_predictions(
                rows(data.new_zone[:400], spread(400, T0 + 400.01, T0 + 450), tag="n")
            )
            out.append(await mon.refresh())
            clock.t += 100  # edge T0 + 150: the piece ending at T0 + 100 leaves the window
            await store.write_predictions(
                rows(data.new_zone[400:1200], spread(800, T0 + 450.01, T0 + 550), tag="m")
            )
            out.append(await mon.refresh())
            assert mon.snapshot is out[-1]
            served[0] = None
            assert await mon.refresh() is None
            return out

    boot, second, third = run(go())
    assert boot and second and third
    assert boot.rows == 1600 and boot.covered_s == window and boot.verdict == "ok"
    assert second.rows == 2000
    assert third.rows == 2000 - 400 + 800
    assert third.verdict == "drift" and third.drifted[0] == "zone"
    assert third.covered_s == window
    assert gauge("intellilog_model_drift_score", version="v1") == third.score
    assert gauge("intellilog_drift_score", feature="zone") == third.feature("zone").psi
    assert gauge("intellilog_drift_score", feature="distance_km") == 0.0


def test_monitor_bootstrap_stops_at_the_limit_and_versions_switch(
    data: Data, tmp_path: Path
) -> None:
    clock = Clock(T0 + 86_400)

    async def go() -> list[DriftSnapshot | None]:
        out: list[DriftSnapshot | None] = []
        async with await _store(tmp_path) as store:
            await store.write_predictions(rows(data.fresh[:3000], spread(3000, T0, T0 + 86_400)))
            await store.write_predictions(
                rows(
                    data.new_zone[:600],
                    spread(600, T0 + 86_000, T0 + 86_400),
                    version="v2",
                    tag="b",
                )
            )
            served: list[Any] = [("v1", data.manifest)]
            mon = DriftMonitor(
                store,
                lambda: served[0],
                "t1",
                clock=clock,
                limit=1000,
                bootstrap_pieces=24,
                serving_since=lambda v: T0 + 86_000 if v == "v2" else None,
            )
            out.append(await mon.refresh())
            served[0] = ("v2", data.manifest)
            out.append(await mon.refresh())
            return out

    v1, v2 = run(go())
    assert v1 and v2
    # 3000 rows (and 600 of v2) in 24 h, reads of at most 1000: the pieces stop where a read
    # would pass the limit, and the coverage says how far back the window reaches
    assert 0 < v1.rows < 1000 and v1.covered_s is not None and v1.covered_s < 86_400
    assert v1.feature("hour_sin").skipped is not None
    assert any("still filling" in n for n in v1.notes)
    assert v2.version == "v2" and v2.verdict == "drift"
    assert v2.rows == 600 and v2.covered_s == pytest.approx(400.0)  # served since T0 + 86000
    assert gauge("intellilog_model_drift_score", version="v2") == v2.score
    assert gauge("intellilog_model_drift_score", version="v1") is None  # stale series gone


def test_monitor_eta_reference_is_the_first_full_window(data: Data, tmp_path: Path) -> None:
    window = 200.0
    clock = Clock(T0 + window)

    async def go() -> list[DriftSnapshot | None]:
        out: list[DriftSnapshot | None] = []
        async with await _store(tmp_path) as store:
            await store.write_predictions(rows(data.fresh[:1000], spread(1000, T0, T0 + window)))
            mon = DriftMonitor(
                store, lambda: ("v1", data.manifest), "t1", window_s=window, clock=clock
            )
            out.append(await mon.refresh())
            clock.t += window
            await store.write_predictions(
                rows(
                    data.fresh[1000:2000],
                    spread(1000, T0 + window + 0.01, T0 + 2 * window),
                    tag="slow",
                    eta_scale=1.6,
                )
            )
            out.append(await mon.refresh())
            return out

    first, later = run(go())
    assert first and later
    assert first.prediction is not None and first.prediction.reference == "first window"
    assert first.prediction.psi == pytest.approx(0.0, abs=1e-9)
    assert later.prediction is not None and later.prediction.flagged
    assert later.prediction.reference_rows == 1000 and later.verdict == "ok"


def test_monitor_run_survives_failures(data: Data, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def broken() -> Any:
        calls.append(1)
        return ("v1", {"version": "v1"})  # no reference: ModelLoadError every tick

    async def go() -> None:
        mon = DriftMonitor(lambda: object(), broken, "t1")  # type: ignore[arg-type,return-value]
        task = asyncio.create_task(mon.run(0.01))
        await asyncio.sleep(0.06)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ConfigError):
            await mon.run(0.0)

    with caplog.at_level("WARNING", logger="intellilog.monitoring"):
        run(go())
    assert len(calls) >= 2
    assert sum("drift refresh failed" in r.message for r in caplog.records) == 1


def test_eta_grid_reference_round_trip() -> None:
    from server.monitoring.drift import _eta_grid_counts

    eta = np.random.default_rng(3).lognormal(3.3, 0.4, 20_000)
    grid = _eta_grid_counts(eta)
    entry = _eta_reference(grid)
    assert entry is not None and len(entry["edges"]) == 9
    assert sum(entry["shares"]) + entry["nan_share"] == pytest.approx(1.0)
    assert np.allclose(entry["shares"], 0.1, atol=0.025)  # edges on a 2.3 % grid
    np.testing.assert_array_equal(
        _regrid(grid, entry)[:-1], np.round(np.asarray(entry["shares"]) * 20_000)
    )
    assert _eta_reference(_eta_grid_counts(np.full(3, np.nan))) is None


def test_cycles_and_promoted_at(tmp_path: Path) -> None:
    assert parse_cycles(["weather=365d", " promo = 7d"]) == {
        "weather": 365 * 86_400.0,
        "promo": 7 * 86_400.0,
    }
    for bad in ("weather", "=1d", "weather=soon"):
        with pytest.raises(ConfigError, match="--cycle"):
            parse_cycles([bad])
    reg = Registry(tmp_path / "reg")
    v = _publish(reg, {"feature_names": []})
    assert promoted_at(reg, "production", v) is None
    reg.promote(v, "production")
    since = promoted_at(reg, "production", v)
    assert since is not None and abs(since - time.time()) < 60
    assert promoted_at(reg, "production", "v99") is None
    assert promoted_at(reg, v, v) is None


def _publish(reg: Registry, manifest: dict[str, Any]) -> str:
    stage = reg.stage()
    (stage / "model.txt").write_text("placeholder")
    return reg.publish(stage, manifest)


# ---- intellilog drift --------------------------------------------------------------------------


def test_cli_drift_table_json_and_exit_status(
    data: Data,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reg = Registry(tmp_path / "models")
    manifest = {k: v for k, v in data.manifest.items() if k != "version"}
    v1 = _publish(reg, manifest)
    v2 = _publish(reg, manifest)
    reg.promote(v1, "production")
    # v1 has served for 30 hours: the alias history says since when
    state_file = reg.root / "aliases.json"
    state = json.loads(state_file.read_text())
    state["history"]["production"][-1]["at"] = datetime.fromtimestamp(
        time.time() - 30 * HOUR, UTC
    ).isoformat()
    state_file.write_text(json.dumps(state))
    url = f"sqlite:///{tmp_path / 'db' / 'intellilog.db'}"
    now = time.time()

    async def fill() -> None:
        async with await open_store(url) as store:
            await store.write_predictions(
                rows(data.fresh[:1500], spread(1500, now - 20 * HOUR, now - 60), version=v1)
            )
            await store.write_predictions(
                rows(
                    data.new_zone[:1500],
                    spread(1500, now - 2 * HOUR, now - 60),
                    version=v2,
                    tag="z",
                )
            )

    run(fill())
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("MODEL_ARTIFACT_PATH", str(reg.root))
    monkeypatch.setenv("TENANT_ID", "t1")
    main: Callable[[list[str]], int] = cli.main

    assert main(["drift"]) == 0
    out = capsys.readouterr().out
    assert f"model {v1}, tenant t1: 1500 rows in the last 24 h (covering 24 h)" in out
    assert "verdict: OK" in out and "hour_sin" in out

    assert main(["drift", "--window", "3h", "--model", v2, "--json"]) == cli.EXIT_QUALITY
    got = json.loads(capsys.readouterr().out)
    assert got["version"] == v2 and got["verdict"] == "drift" and got["drifted"][0] == "zone"
    assert got["rows"] == 1500 and got["score"] > 0.3

    assert main(["drift", "--window", "1h", "--cycle", "zone=365d", "--model", v2]) == 0
    out = capsys.readouterr().out
    assert "skipped: the window covers 1 h, not whole 365 d cycles" in out and "verdict: OK" in out

    assert main(["drift", "--window", "soon"]) == cli.EXIT_ERROR
    assert "--window='soon'" in capsys.readouterr().err
    assert main(["drift", "--model", "v42"]) == cli.EXIT_ERROR
    assert "v42" in capsys.readouterr().err
    monkeypatch.setenv("TENANT_ID", "nobody")
    assert main(["drift", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "insufficient data"
