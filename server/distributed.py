"""Scale-out batch scoring and training on a Dask cluster (the optional extra ``dask``).

The one module that imports ``dask``, ``distributed`` and ``lightgbm.dask``; without
them every entry point raises "install `intellilog[dask]`" (:func:`require_dask`).

**Scoring** (``intellilog score IN --out OUT --dask local:N|tcp://HOST:8786``): the input
(a file, or a folder of ``.parquet``/``.csv`` files taken in name order) is cut into
partitions, one per Parquet row group and one per CSV block of the size the
single-machine reader uses (whole lines, so no row is cut; a quoted value holding a
line break that crosses a block end is refused with a one-line error saying so). Each partition is read,
validated (:func:`training.io.to_columns`) and predicted on a worker by the same code
the single-machine path runs, with the model loaded once per worker process (a cache
keyed by registry, version, the manifest's SHA-256 and engine; loading verifies every
checksum, so a corrupted file is refused on the worker that reads it). Row numbers of a
CSV block are only known once the blocks before it are parsed, so each scored partition
waits on its worker until the row count of every earlier partition is in, then is
written with its rows shifted to file-wide numbers: ``OUT/part-00000.parquet``, ... (a
hidden temporary name, renamed when complete). Refused rows go to
``OUT.rejects/part-NNNNN.parquet`` (beside ``OUT``, as the single-machine
``OUT.rejects.csv``: a folder inside ``OUT`` would be read back as result rows by
pyarrow, pandas and dask dataset readers), numbered like the partition they come from.
Rows are numbered across the files of a folder as if they were one file.
``OUT/_SUCCESS`` (the report as JSON; ignored by those readers) is written last, and
parts left over from an earlier run of the same ``OUT`` are removed then. Read in
partition order, the parts equal the single-machine output row for row and bit for bit:
every row is validated, featurised and predicted on its own, so the cut does not matter.

Paths are the workers' paths: with ``tcp://`` the input, the output and the registry
must be on storage every worker mounts at the same place, and the workers need
intellilog installed.

**Training** (``intellilog train --dask ...``): :class:`DaskFit` is the ``fit`` of
:func:`training.train.fit_models`. What differs from single-machine training:

* The client still reads the file, runs the quality gate, learns the levels and splits
  by time (the whole table passes through it); the workers build the feature matrix of
  their share of the training rows with the same kernels (checked against the client's
  by SHA-256) and LightGBM trains data-parallel across them.
* LightGBM's distributed histogram building is not bit-identical to single-machine
  training: each worker finds the bin boundaries of some features from its own rows, and
  bagging draws per worker. The trees differ; the holdout quality is the same within
  noise (the test asks for a few percent of MAE).
* ``lightgbm.dask`` has no early stopping (it can hang: LightGBM issues 3712, 7009), so
  every model trains ``--max-rounds`` rounds and the client then picks the best
  iteration with LightGBM's own rule (first best score, stop after ``early_stopping``
  rounds without improvement) on the same early-stopping rows, and keeps only those
  trees. That costs the rounds single-machine training would have skipped: set
  ``--max-rounds`` near the expected best.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO
from urllib.parse import urlsplit

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kernels.errors import ConfigError, DataError, IntelliLogError, ModelLoadError
from kernels.features import Columns, Pipeline
from kernels.spec import FeatureSpec
from server.config import DEFAULT_ENGINE
from server.models import LoadedModel, load_model
from server.score import (
    ScoreReport,
    empty_output,
    key_column,
    peak_rss_mb,
    score_batch,
)
from training.atomic import output_error, write_text_atomic
from training.io import (
    check_columns,
    check_readable,
    csv_block_size,
    csv_header,
    file_format,
    read_csv_block,
    to_columns,
    write_table,
)
from training.registry import MANIFEST, Registry
from training.train import Prepared, TrainSettings

__all__ = [
    "DaskAddress",
    "DaskFit",
    "DaskScoreReport",
    "best_iteration",
    "connect",
    "default_rejects_folder",
    "has_dask",
    "parse_address",
    "require_dask",
    "score_on_dask",
]

_INSTALL = "install `intellilog[dask]` for {what} (dask and distributed are missing: {err})"
_PART = re.compile(r"^part-(\d+)\.parquet$")
_INPUT_SUFFIXES = (".parquet", ".pq", ".csv")
#: Seconds to wait for a ``tcp://`` scheduler to answer and for its first worker.
CONNECT_TIMEOUT_S = 10.0


# ---- the optional import -----------------------------------------------------------------------


def has_dask() -> bool:
    """True when ``dask`` and ``distributed`` are installed (nothing is imported)."""
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in ("dask", "distributed"))
    except (ImportError, ValueError):
        return False


def require_dask(what: str = "--dask") -> ModuleType:
    """Import and return ``distributed``; ConfigError("install `intellilog[dask]` ...")
    when it (or ``dask.dataframe``, which lightgbm.dask needs) is missing or broken."""
    try:
        import dask.array
        import dask.dataframe  # noqa: F401  (lightgbm.dask needs it; fail here, not later)
        import distributed
    except Exception as exc:  # ImportError, or a broken install
        raise ConfigError(_INSTALL.format(what=what, err=f"{type(exc).__name__}: {exc}")) from exc
    return distributed


def _lightgbm_dask() -> tuple[ModuleType, ModuleType, ModuleType]:
    """``(lightgbm.dask, dask, dask.array)``, or the install message."""
    require_dask("train --dask")
    try:
        import dask
        import dask.array as da
        import lightgbm.dask as lgb_dask
    except Exception as exc:
        raise ConfigError(
            _INSTALL.format(what="train --dask", err=f"{type(exc).__name__}: {exc}")
        ) from exc
    return lgb_dask, dask, da


# ---- where the cluster is ----------------------------------------------------------------------


@dataclass(frozen=True)
class DaskAddress:
    """``local:N`` (N worker processes started here) or a running scheduler's address."""

    text: str
    local_workers: int | None = None
    scheduler: str | None = None


