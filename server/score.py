"""Batch scoring: a file of deliveries in, ETAs out, in bounded memory.

Reads in batches, validates every row (refused rows go to a reject file with their
reason, never dropped silently), computes features with the same kernels as the
server, predicts with the chosen engine (batches of ``INTELLILOG_GPU_MIN_ROWS`` rows or
more on the GPU engine when there is one: :mod:`server.engines`; the report says which)
and streams the result to Parquet or CSV.
Reading and converting the next batch overlaps with predicting the current one.

The output and the reject file are streamed to temporary files beside them and renamed
into place only when the whole input is scored (:mod:`training.atomic`): a file at the
output path is always complete, and a failed run (full disk, ...) leaves the previous
files as they were.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kernels.errors import DataError
from server.models import LoadedModel
from training.atomic import AtomicOutput, output_error
from training.io import Converted, file_format, iter_batches, to_columns

__all__ = [
    "BatchScores",
    "ScoreReport",
    "default_reject_path",
    "empty_output",
    "key_column",
    "peak_rss_mb",
    "score_batch",
    "score_file",
]


@dataclass
class ScoreReport:
    rows_in: int
    rows_scored: int
    rows_rejected: int
    seconds: float
    engine_seconds: float
    peak_rss_mb: float
    model_version: str
    engine: str
    device: str
    out: str
    rejects: str | None
    # the GPU engine for large batches (Predictor.describe), or None and why not
    large_batch: dict[str, Any] | None = None
    large_batch_reason: str | None = None
    rows_gpu: int = 0  # rows scored by the large-batch GPU engine

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    @property
    def engine_rows_per_s(self) -> float:
        return self.rows_scored / self.engine_seconds if self.engine_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["rows_per_s"] = round(self.rows_per_s, 1)
        d["engine_rows_per_s"] = round(self.engine_rows_per_s, 1)
        return d

    def format(self) -> str:
        rej = f", {self.rows_rejected} rejected -> {self.rejects}" if self.rows_rejected else ""
        lb = self.large_batch
        if lb is not None:
            gpu = (
                f"\n  large batches (>= {lb['min_rows']} rows): {lb['engine']} on {lb['device']} "
                f"({lb['runtime']}), {self.rows_gpu} rows; rows with NaN on {lb['nan_rows']}"
            )
        else:
            gpu = f"\n  large batches: {self.engine} on {self.device}; no GPU engine: {self.large_batch_reason}"
        return (
            f"scored {self.rows_scored} of {self.rows_in} rows with model {self.model_version} "
            f"({self.engine} on {self.device}) in {self.seconds:.2f}s: {self.rows_per_s:,.0f} rows/s "
            f"end to end, engine {self.engine_rows_per_s:,.0f} rows/s; peak RSS {self.peak_rss_mb:.0f} MB"
            f"{rej}{gpu}\n  -> {self.out}"
        )


def default_reject_path(out: Path) -> Path:
    return out.with_name(out.stem + ".rejects.csv")


class _Writer:
    """A streamed Parquet or CSV output, written atomically (:mod:`training.atomic`):
    the file is made at the first :meth:`write` and appears at ``path`` only on
    :meth:`commit`. Every ``OSError`` becomes a one-line error naming ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fmt = file_format(path)
        self._w: Any = None
        self._out: AtomicOutput | None = None

    def start(self) -> AtomicOutput:
        """Make the temporary file now: a folder that cannot be written fails at once."""
        if self._out is None:
            self._out = AtomicOutput(self.path, make_parents=True)
        return self._out

    def write(self, table: pa.Table) -> None:
        tmp = self.start().tmp
        try:
            if self._w is None:
                if self.fmt == "parquet":
                    self._w = pq.ParquetWriter(tmp, table.schema)
                else:
                    self._w = pacsv.CSVWriter(tmp, table.schema)
            self._w.write_table(table)
        except OSError as exc:
            raise output_error(self.path, exc) from None

    def finish(self) -> None:
        """Close the writer (Parquet writes its footer here) and flush the file to disk."""
        if self._out is None:
            return
        try:
            self._w.close()
        except OSError as exc:
            raise output_error(self.path, exc) from None
        self._out.finish()

    def commit(self) -> None:
        if self._out is not None:
            self._out.commit()

    def discard(self) -> None:
        """Drop a partial output: close the writer, remove the temporary file."""
        if self._out is None:
            return
        if self._w is not None:
            with contextlib.suppress(Exception):
                self._w.close()
        self._out.discard()


def key_column(table: pa.Table, name: str) -> str | None:
    """The key column to copy to the output, if the file has it; plain values only."""
    if name not in table.column_names:
        return None
    t = table.schema.field(name).type
    if pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        raise DataError(
            f"key column {name!r} has type {t}; it must hold plain values (text or numbers)"
        )
    return name


def empty_output(key: str | None) -> pa.Table:
    """A scores table without rows: what is written when no row could be scored, so
    downstream jobs still see the schema (the one :func:`score_batch` makes)."""
    return pa.table(
        {
            (key or "row"): pa.array([], pa.string() if key else pa.int64()),
            "eta_minutes": pa.array([], pa.float64()),
            "eta_p10": pa.array([], pa.float64()),
            "eta_p90": pa.array([], pa.float64()),
            "model_version": pa.array([], pa.string()),
        }
    )


@dataclass
class BatchScores:
    """One batch scored by :func:`score_batch`."""

    key: str | None  # the key column copied to the output, or None: rows are numbered
    out: pa.Table | None  # the scores of the valid rows; None when there are none
    rejects: pa.Table | None  # row, key (if any), reason of each refused row; or None
    engine_s: float  # seconds in the engine


