"""docs/runbooks: every step is a real command of this product.

* Every ``intellilog <verb> ...`` line of a ```sh block parses with the real command line
  (``server.cli.build_parser().parse_args``), flags included.
* Links and anchors resolve, metric names are ones the server exports (or will), and
  every query of docs/runbooks/sql/ runs on SQLite and on a real PostgreSQL with the
  product's schema (server/store/migrations) and gives the figures it promises.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import re
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.monitoring.expected import (
    EXPECTED,
    ROOT,
    RUNBOOKS,
    Command,
    metric_names,
    runbook_commands,
)


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("intellilog has no subcommands")


COMMANDS = runbook_commands()


def test_runbooks_use_the_product() -> None:
    """The two runbooks of issue 9 exist and use the commands it names."""
    for name in ("model-degradation.md", "drift.md"):
        assert (RUNBOOKS / name).is_file()
    used = {(c.argv[0], *c.argv[1:2]) for c in COMMANDS if c.argv}
    for verb in (
        ("quality",),
        ("drift",),
        ("models", "list"),
        ("models", "rollback"),
        ("backtest",),
        ("train",),
    ):
        assert any(u[: len(verb)] == verb for u in used), f"no `intellilog {' '.join(verb)}`"
    assert any("--promote" in c.argv for c in COMMANDS if c.argv[:1] == ("train",)), (
        "no `intellilog train ... --promote`"
    )
    text = "".join(p.read_text(encoding="utf-8") for p in RUNBOOKS.glob("*.md"))
    assert "localhost:8000/v1/monitoring/quality" in text


@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_runbook_command_parses(cmd: Command) -> None:
    from server.cli import build_parser

    parser = build_parser()
    verbs = _verbs(parser)
    assert cmd.argv, f"{cmd.where}: `intellilog` without a command"
    verb = cmd.argv[0]
    assert verb in verbs, f"{cmd}: no such command (intellilog has {sorted(verbs)})"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(list(cmd.argv))
    except SystemExit:
        pytest.fail(f"{cmd} does not parse: {err.getvalue().strip()}")
    assert args.command == verb


def _anchors(md: Path) -> set[str]:
    out = set()
    for line in md.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("md", sorted(RUNBOOKS.glob("*.md")), ids=lambda p: p.name)
def test_runbook_links_and_files(md: Path) -> None:
    text = md.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (md.parent / path) if path else md
        assert file.exists(), f"{md.name}: broken link {target}"
        if anchor:
            assert anchor in _anchors(file), f"{md.name}: no heading #{anchor} in {file.name}"
    for ref in re.findall(r"docs/runbooks/sql/[\w.-]+\.sql", text):
        assert (ROOT / ref).is_file(), f"{md.name}: {ref} does not exist"
    unknown = metric_names(text) - EXPECTED
    assert not unknown, f"{md.name}: unknown metrics {unknown}"


# ---- the SQL ---------------------------------------------------------------------------------

SQL = RUNBOOKS / "sql"
TOLERANCE = 5.0  # the delivery spec's target.tolerance, as written in the queries


@dataclass
class Fixture:
    predictions: list[dict[str, Any]]
    feedback: list[dict[str, Any]]
    quality: dict[tuple[str, str], dict[str, float]]  # expected, per (version, arm)
    exported: list[str]  # order ids the export must give, in order


def _data() -> Fixture:
    """Predictions and feedback around now, and what the queries must make of them."""
    from tests.e2e.servekit import sample_rows

    now = time.time()
    preds: list[dict[str, Any]] = []
    fb: list[dict[str, Any]] = []

    def pred(
        order: str, inputs: dict[str, Any], version: str, arm: str, eta: float, age: float
    ) -> None:
        preds.append(
            {
                "row_id": f"r{len(preds)}:0",
                "request_id": f"r{len(preds)}",
                "order_id": order,
                "tenant": "default",
                "model_version": version,
                "arm": arm,
                "inputs": json.dumps(inputs),
                "features": b"\x00\x00\x80\x3f",
                "eta": eta,
                "p10": eta - 6.0,
                "p90": eta + 6.0,
                "created_at": now - age,
            }
        )

    rows = sample_rows(60, seed=11)
    truth: dict[str, tuple[str, str, float, float]] = {}
    for i, r in enumerate(rows):
        version, arm = ("v1", "production") if i % 3 else ("v2", "candidate")
        eta = 20.0 + i % 13
        actual = eta + (i % 17) - 8.0  # errors -8 .. +8 minutes
        pred(r["order_id"], r, version, arm, eta, age=7200.0 - i * 60)
        if i % 6 != 5:  # some orders get no feedback
            fb.append(
                {
                    "tenant": "default",
                    "order_id": r["order_id"],
                    "actual_minutes": actual,
                    "completed_at": now - 1800.0 + i * 10,
                    "received_at": now - 1700.0 + i * 10,
                    "updates": 0,
                }
            )
            truth[r["order_id"]] = (version, arm, eta, actual)
    # an older prediction of an order that was predicted again: only the latest counts
    pred(rows[1]["order_id"], rows[1], "v0", "production", 99.0, age=9000.0)
    # an order of 40 days ago: outside every window and the 28-day export
    old = dict(rows[0], order_id="old-1")
    pred("old-1", old, "v0", "production", 30.0, age=40 * 86400.0)
    fb.append(
        {
            "tenant": "default",
            "order_id": "old-1",
            "actual_minutes": 31.0,
            "completed_at": now - 39 * 86400.0,
            "received_at": now - 39 * 86400.0,
            "updates": 0,
        }
    )
    # feedback naming no prediction: stored, joined to nothing
    fb.append(
        {
            "tenant": "default",
            "order_id": "no-such-order",
            "actual_minutes": 12.0,
            "completed_at": now - 60.0,
            "received_at": now - 60.0,
            "updates": 1,
        }
    )

    quality: dict[tuple[str, str], dict[str, float]] = {}
    for version, arm, eta, actual in truth.values():
        q = quality.setdefault((version, arm), {"n": 0, "abs": 0.0, "acc": 0, "cov": 0})
        q["n"] += 1
        q["abs"] += abs(eta - actual)
        q["acc"] += abs(eta - actual) <= TOLERANCE
        q["cov"] += (eta - 6.0) <= actual <= (eta + 6.0)
    expected = {
        k: {
            "n": q["n"],
            "mae_minutes": round(q["abs"] / q["n"], 2),
            "accuracy": round(q["acc"] / q["n"], 3),
            "coverage": round(q["cov"] / q["n"], 3),
        }
        for k, q in quality.items()
    }
    exported = [r["order_id"] for r in rows if r["order_id"] in truth]
    return Fixture(preds, fb, expected, exported)


def _statements(sql: str) -> list[str]:
    body = "\n".join(ln for ln in sql.splitlines() if not ln.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def _log_predictions(url: str, data: Fixture) -> None:
    """The fixture's predictions written the way the server writes them (the store opened
    at ``url``: every migration applied, rows stored in batches behind the view)."""
    from server.store import PredictionRow, open_store

    async def write() -> None:
        async with await open_store(url) as store:
            await store.write_predictions([PredictionRow(**p) for p in data.predictions])

    asyncio.run(write())


def _sqlite(tmp_path: Path, data: Fixture) -> sqlite3.Connection:
    path = tmp_path / "intellilog.db"
    _log_predictions(f"sqlite:///{path}", data)
    db = sqlite3.connect(path)
    cols = list(data.feedback[0])
    db.executemany(
        f"INSERT INTO feedback ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        [tuple(f[c] for c in cols) for f in data.feedback],
    )
    db.commit()
    return db


def _run_sqlite(db: sqlite3.Connection, file: Path) -> list[list[dict[str, Any]]]:
    """Every statement's rows (as dicts) of one .sqlite.sql file."""
    out = []
    for stmt in _statements(file.read_text(encoding="utf-8")):
        cur = db.execute(stmt)
        names = [d[0] for d in cur.description]
        out.append([dict(zip(names, row, strict=True)) for row in cur.fetchall()])
    return out