def parse_address(text: str, option: str = "--dask") -> DaskAddress:
    """Parse ``local:N`` or ``tcp://HOST:PORT`` (``tls://`` too); ConfigError naming the
    option otherwise."""
    t = text.strip()
    usage = "use local:N (N worker processes on this machine) or tcp://HOST:PORT (a scheduler)"
    if t.startswith("local:"):
        n = t[len("local:") :]
        if not n.isdigit() or int(n) < 1:
            raise ConfigError(f"{option}={text!r}: local:N needs a whole number N >= 1; {usage}")
        return DaskAddress(t, local_workers=int(n))
    if t.startswith(("tcp://", "tls://")):
        u = urlsplit(t)
        try:
            port = u.port
        except ValueError:
            port = None
        if not u.hostname or port is None or u.path not in ("", "/"):
            raise ConfigError(f"{option}={text!r}: expected tcp://HOST:PORT; {usage}")
        return DaskAddress(t, scheduler=f"{u.scheme}://{u.netloc}")
    raise ConfigError(f"{option}={text!r}: {usage}")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def connect(address: str | DaskAddress, option: str = "--dask") -> Iterator[Any]:
    """A ``distributed.Client`` for ``address``, closed (with the cluster it started) on exit.

    ``local:N`` starts a ``LocalCluster`` of N worker processes sharing this machine's
    cores (each worker gets cores // N threads, at least one); its workers' own logs are
    kept quiet, since every failure reaches the caller as an exception.
    """
    a = address if isinstance(address, DaskAddress) else parse_address(address, option)
    distributed = require_dask(option)
    if a.local_workers is not None:
        cluster = distributed.LocalCluster(
            n_workers=a.local_workers,
            threads_per_worker=max(1, _cores() // a.local_workers),
            processes=True,
            dashboard_address=":0",  # any free port (None still claims 8787 for /health)
            silence_logs=logging.CRITICAL,
        )
        try:
            client = distributed.Client(cluster)
            try:
                client.run(_stdout_to_stderr)
                yield client
            finally:
                client.close()
        finally:
            cluster.close()
        return
    try:
        client = distributed.Client(a.scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"{option}={a.text!r}: cannot reach the Dask scheduler: {exc}") from None
    try:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            raise ConfigError(
                f"{option}={a.text!r}: the scheduler has no workers (waited {CONNECT_TIMEOUT_S:g}s)"
            ) from None
        yield client
    finally:
        client.close()


def _stdout_to_stderr() -> None:
    """(On each local worker.) Its stdout is this command's stdout, where ``--json``
    goes, and LightGBM's network set-up prints there from C++ ("Listening...", with a
    per-thread log callback Python cannot reach): send the worker's fd 1 to stderr."""
    import sys

    sys.stdout.flush()
    os.dup2(2, 1)


def _workers(client: Any) -> list[str]:
    return sorted(client.scheduler_info(n_workers=-1)["workers"])


def _worker_name() -> str:
    try:
        import distributed

        return str(distributed.get_worker().address)
    except (ImportError, ValueError):
        return f"process {os.getpid()}"


def _worker_threads() -> int:
    try:
        import distributed

        return max(1, int(distributed.get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


# ---- the model on a worker ---------------------------------------------------------------------


@dataclass(frozen=True)
class _ModelRef:
    """What a worker loads: resolved once on the cluster, so every worker serves the same
    version even if an alias moves while the job runs."""

    registry: str
    version: str
    manifest_sha256: str
    engine: str
    threads: int  # 0: the worker's threads
    allow_gpu: bool | None
    gpu_min_rows: int | None


_MODELS: dict[_ModelRef, tuple[LoadedModel, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()
_MODELS_KEPT = 2  # versions a long-lived worker keeps loaded


def _manifest_sha256(registry: Registry, version: str) -> str:
    try:
        return hashlib.sha256((registry.path(version) / MANIFEST).read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelLoadError(f"model {version}: cannot read its {MANIFEST}: {exc}") from None


def _model(ref: _ModelRef) -> tuple[LoadedModel, threading.Lock]:
    """This process's copy of the model (loaded and checksum-verified on first use), and
    the lock that serialises predictions on it (the engine uses the worker's threads)."""
    with _MODELS_LOCK:
        hit = _MODELS.get(ref)
        if hit is not None:
            return hit
        where = f"on Dask worker {_worker_name()}"
        try:
            reg = Registry(ref.registry)
            sha = _manifest_sha256(reg, ref.version)
            if sha != ref.manifest_sha256:
                raise ModelLoadError(
                    f"model {ref.version}: {MANIFEST} is not the one the job resolved "
                    f"(SHA-256 {sha[:12]} vs {ref.manifest_sha256[:12]}); is {ref.registry} the "
                    "same folder on every worker?"
                )
            model = load_model(
                reg,
                ref.version,
                engine=ref.engine,
                threads=ref.threads or _worker_threads(),
                allow_gpu=ref.allow_gpu,
                gpu_min_rows=ref.gpu_min_rows,
            )
        except ModelLoadError as exc:
            raise ModelLoadError(f"{where}: {exc}") from None
        while len(_MODELS) >= _MODELS_KEPT:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[ref] = (model, threading.Lock())
        return _MODELS[ref]


def _resolve(
    registry: str,
    ref: str,
    engine: str,
    threads: int,
    spec: FeatureSpec | None,
    allow_gpu: bool | None,
    gpu_min_rows: int | None,
) -> tuple[_ModelRef, FeatureSpec]:
    """(On a worker.) Alias to version, pinned by its manifest's hash; loads it there."""
    reg = Registry(registry)
    try:
        version = reg.resolve(ref)
        m = _ModelRef(
            registry,
            version,
            _manifest_sha256(reg, version),
            engine,
            threads,
            allow_gpu,
            gpu_min_rows,
        )
    except ModelLoadError as exc:
        raise ModelLoadError(f"on Dask worker {_worker_name()}: {exc}") from None
    model, _ = _model(m)
    trained = model.pipe.spec
    if spec is not None and spec.hash != trained.hash:  # as load_model says it
        raise ModelLoadError(
            f"model {version} was trained with spec {trained.name!r} (hash {trained.hash}); "
            f"the given spec {spec.name!r} has hash {spec.hash}: use the model's spec or retrain"
        )
    return m, trained


# ---- partitions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """One partition: a Parquet row group, or a CSV byte range of whole lines."""

    index: int
    path: str
    kind: str  # "parquet" | "csv"
    row_group: int = -1
    start: int = 0
    end: int = 0
    header: bytes = b""  # the CSV header line, parsed again with every block
    names: tuple[str, ...] = ()
    rows: int | None = None  # known up front for Parquet


def _input_files(src: Path) -> list[Path]:
    if src.is_dir():
        files = sorted(
            p for p in src.iterdir() if p.suffix.lower() in _INPUT_SUFFIXES and p.is_file()
        )
        files = [p for p in files if not p.name.startswith((".", "_"))]
        if not files:
            raise DataError(f"{src}: folder holds no .parquet or .csv files")
        return files
    check_readable(src)
    file_format(src)
    return [src]


def _line_end(f: Any, pos: int, size: int) -> int:
    """The offset just after the first newline at or after ``pos`` (``size`` if none)."""
    f.seek(pos)
    while pos < size:
        chunk = f.read(1 << 16)
        if not chunk:
            break
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(chunk)
    return size


def _plan(src: str, spec: FeatureSpec, batch_rows: int) -> list[_Part]:
    """(On a worker.) The partitions of ``src``; reads only metadata, headers and the
    bytes around CSV block ends. Checks columns as the single-machine reader does."""
    parts: list[_Part] = []
    block = csv_block_size(batch_rows)  # the single-machine CSV reader's
    for p in _input_files(Path(src)):
        kind = file_format(p)
        try:
            if kind == "parquet":
                pf = pq.ParquetFile(p)
                check_columns(p, pf.schema_arrow.names, spec, False)
                for rg in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(rg).num_rows
                    parts.append(_Part(len(parts), str(p), kind, row_group=rg, rows=n))
            else:
                names = csv_header(p)
                check_columns(p, names, spec, False)
                size = p.stat().st_size
                with p.open("rb") as f:
                    start = _line_end(f, 0, size)
                    f.seek(0)
                    header = f.read(start)
                    while start < size:
                        end = _line_end(f, min(size, start + block), size)
                        parts.append(
                            _Part(
                                len(parts),
                                str(p),
                                kind,
                                start=start,
                                end=end,
                                header=header,
                                names=tuple(names),
                            )
                        )
                        start = end
        except DataError:
            raise
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise DataError(f"{p}: cannot read {kind}: {str(exc).splitlines()[0]}") from None
    return parts


def _read_part(part: _Part, spec: FeatureSpec, batch_rows: int) -> Iterator[pa.Table]:
    """The partition's rows, read as :func:`training.io.iter_batches` reads them."""
    p = Path(part.path)
    try:
        if part.kind == "parquet":
            pf = pq.ParquetFile(p, pre_buffer=False)
            for rb in pf.iter_batches(batch_size=batch_rows, row_groups=[part.row_group]):
                yield pa.Table.from_batches([rb])
            return
        with p.open("rb") as f:
            f.seek(part.start)
            body = f.read(part.end - part.start)
        if body.count(b'"') % 2:
            raise DataError(
                f"{p}: a quoted value with a line break crosses byte {part.end} (a block "
                "boundary); score this file without --dask or convert it to Parquet"
            )
        yield read_csv_block(part.header + body, part.names, spec)
    except DataError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        where = (
            f" (in the block of bytes {part.start}..{part.end}: a quoted value with a line "
            "break may cross a block boundary; score without --dask or convert to Parquet)"
            if part.kind == "csv" and isinstance(exc, pa.ArrowInvalid)
            else ""
        )
        raise DataError(
            f"{p}: cannot read {part.kind}: {str(exc).splitlines()[0]}{where}"
        ) from None


@dataclass(frozen=True)
class _PartStats:
    """What one partition's tasks did; completed by :func:`_write_part`."""

    index: int
    rows: int
    scored: int
    rejected: int
    engine_s: float
    busy_s: float  # read + score (+ write, once written) seconds
    worker: str
    rows_gpu: int
    describe: dict[str, Any]
    started: float  # wall clock (time.time) on the worker: scoring began
    ended: float = 0.0  # writing ended
    rss_mb: float = 0.0  # the worker's peak RSS once written


@dataclass(frozen=True)
class _Scored:
    """A scored partition, kept on its worker until its first row number is known."""

    stats: _PartStats
    out: pa.Table  # "row" numbered from 0 within the partition when there is no key column
    rejects: pa.Table | None  # "row" numbered from 0 within the partition


def _score_part(part: _Part, ref: _ModelRef, batch_rows: int) -> _Scored:
    """(On a worker.) Read, validate, featurise and predict one partition with
    :func:`server.score.score_batch`, as :func:`server.score.score_file` does each batch,
    with partition-local row numbers."""
    t0, started = time.perf_counter(), time.time()
    model, lock = _model(ref)
    spec = model.pipe.spec
    gpu0 = model.predictor.large_rows
    outs: list[pa.Table] = []
    rejs: list[pa.Table] = []
    first_row = scored = rejected = 0
    engine_s = 0.0
    key: str | None = None
    for table in _read_part(part, spec, batch_rows):
        conv = to_columns(table, model.pipe)
        b = score_batch(table, conv, model, first_row, lock)
        key = b.key
        engine_s += b.engine_s
        if b.out is not None:
            outs.append(b.out)
        if b.rejects is not None:
            rejs.append(b.rejects)
        first_row += table.num_rows
        scored += conv.n_valid
        rejected += len(conv.reject_rows)
    if key is None and part.kind == "parquet":  # no batch: the key from the file's schema
        key = key_column(pq.read_schema(part.path).empty_table(), spec.key)
    out = pa.concat_tables(outs) if outs else empty_output(key)
    stats = _PartStats(
        index=part.index,
        rows=first_row,
        scored=scored,
        rejected=rejected,
        engine_s=engine_s,
        busy_s=time.perf_counter() - t0,
        worker=_worker_name(),
        rows_gpu=model.predictor.large_rows - gpu0,
        describe=model.describe(),
        started=started,
    )
    return _Scored(stats, out, pa.concat_tables(rejs) if rejs else None)


def _rows_of(s: _Scored) -> int:
    return s.stats.rows


def _part_name(index: int, width: int) -> str:
    return f"part-{index:0{width}d}.parquet"


def _shift_rows(table: pa.Table, offset: int) -> pa.Table:
    if "row" not in table.column_names or offset == 0:
        return table
    i = table.column_names.index("row")
    return table.set_column(i, "row", pc.add(table.column("row"), pa.scalar(offset, pa.int64())))


def _write_part(s: _Scored, offset: int, out: str, rejects: str, width: int) -> _PartStats:
    """(On the worker that holds ``s``.) File-wide row numbers, then write and rename."""
    t0 = time.perf_counter()
    name = _part_name(s.stats.index, width)
    write_table(_shift_rows(s.out, offset), Path(out) / name)
    if s.rejects is not None:
        write_table(_shift_rows(s.rejects, offset), Path(rejects) / name)
    return replace(
        s.stats,
        busy_s=s.stats.busy_s + time.perf_counter() - t0,
        ended=time.time(),
        rss_mb=peak_rss_mb(),
    )


def _prepare_out(out: str, rejects: str) -> None:
    """(On a worker.) The output folder exists and no longer claims to be complete."""
    for folder in (Path(out), Path(rejects)):
        if folder.exists() and not folder.is_dir():
            raise DataError(f"{folder}: is a file; --dask writes a folder of Parquet parts")
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "_SUCCESS").unlink(missing_ok=True)
    except OSError as exc:
        raise output_error(out, exc) from None


def _finish_out(
    out: str, rejects: str, keep: list[str], keep_rejects: list[str], report: str
) -> None:
    """(On a worker.) Remove parts an earlier run left, then write ``_SUCCESS``."""
    for folder, names in ((Path(out), set(keep)), (Path(rejects), set(keep_rejects))):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            # temporary files of writes a killed run left (training.atomic's names)
            stale_tmp = p.name.startswith((".part-", "._SUCCESS.")) and p.name.endswith(".tmp")
            if (_PART.match(p.name) and p.name not in names) or stale_tmp:
                p.unlink(missing_ok=True)
        if folder != Path(out) and not any(folder.iterdir()):
            folder.rmdir()
    write_text_atomic(Path(out) / "_SUCCESS", report)


# ---- scoring: the client side ------------------------------------------------------------------


@dataclass
class DaskScoreReport:
    """The single-machine report's totals, plus what the cluster did."""

    score: ScoreReport
    scheduler: str
    workers: int
    partitions: int
    #: per worker address: partitions, rows, busy_s (its tasks' read + score + write
    #: seconds, summed), span_s (its first task's start to its last one's end) and
    #: rows_per_s (rows / span_s: the worker's throughput, whatever its thread count)
    per_worker: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.score.rows_per_s

    def to_dict(self) -> dict[str, Any]:
        d = self.score.to_dict()
        d["dask"] = {
            "scheduler": self.scheduler,
            "workers": self.workers,
            "partitions": self.partitions,
            "per_worker": self.per_worker,
        }
        return d

    def format(self) -> str:
        per = ", ".join(
            f"{w}: {int(v['rows'])} rows in {_n(int(v['partitions']), 'partition')}, "
            f"{v['rows_per_s']:,.0f} rows/s"
            for w, v in self.per_worker.items()
        )
        return (
            f"{self.score.format()}\n  on Dask ({self.scheduler}): {_n(self.workers, 'worker')}, "
            f"{_n(self.partitions, 'partition')}; {per}"
        )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _abs(p: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(p))))


def default_rejects_folder(out: Path) -> Path:
    """``OUT.rejects`` beside the output folder (``OUT`` without its suffix)."""
    return out.with_name(out.stem + ".rejects")


def score_on_dask(
    client: Any,
    src: str | Path,
    out: str | Path,
    *,
    registry: str | Path,
    model: str = "production",
    engine: str = DEFAULT_ENGINE,
    threads: int = 0,
    spec: FeatureSpec | None = None,
    rejects: str | Path | None = None,
    batch_rows: int = 131_072,
    progress: bool = True,
    allow_gpu: bool | None = None,
    gpu_min_rows: int | None = None,
    err: TextIO | None = None,
) -> DaskScoreReport:
    """Score ``src`` (a file or a folder of files) into the folder ``out`` on the cluster
    of ``client`` (module docstring). ``threads`` are the engine's threads per worker
    (0: the worker's own thread count). Errors of the workers arrive as they were raised
    there (DataError, ModelLoadError, ... : one line each)."""
    import sys

    distributed = require_dask()
    err = err or sys.stderr
    src_p, out_p = _abs(src), _abs(out)
    rej_p = _abs(rejects) if rejects is not None else default_rejects_folder(out_p)
    if src_p in (out_p, rej_p):
        raise DataError(f"{src_p}: the output would overwrite the input")
    if out_p == rej_p:
        raise DataError(f"{rej_p}: the rejects folder cannot be the output folder")
    t0 = time.perf_counter()
    ref, mspec = client.submit(
        _resolve,
        str(_abs(registry)),
        model,
        engine,
        threads,
        spec,
        allow_gpu,
        gpu_min_rows,
        pure=False,
    ).result()
    parts: list[_Part] = client.submit(_plan, str(src_p), mspec, batch_rows, pure=False).result()
    if not parts:
        raise DataError(f"{src_p}: no rows")
    client.submit(_prepare_out, str(out_p), str(rej_p), pure=False).result()
    width = max(5, len(str(len(parts) - 1)))
    token = uuid.uuid4().hex[:8]
    scored = [
        client.submit(
            _score_part, p, ref, batch_rows, key=f"intellilog-score-{token}-{p.index:0{width}d}"
        )
        for p in parts
    ]
    counts = {
        client.submit(_rows_of, s, key=f"intellilog-rows-{token}-{i:0{width}d}"): i
        for i, s in enumerate(scored)
    }
    known: dict[int, int] = {}
    writes: list[Any] = []
    bar: Any = None
    if progress:
        from tqdm import tqdm

        total = None if any(p.rows is None for p in parts) else sum(p.rows or 0 for p in parts)
        bar = tqdm(total=total, unit="rows", unit_scale=True, file=err, desc="scoring")
    offset = 0
    try:
        for fut in distributed.as_completed(list(counts)):
            i = counts[fut]
            known[i] = fut.result()
            if bar is not None:
                bar.update(known[i])
            while len(writes) in known:  # the next partition in order has its first row
                j = len(writes)
                writes.append(
                    client.submit(
                        _write_part,
                        scored[j],
                        offset,
                        str(out_p),
                        str(rej_p),
                        width,
                        key=f"intellilog-write-{token}-{j:0{width}d}",
                    )
                )
                offset += known[j]
                scored[j] = None  # the write holds it now; released once written
        done: list[_PartStats] = client.gather(writes)
    except distributed.KilledWorker as exc:
        raise IntelliLogError(
            f"a Dask worker died while scoring {src_p} ({exc}); out of memory? a smaller "
            "--batch-rows or more workers may help"
        ) from None
    finally:
        if bar is not None:
            bar.close()
        client.cancel([f for f in [*scored, *counts, *writes] if f is not None])
    rows_in = sum(w.rows for w in done)
    if rows_in == 0:
        raise DataError(f"{src_p}: no rows")
    seconds = time.perf_counter() - t0
    rejected = sum(w.rejected for w in done)
    per: dict[str, dict[str, float]] = {}
    for w in done:
        v = per.setdefault(
            w.worker,
            {"partitions": 0, "rows": 0, "busy_s": 0.0, "start": w.started, "end": w.ended},
        )
        v["partitions"] += 1
        v["rows"] += w.rows
        v["busy_s"] += w.busy_s
        v["start"], v["end"] = min(v["start"], w.started), max(v["end"], w.ended)
    for v in per.values():
        span = v.pop("end") - v.pop("start")
        v["span_s"] = round(span, 3)
        v["rows_per_s"] = round(v["rows"] / span, 1) if span > 0 else 0.0
        v["busy_s"] = round(v["busy_s"], 3)
    first = done[0].describe
    report = DaskScoreReport(
        score=ScoreReport(
            rows_in=rows_in,
            rows_scored=sum(w.scored for w in done),
            rows_rejected=rejected,
            seconds=seconds,
            engine_seconds=sum(w.engine_s for w in done),
            peak_rss_mb=max(w.rss_mb for w in done),
            model_version=ref.version,
            engine=ref.engine,
            device=str(first.get("device", "cpu")),
            out=str(out_p),
            rejects=str(rej_p) if rejected else None,
            large_batch=first.get("large_batch"),
            large_batch_reason=first.get("large_batch_reason"),
            rows_gpu=sum(w.rows_gpu for w in done),
        ),
        scheduler=str(client.scheduler.address),
        workers=len(_workers(client)),
        partitions=len(parts),
        per_worker=dict(sorted(per.items())),
    )
    client.submit(
        _finish_out,
        str(out_p),
        str(rej_p),
        [_part_name(w.index, width) for w in done],
        [_part_name(w.index, width) for w in done if w.rejected],
        json.dumps(report.to_dict(), indent=2),
        pure=False,
    ).result()
    return report


# ---- training ----------------------------------------------------------------------------------

_METRIC_OF_OBJECTIVE = {"regression": "l2", "regression_l1": "l1", "huber": "l1", "fair": "fair"}


def _metric(name: str, y: np.ndarray, p: np.ndarray, params: dict[str, Any]) -> float:
    r = y - p
    if name == "l1":
        return float(np.mean(np.abs(r)))
    if name == "l2":
        return float(np.mean(r * r))
    if name == "quantile":
        a = float(params["alpha"])
        return float(np.mean(np.where(r >= 0, a * r, (a - 1.0) * r)))
    if name == "fair":
        c = float(params.get("fair_c", 1.0))
        x = np.abs(r) / c
        return float(np.mean(c * c * (x - np.log1p(x))))
    raise ConfigError(f"no early-stopping metric {name!r} for distributed training")


def best_iteration(
    booster: lgb.Booster, X: np.ndarray, y: np.ndarray, params: dict[str, Any], patience: int
) -> int:
    """The iteration LightGBM's ``early_stopping(patience)`` callback would have kept,
    found after training on the early-stopping rows ``X, y`` (1-based).

    Scores every prefix of the trees with the params' metric (``metric``, or the
    objective's own), keeps the first best and stops ``patience`` rounds after it.
    """
    name = params.get("metric") or _METRIC_OF_OBJECTIVE.get(params["objective"], "l2")
    pred = np.zeros(len(y), dtype=np.float64)
    best, best_i = np.inf, 0
    for i in range(booster.current_iteration()):
        pred += booster.predict(X, start_iteration=i, num_iteration=1, raw_score=True)
        s = _metric(name, y, pred, params)
        if i == 0 or s < best:
            best, best_i = s, i
        elif i - best_i >= patience:
            break
    return best_i + 1


def _features(pipe: Pipeline, cols: Columns) -> np.ndarray:
    """(On a worker.) The partition's feature matrix, by the spec's kernels."""
    return pipe.matrix(cols)


def _digest(X: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(X).tobytes()).hexdigest()


class DaskFit:
    """The ``fit`` of :func:`training.train.fit_models` on a Dask cluster (module
    docstring: what differs from single-machine training, and why).

    The training rows are dealt to the workers in turn (row i to worker i mod W, so every
    worker sees every period); each worker builds its features with the spec's kernels
    once, and the three models (eta, p10, p90) train on the same partitions.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.workers = _workers(client)
        self.description = f"lightgbm.dask data-parallel on {len(self.workers)} workers"
        self._data: tuple[int, Any, Any, list[Any]] | None = None

    def _partitions(self, prep: Prepared) -> tuple[Any, Any]:
        if self._data is not None and self._data[0] == id(prep):
            return self._data[1], self._data[2]
        _lgb_dask, dask, da = _lightgbm_dask()
        tr = prep.train_idx
        # X row -> row of converted.columns (valid rows in input order)
        pos = np.searchsorted(np.flatnonzero(prep.converted.valid), prep.rows)
        F = prep.X.shape[1]
        xs, ys, futures, checks = [], [], [], []
        for k, w in enumerate(self.workers):
            idx = tr[k :: len(self.workers)]
            if len(idx) == 0:
                continue
            cols_f, y_f = self.client.scatter(
                [prep.converted.columns.take(pos[idx]), prep.y[idx]], workers=[w]
            )
            x_f = self.client.submit(_features, prep.pipe, cols_f, workers=[w], pure=False)
            checks.append((w, idx, self.client.submit(_digest, x_f, workers=[w], pure=False)))
            futures += [cols_f, y_f, x_f]
            xs.append(da.from_delayed(dask.delayed(x_f), shape=(len(idx), F), dtype=np.float32))
            ys.append(da.from_delayed(dask.delayed(y_f), shape=(len(idx),), dtype=np.float64))
        for w, idx, d in checks:
            if d.result() != _digest(prep.X[idx]):
                raise IntelliLogError(
                    f"features built on Dask worker {w} differ from the client's for the same "
                    "rows: the workers run another intellilog or numba version"
                )
        self._data = (id(prep), da.concatenate(xs), da.concatenate(ys), futures)
        return self._data[1], self._data[2]

    def __call__(
        self,
        name: str,
        params: dict[str, Any],
        prep: Prepared,
        settings: TrainSettings,
        out: TextIO | None = None,
    ) -> lgb.Booster:
        lgb_dask, _dask, _da = _lightgbm_dask()
        X, y = self._partitions(prep)
        # lightgbm.dask sets the threads per worker itself; there is no eval set to score
        p = {k: v for k, v in params.items() if k not in ("num_threads", "metric")}
        t0 = time.perf_counter()
        model = lgb_dask.DaskLGBMRegressor(
            client=self.client, n_estimators=settings.max_rounds, **p
        )
        # lightgbm.dask prints its set-up on stdout (where --json goes) and warns that it
        # sets the threads itself: the first goes to the progress stream, the second away
        with (
            contextlib.redirect_stdout(out or io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", "Parameter n_jobs will be ignored", UserWarning)
            model.fit(
                X,
                y,
                feature_name=list(prep.pipe.spec.feature_names),
                categorical_feature=list(prep.pipe.spec.categorical_feature_indices),
            )
        booster: lgb.Booster = model.booster_
        va = prep.valid_idx
        best = best_iteration(booster, prep.X[va], prep.y[va], params, settings.early_stopping)
        booster.best_iteration = best
        if out is not None:
            out.write(
                f"  [{name}] {booster.current_iteration()} rounds on {len(self.workers)} Dask "
                f"workers in {time.perf_counter() - t0:.1f}s; early stopping on {len(va)} rows "
                f"keeps {best}\n"
            )
        return booster
