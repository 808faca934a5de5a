"""Feature pipeline speed: the batch kernel (``Pipeline.matrix`` on 20k rows, best of 30)
and the single-request path (``Pipeline.row`` on a decoded request struct, mean of 20k
calls). To compare two trees, run both in the same session, alternating:
``PYTHONPATH=<tree> .venv/bin/python bench/features.py LABEL`` (bench/RESULTS.md,
"Feature pipeline")."""

from __future__ import annotations

import sys
import time

import msgspec
import numpy as np

from kernels.features import Pipeline
from kernels.spec import default_spec
from training.io import learn_levels, to_columns
from training.synth import generate


def main(label: str) -> None:
    spec = default_spec()
    table = generate(200_000, seed=1)
    pipe = Pipeline(spec, learn_levels(table, spec))
    small = to_columns(table, pipe).columns.take(np.arange(20_000))
    pipe.matrix(small)
    best = float("inf")
    for _ in range(30):
        t0 = time.perf_counter()
        pipe.matrix(small)
        best = min(best, time.perf_counter() - t0)
    row = {k: v for k, v in table.slice(0, 1).to_pylist()[0].items() if k != spec.target}
    item = msgspec.json.decode(msgspec.json.encode(row), type=spec.request_struct)
    out = np.empty((1, pipe.n_features), np.float32)
    pipe.row(item, out)
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        pipe.row(item, out)
    one = (time.perf_counter() - t0) / n
    print(
        f"{label}: matrix 20k rows {best * 1e3:.2f} ms ({20_000 / best / 1e6:.2f}M rows/s); "
        f"row {one * 1e6:.2f} us"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "features")
