"""How long ``intellilog retrain`` takes on a week of 100k logged predictions with feedback.

Set-up (not timed): a production model trained with the default settings on eight weeks of
generated deliveries before the window, and a SQLite store holding ``--rows`` predictions
logged over the last seven days (raw input JSON as the server logs it) with their
feedback. Timed: ``intellilog retrain --json`` in a fresh process (import, store read,
decoding, quality gate, training with production's settings, export and served check,
evaluation of both versions on the holdout, drift, decision, run log), then
``intellilog train`` on the same rows (the file the run kept) for the ratio: what the
retraining job costs over training alone, measured in the same run.

    .venv/bin/python bench/retrain.py --rows 100000

Prints one JSON object (also written to ``bench/results/retrain.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

DAY = 86_400.0
CLI = str(Path(sys.executable).parent / "intellilog")


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETRAIN_", "MLFLOW_"))}
    env.update(
        MODEL_ARTIFACT_PATH=str(work / "registry"),
        DATABASE_URL=f"sqlite:///{work / 'intellilog.db'}",
        INTELLILOG_CACHE_DIR=str(work / "cache"),
    )
    return env


def _fill(url: str, window: pa.Table, now: float) -> int:
    """Log the window's rows as served predictions, moved to end just before ``now``, with
    their feedback; return the feedback rows."""
    from server.store import FeedbackRow, PredictionRow, open_store

    rows = window.to_pylist()
    t = np.array([datetime.fromisoformat(r["created_at"]).timestamp() for r in rows])
    shift = (now - 7 * DAY + 60.0) - t.min()
    preds, fb = [], []
    for i, r in enumerate(rows):
        actual = float(r.pop("actual_minutes"))
        created = float(t[i] + shift)
        r["created_at"] = datetime.fromtimestamp(created, UTC).isoformat()
        r["order_id"] = f"b{i}"
        preds.append(
            PredictionRow(
                row_id=f"b{i}:0",
                request_id=f"req{i}",
                order_id=f"b{i}",
                tenant="default",
                model_version="v1",
                arm="production",
                inputs=json.dumps(r),
                features=b"\x00" * 76,
                eta=30.0,
                p10=20.0,
                p90=40.0,
                created_at=created,
            )
        )
        done = created + actual * 60.0
        if done < now:
            fb.append(
                FeedbackRow(
                    order_id=f"b{i}",
                    tenant="default",
                    actual_minutes=actual,
                    completed_at=done,
                    received_at=done + 30.0,
                )
            )

    async def write() -> None:
        async with await open_store(url) as store:
            for k in range(0, len(preds), 20_000):
                await store.write_predictions(preds[k : k + 20_000])
            for k in range(0, len(fb), 20_000):
                await store.write_feedback(fb[k : k + 20_000])

    asyncio.run(write())
    return len(fb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="feedback rows in the window")
    ap.add_argument("--train-rows", type=int, default=200_000, help="production's rows")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "retrain.json"))
    args = ap.parse_args()

    from training.synth import generate, write_table

    work = Path(tempfile.mkdtemp(prefix="intellilog-bench-retrain-"))
    env = _env(work)
    now = time.time()
    t0 = time.perf_counter()
    start = datetime.fromtimestamp(now - 10 * 7 * DAY, UTC).date().isoformat()
    write_table(generate(args.train_rows, seed=3, start=start, weeks=8), work / "prod.parquet")
    # a little over a week of rows, so that about --rows of them complete within it
    window = generate(int(args.rows * 1.02), seed=4, start=start, weeks=1)
    subprocess.run(
        [CLI, "train", "--data", str(work / "prod.parquet"), "--promote"],
        env=env,
        cwd=work,
        check=True,
        capture_output=True,
    )
    n_fb = _fill(env["DATABASE_URL"], window, now)
    setup_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    run = subprocess.run(
        [CLI, "retrain", "--json"], env=env, cwd=work, capture_output=True, text=True
    )
    retrain_s = time.perf_counter() - t1
    if run.returncode != 0:
        sys.exit(f"retrain failed ({run.returncode}): {run.stderr[-2000:]}")
    rec: dict[str, Any] = json.loads(run.stdout)

    t2 = time.perf_counter()
    subprocess.run(
        [CLI, "train", "--data", rec["data"]["path"], "--registry", str(work / "plain")],
        env=env,
        cwd=work,
        check=True,
        capture_output=True,
    )
    train_s = time.perf_counter() - t2
    result = {
        "rows_logged": window.num_rows,
        "feedback_rows": n_fb,
        "labelled_rows": rec["data"]["rows"]["labelled"],
        "used_rows": rec["data"]["rows"]["used"],
        "outcome": rec["outcome"],
        "retrain_seconds": round(retrain_s, 1),
        "train_same_rows_seconds": round(train_s, 1),
        "retrain_over_train": round(retrain_s / train_s, 2),
        "setup_seconds": round(setup_s, 1),
        "new_mae": rec["metrics"].get("new", {}).get("mae"),
        "production_mae": rec["metrics"].get("production", {}).get("mae"),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs, {sys.platform}, Python {sys.version.split()[0]}",
    }
    shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
