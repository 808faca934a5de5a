"""Micro-benchmarks for the physical-limit estimate of ``bench/run.py``.

What a tree ensemble must do per row: visit ``V`` internal nodes (the sum over the
trees of the depth of the leaf reached; ``bench/models.py::node_visits``), each visit a
*dependent* step: load the node record (feature, threshold, children), load
``x[feature]``, compare, pick the child; the next visit's address depends on that
compare. Trees are independent of each other, so an out-of-order core can overlap the
walks of different trees (and of different rows) up to its load ports and window.

Measured here on this CPU, with numba (the compiled code is the same kind a scalar
tree kernel runs):

* ``chase_ns``: one dependent load (``i = next[i]`` over a random cycle) with the
  array in L1 (16 KiB), L2 (512 KiB) and DRAM (64 MiB): the load-to-use latency.
* ``visit_latency_ns[n]``: one dependent node visit, branch-free (the child is
  ``left + (right - left) * (x[f] > t)``, so no misprediction), one chain through a
  random graph of ``n`` 24-byte node records (``n`` = the model's internal node count,
  so the working set is the model's): the critical-path cost of one visit.
* ``visit_throughput_ns[n]``: the same step with ``CHAINS`` independent chains
  interleaved (as independent trees or rows are): time / visits, i.e. the cost of a
  visit when the core overlaps as many as it can. This is the per-visit figure of the
  limit estimate (a node-record walk that mispredicts nothing); a branchy walk pays
  ~15-20 cycles per mispredicted split on top, while code-generated trees (thresholds
  in the instructions, no node loads) can come in under it when their branches predict.
* ``call_floor_ns``: calling a trivial compiled function with a one-row ``[1, F]``
  float32 matrix from Python (numba's dispatcher): the cost any Python-called engine
  pays per call before it does any work.
* ``copy_gbs`` / ``read_gbs``: memory bandwidth of one core: ``np.copyto`` of a 256 MiB
  array (bytes read + bytes written per second) and a streaming ``sum`` over it.

Run: ``.venv/bin/python bench/limits.py [--nodes 3000,31000] [--quick]`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

CHAINS = 16
NODE = np.dtype(
    [("threshold", np.float64), ("feature", np.int32), ("left", np.int32), ("right", np.int32)],
    align=True,
)


@njit(cache=True)
def _chase(nxt: np.ndarray, steps: int) -> int:
    i = 0
    for _ in range(steps):
        i = nxt[i]
    return i


@njit(cache=True)
def _visit_chain(nodes: np.ndarray, x: np.ndarray, steps: int) -> int:
    n = 0
    for _ in range(steps):
        nd = nodes[n]
        go = np.int32(x[nd.feature] > nd.threshold)
        n = nd.left + (nd.right - nd.left) * go
    return n


@njit(cache=True)
def _visit_chains(nodes: np.ndarray, x: np.ndarray, steps: int, start: np.ndarray) -> int:
    k = start.shape[0]
    cur = start.copy()
    for _ in range(steps):
        for c in range(k):
            nd = nodes[cur[c]]
            go = np.int32(x[c, nd.feature] > nd.threshold)
            cur[c] = nd.left + (nd.right - nd.left) * go
    return int(cur.sum())


@njit(cache=True)
def _first(X: np.ndarray) -> float:
    return float(X[0, 0])


def _cycle(n: int, rng: np.random.Generator) -> np.ndarray:
    """``next[]`` of one random cycle through all ``n`` elements."""
    perm = rng.permutation(n)
    nxt = np.empty(n, dtype=np.int32)
    nxt[perm[:-1]] = perm[1:]
    nxt[perm[-1]] = perm[0]
    return nxt


def _best_ns(fn: Any, steps: int, reps: int) -> float:
    fn(1000)  # compile / warm
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn(steps)
        best = min(best, (time.perf_counter_ns() - t0) / steps)
    return best


def graph(n: int, features: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` node records with random features, thresholds ~ N(0, 1) and random
    children: a walk never ends and its direction is a coin flip at every node."""
    nodes = np.zeros(n, dtype=NODE)
    nodes["threshold"] = rng.normal(size=n)
    nodes["feature"] = rng.integers(0, features, n)
    nodes["left"] = rng.integers(0, n, n)
    nodes["right"] = rng.integers(0, n, n)
    return nodes


def cpu_ghz() -> float:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1e3
    except (OSError, ValueError):
        pass
    return float("nan")


def measure(node_counts: list[int], features: int = 20, quick: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    reps = 3 if quick else 7
    steps = 1_000_000 if quick else 4_000_000
    out: dict[str, Any] = {"ghz": cpu_ghz(), "chains": CHAINS, "reps": reps, "steps": steps}

    chase = {}
    for label, nbytes in (
        ("L1_16KiB", 16 << 10),
        ("L2_512KiB", 512 << 10),
        ("DRAM_64MiB", 64 << 20),
    ):
        nxt = _cycle(nbytes // 4, rng)
        s = steps if nbytes < (1 << 20) else steps // 4
        chase[label] = _best_ns(lambda k, nxt=nxt: _chase(nxt, k), s, reps)
    out["chase_ns"] = chase

    lat, thr = {}, {}
    for n in node_counts:
        nodes = graph(max(2, int(n)), features, rng)
        x1 = rng.normal(size=features)
        xs = rng.normal(size=(CHAINS, features))
        start = rng.integers(0, len(nodes), CHAINS).astype(np.int64)
        lat[str(n)] = _best_ns(
            lambda k, nodes=nodes, x1=x1: _visit_chain(nodes, x1, k), steps, reps
        )
        per = max(1, steps // CHAINS)
        thr[str(n)] = (
            _best_ns(
                lambda k, nodes=nodes, xs=xs, start=start: _visit_chains(nodes, xs, k, start),
                per,
                reps,
            )
            / CHAINS
        )
    out["visit_latency_ns"] = lat
    out["visit_throughput_ns"] = thr

    X = np.zeros((1, features), dtype=np.float32)
    _first(X)
    calls = 20_000 if quick else 100_000
    ts = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    for k in range(calls):
        t0 = clock()
        _first(X)
        ts[k] = clock() - t0
    # the clock pair itself costs a little; take it out
    empty = np.empty(calls, dtype=np.int64)
    for k in range(calls):
        t0 = clock()
        empty[k] = clock() - t0
    out["call_floor_ns"] = float(np.median(ts) - np.median(empty))
    out["clock_ns"] = float(np.median(empty))

    nbytes = (64 if quick else 256) << 20
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    best_copy = best_read = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best_copy = min(best_copy, time.perf_counter() - t0)
        t0 = time.perf_counter()
        src.sum()
        best_read = min(best_read, time.perf_counter() - t0)
    out["copy_gbs"] = 2 * nbytes / best_copy / 1e9
    out["read_gbs"] = nbytes / best_read / 1e9
    out["bandwidth_array_mib"] = nbytes >> 20
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="physical-limit micro-benchmarks (JSON to stdout)")
    ap.add_argument("--nodes", default="3000,31000", help="node-graph sizes (comma separated)")
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    nodes = [int(v) for v in args.nodes.split(",") if v]
    print(json.dumps(measure(nodes, args.features, args.quick), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