def _quality(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    return {
        (r["model_version"], r["arm"]): {
            k: float(r[k]) if k != "n" else int(r[k])
            for k in ("n", "mae_minutes", "accuracy", "coverage")
        }
        for r in rows
    }


def _export_columns() -> list[str]:
    from kernels.spec import default_spec

    spec = default_spec()
    return [spec.key, *spec.input_columns, spec.target]


def test_sql_files_come_in_pairs() -> None:
    lite = {p.name.removesuffix(".sqlite.sql") for p in SQL.glob("*.sqlite.sql")}
    pg = {p.name.removesuffix(".postgres.sql") for p in SQL.glob("*.postgres.sql")}
    assert lite and lite == pg
    assert {p.name for p in SQL.iterdir()} == {
        f"{n}.{k}.sql" for n in lite for k in ("sqlite", "postgres")
    }


def test_sql_on_sqlite(tmp_path: Path) -> None:
    data = _data()
    db = _sqlite(tmp_path, data)
    for file in sorted(SQL.glob("*.sqlite.sql")):
        _run_sqlite(db, file)  # every statement runs
    (quality,) = _run_sqlite(db, SQL / "live-quality.sqlite.sql")
    assert _quality(quality) == data.quality
    fresh, preds = _run_sqlite(db, SQL / "feedback-freshness.sqlite.sql")
    assert fresh[0]["feedback_rows"] == len(data.feedback)
    assert fresh[0]["received_24h"] == len(data.feedback) - 1
    assert 0.5 <= fresh[0]["minutes_since_newest"] <= 2.0
    assert preds[0]["predictions_24h"] == len(data.predictions) - 1
    (export,) = _run_sqlite(db, SQL / "export-labelled.sqlite.sql")
    assert list(export[0]) == _export_columns()
    assert [r["order_id"] for r in export] == data.exported
    (segments,) = _run_sqlite(db, SQL / "error-by-segment.sqlite.sql")
    assert all(r["n"] >= 20 for r in segments)


def test_sqlite_export_is_a_training_file(tmp_path: Path) -> None:
    """The runbook's export, written as `sqlite3 -header -csv` does, reads as training data."""
    from kernels.spec import default_spec
    from training.io import read_table

    data = _data()
    db = _sqlite(tmp_path, data)
    cur = db.execute(_statements((SQL / "export-labelled.sqlite.sql").read_text())[0])
    out = tmp_path / "recent.csv"
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([d[0] for d in cur.description])
        w.writerows(["" if v is None else v for v in row] for row in cur)
    files = [out]
    if shutil.which("sqlite3"):  # the exact command of the runbook, where the CLI is there
        sh = subprocess.run(
            ["sqlite3", "-header", "-csv", str(tmp_path / "intellilog.db")],
            input=(SQL / "export-labelled.sqlite.sql").read_text(),
            capture_output=True,
            text=True,
            check=True,
        )
        files.append(tmp_path / "recent-cli.csv")
        files[-1].write_text(sh.stdout)
    spec = default_spec()
    for file in files:
        table = read_table(file, spec)  # checks the spec's columns and the target
        assert table.column_names == _export_columns()
        assert table.num_rows == len(data.exported)


def _psql(server: Any) -> str:
    psql = server.bindir / "psql"
    if psql.is_file():
        return str(psql)
    found = shutil.which("psql")
    if found is None:
        from tests.pgserver import skip_or_fail

        skip_or_fail("psql not found (the PostgreSQL client)")
    return str(found)


def test_sql_on_postgres(postgres: Any) -> None:
    """The .postgres.sql files, run the way the runbooks say: psql "$DATABASE_URL" -f FILE."""
    import asyncpg

    url = postgres.new_database()
    data = _data()
    _log_predictions(url, data)

    async def load() -> None:
        conn = await asyncpg.connect(url)
        try:
            cols = list(data.feedback[0])
            marks = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
            await conn.executemany(
                f"INSERT INTO feedback ({', '.join(cols)}) VALUES ({marks})",
                [tuple(r[c] for c in cols) for r in data.feedback],
            )
        finally:
            await conn.close()

    asyncio.run(load())
    psql = _psql(postgres)

    def run(name: str) -> list[dict[str, str]]:
        out = subprocess.run(
            [psql, url, "-X", "-v", "ON_ERROR_STOP=1", "--csv", "-f", str(SQL / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, f"{name}: {out.stderr}"
        return list(csv.DictReader(io.StringIO(out.stdout)))

    for file in sorted(SQL.glob("*.postgres.sql")):
        run(file.name)
    assert _quality(run("live-quality.postgres.sql")) == data.quality
    export = run("export-labelled.postgres.sql")
    assert list(export[0]) == _export_columns()
    assert [r["order_id"] for r in export] == data.exported
