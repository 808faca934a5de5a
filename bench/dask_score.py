"""Scale-out scoring benchmark: ``score --dask`` on 1 and 2 local workers vs ``score``.

In a work folder (a temporary one unless ``--workdir``):

1. generate ``--rows`` deliveries (default 1,000,000, seed 1) into a Parquet file with
   row groups of ``--partition-rows`` rows (default 131,072: the scoring batch, so one
   Dask partition per batch of the single-machine path), and train a model on
   ``--train-rows`` other rows (``--max-rounds`` bounds the time), promoted;
2. **single machine**: :func:`server.score.score_file` in this process with every core
   (the ``score`` command's default) and with one thread;
3. for each ``--workers`` count (default 1 and 2): a ``distributed.LocalCluster``
   through :func:`server.distributed.connect` (``local:N``: N worker processes sharing
   the cores), then :func:`server.distributed.score_on_dask` twice: a cold pass (every
   worker loads and verifies the model, first numba calls) and warm passes (best of
   ``--passes``); per worker: its rows over the span from its first task's start to
   its last one's end;
4. the scheduler's own cost on the same cluster: as many trivial tasks as there are
   partitions, submitted together and gathered (overhead per partition, amortised), and
   one at a time (the round trip a task pays when nothing overlaps it).

Prints a Markdown table and the figures the Amdahl estimate in bench/RESULTS.md uses;
``--json PATH`` writes the raw figures. Ratios are measured in the same run; the machine
is shared, so the load average at the start is printed with them.

Run (about 1.5 min on 2 idle cores with the defaults)::

    .venv/bin/python bench/dask_score.py [--rows 1000000] [--workers 1,2] [--passes 2]
        [--partition-rows 131072] [--workdir DIR] [--json bench/results/dask_score.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kernels.errors import ModelLoadError  # noqa: E402
from kernels.spec import load_spec  # noqa: E402
from server.distributed import connect, score_on_dask  # noqa: E402
from server.models import load_model, served_check  # noqa: E402
from server.score import score_file  # noqa: E402
from training.job import train_job  # noqa: E402
from training.registry import Registry  # noqa: E402
from training.synth import generate, write_table  # noqa: E402
from training.train import TrainSettings  # noqa: E402


def make_input(path: Path, rows: int, row_group: int) -> None:
    if path.is_file():
        md = pq.ParquetFile(path).metadata
        if md.num_rows == rows and md.row_group(0).num_rows == min(rows, row_group):
            return
    pq.write_table(generate(rows, seed=1), path, row_group_size=row_group)


def ensure_model(work: Path, train_rows: int, max_rounds: int) -> Registry:
    reg = Registry(work / "registry")
    try:
        reg.resolve("production")
        return reg
    except ModelLoadError:
        pass
    data = work / f"train_{train_rows}.parquet"
    if not data.is_file():
        write_table(generate(train_rows, seed=0), data)
    train_job(
        data,
        load_spec(None),
        reg,
        TrainSettings(max_rounds=max_rounds),
        promote=True,
        out=sys.stderr,
        served_check=served_check(reg),
    )
    return reg


def single(reg: Registry, src: Path, out: Path, threads: int, batch: int, passes: int) -> dict:
    model = load_model(reg, "production", threads=threads)
    best: dict[str, Any] | None = None
    for _ in range(passes):
        r = score_file(src, out, model, batch_rows=batch, progress=False)
        if best is None or r.seconds < best["seconds"]:
            best = {"seconds": r.seconds, "rows_per_s": r.rows_per_s, "rows": r.rows_in}
    assert best is not None
    return best


def trivial(i: int) -> int:
    return i


def scheduler_overhead(client: Any, n: int) -> dict[str, float]:
    """Seconds per trivial task: n submitted together and gathered, and one at a time."""
    client.gather(client.map(trivial, range(n), pure=False))  # warm the function cache
    t0 = time.perf_counter()
    client.gather(client.map(trivial, range(n), pure=False))
    together = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for i in range(n):
        client.submit(trivial, i, pure=False).result()
    serial = (time.perf_counter() - t0) / n
    return {"per_task_batched_s": together, "per_task_round_trip_s": serial}


def on_dask(
    workers: int, reg: Registry, src: Path, out: Path, batch: int, passes: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    with connect(f"local:{workers}") as client:
        client.wait_for_workers(workers)
        start_s = time.perf_counter() - t0
        kw: dict[str, Any] = {"registry": reg.root, "batch_rows": batch, "progress": False}
        cold = score_on_dask(client, src, out, **kw)
        warm = None
        for _ in range(passes):
            r = score_on_dask(client, src, out, **kw)
            if warm is None or r.score.seconds < warm.score.seconds:
                warm = r
        assert warm is not None
        over = scheduler_overhead(client, warm.partitions)
    per = warm.per_worker
    return {
        "workers": workers,
        "cluster_start_s": start_s,
        "partitions": warm.partitions,
        "cold_seconds": cold.score.seconds,
        "seconds": warm.score.seconds,
        "rows_per_s": warm.score.rows_per_s,
        "per_worker_rows_per_s": {w: v["rows_per_s"] for w, v in per.items()},
        "per_worker_busy_s": {w: v["busy_s"] for w, v in per.items()},
        "per_worker_span_s": {w: v["span_s"] for w, v in per.items()},
        "engine_rows_per_s": warm.score.engine_rows_per_s,
        **over,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--train-rows", type=int, default=100_000)
    ap.add_argument("--max-rounds", type=int, default=300)
    ap.add_argument("--partition-rows", type=int, default=131_072)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--workdir")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-dask-"))
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    src = work / f"score_{args.rows}.parquet"
    make_input(src, args.rows, args.partition_rows)
    reg = ensure_model(work, args.train_rows, args.max_rounds)
    batch = args.partition_rows
    res: dict[str, Any] = {
        "rows": args.rows,
        "partition_rows": batch,
        "load_average_at_start": load0,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "single_all_cores": single(reg, src, work / "single.parquet", 0, batch, args.passes),
        "single_1_thread": single(reg, src, work / "single1.parquet", 1, batch, args.passes),
        "dask": [
            on_dask(int(w), reg, src, work / f"dask{w}", batch, args.passes)
            for w in args.workers.split(",")
        ],
    }
    # the outputs themselves: the Dask parts, in order, equal the single-machine file
    single_table = pq.read_table(work / "single.parquet")
    for d in res["dask"]:
        parts = sorted((work / f"dask{d['workers']}").glob("part-*.parquet"))
        dask_table = pa.concat_tables(pq.read_table(p) for p in parts)
        d["equal_to_single"] = dask_table.equals(single_table)
        if not d["equal_to_single"]:
            print(
                f"local:{d['workers']}: output differs from single-machine score", file=sys.stderr
            )
    base = res["single_all_cores"]["rows_per_s"]
    print(f"\n{args.rows:,} rows, partitions of {batch:,} rows, load average {load0:.2f}\n")
    print("| path | seconds | rows/s | vs single | per worker rows/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, key in (
        ("single, all cores", "single_all_cores"),
        ("single, 1 thread", "single_1_thread"),
    ):
        r = res[key]
        print(
            f"| {name} | {r['seconds']:.2f} | {r['rows_per_s']:,.0f} | {r['rows_per_s'] / base:.2f} | |"
        )
    for d in res["dask"]:
        per = ", ".join(f"{v:,.0f}" for v in d["per_worker_rows_per_s"].values())
        print(
            f"| dask local:{d['workers']} (warm; cold {d['cold_seconds']:.2f} s; "
            f"{'equal to' if d['equal_to_single'] else 'DIFFERS from'} single) | "
            f"{d['seconds']:.2f} | {d['rows_per_s']:,.0f} | {d['rows_per_s'] / base:.2f} | {per} |"
        )
    print("\n| cluster | start s | partitions | trivial task, batched | trivial task, round trip |")
    print("| --- | --- | --- | --- | --- |")
    for d in res["dask"]:
        print(
            f"| local:{d['workers']} | {d['cluster_start_s']:.2f} | {d['partitions']} | "
            f"{d['per_task_batched_s'] * 1e3:.2f} ms | {d['per_task_round_trip_s'] * 1e3:.2f} ms |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0 if all(d["equal_to_single"] for d in res["dask"]) else 1


if __name__ == "__main__":
    sys.exit(main())