def score_batch(
    table: pa.Table,
    conv: Converted,
    model: LoadedModel,
    first_row: int,
    lock: AbstractContextManager[Any] | None = None,
) -> BatchScores:
    """Predict the valid rows of ``table`` (converted: ``conv``) and lay out the output
    and reject rows. Rows are numbered from ``first_row`` (the batch's first row in the
    file); the key column, when the file has one, is copied as text. ``lock`` is held
    around the engine call (a model shared by threads)."""
    key = key_column(table, model.pipe.spec.key)
    out = rejects = None
    engine_s = 0.0
    if conv.n_valid:
        X = model.pipe.matrix(conv.columns)
        with lock or contextlib.nullcontext():
            te = time.perf_counter()
            eta, p10, p90 = model.predict(X)
            engine_s = time.perf_counter() - te
        idx = np.flatnonzero(conv.valid)
        cols: dict[str, Any] = {}
        if key:
            cols[key] = table.column(key).take(pa.array(idx)).cast(pa.string())
        else:
            cols["row"] = pa.array(idx + first_row, pa.int64())
        cols["eta_minutes"] = pa.array(eta, pa.float64())
        cols["eta_p10"] = pa.array(p10, pa.float64())
        cols["eta_p90"] = pa.array(p90, pa.float64())
        cols["model_version"] = pa.array([model.version] * len(idx), pa.string())
        out = pa.table(cols)
    if len(conv.reject_rows):
        r = conv.reject_rows
        rcols: dict[str, Any] = {"row": pa.array(r + first_row, pa.int64())}
        if key:
            rcols[key] = table.column(key).take(pa.array(r)).cast(pa.string())
        rcols["reason"] = pa.array(conv.reject_reasons, pa.string())
        rejects = pa.table(rcols)
    return BatchScores(key, out, rejects, engine_s)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). ru_maxrss is not used first: on
    Linux it carries over the launching process's peak across exec."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def score_file(
    src: str | Path,
    dst: str | Path,
    model: LoadedModel,
    rejects: str | Path | None = None,
    batch_rows: int = 131_072,
    progress: bool = True,
    err: TextIO | None = None,
) -> ScoreReport:
    src, dst = Path(src), Path(dst)
    file_format(dst)
    if src.resolve() == dst.resolve():
        raise DataError(f"{dst}: the output would overwrite the input")
    rej_path = Path(rejects) if rejects is not None else default_reject_path(dst)
    spec = model.pipe.spec
    err = err or sys.stderr
    bar: Any = None

    def start_bar() -> Any:
        """The progress bar, made once the input has proved readable."""
        from tqdm import tqdm

        total = None
        if file_format(src) == "parquet":
            with contextlib.suppress(pa.ArrowException, OSError):
                total = pq.ParquetFile(src).metadata.num_rows
        return tqdm(
            total=total, unit="rows", unit_scale=True, file=err, desc="scoring", mininterval=0.5
        )

    def converted() -> Iterator[tuple[pa.Table, Converted]]:
        for table in iter_batches(src, spec, batch_rows=batch_rows):
            yield table, to_columns(table, model.pipe)

    out = _Writer(dst)
    rej = _Writer(rej_path)
    gpu_rows0 = model.predictor.large_rows
    t0 = time.perf_counter()
    engine_s = 0.0
    rows_in = scored = rejected = 0
    last_key: str | None = None
    first_row = 0
    # prefetch the next batch and write the last one (arrow I/O, conversion and Parquet
    # encoding release the GIL) while predicting; one write in flight at a time
    writing: Future[None] | None = None
    committed = False
    with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=1) as wpool:
        it = converted()
        fut = pool.submit(next, it, None)
        try:
            out.start()
            while True:
                item = fut.result()
                if item is None:
                    break
                fut = pool.submit(next, it, None)
                table, conv = item
                n = table.num_rows
                if bar is None and progress:
                    bar = start_bar()
                b = score_batch(table, conv, model, first_row)
                engine_s += b.engine_s
                if b.out is not None:
                    if writing is not None:
                        writing.result()
                    writing = wpool.submit(out.write, b.out)
                if b.rejects is not None:
                    rej.write(b.rejects)
                last_key = b.key
                rows_in += n
                scored += conv.n_valid
                rejected += len(conv.reject_rows)
                first_row += n
                if bar is not None:
                    bar.update(n)
            if writing is not None:
                writing.result()
            if scored == 0 and rows_in > 0:
                # still write an empty, well-formed output so downstream jobs see the schema
                out.write(empty_output(last_key))
            # a full disk shows up by here at the latest: both files are complete before
            # either appears, and the scores appear last (their presence means "done")
            out.finish()
            rej.finish()
            rej.commit()
            out.commit()
            committed = True
        finally:
            fut.cancel()
            if writing is not None and not writing.done():  # an error elsewhere: let it end
                with contextlib.suppress(Exception):
                    writing.result()
            if not committed:
                out.discard()
                rej.discard()
            if bar is not None:
                bar.close()
    described = model.describe()
    return ScoreReport(
        rows_in=rows_in,
        rows_scored=scored,
        rows_rejected=rejected,
        seconds=time.perf_counter() - t0,
        engine_seconds=engine_s,
        peak_rss_mb=peak_rss_mb(),
        model_version=model.version,
        engine=model.engine_name,
        device=model.device,
        out=str(dst),
        rejects=str(rej_path) if rejected else None,
        large_batch=described["large_batch"],
        large_batch_reason=described["large_batch_reason"],
        rows_gpu=model.predictor.large_rows - gpu_rows0,
    )
