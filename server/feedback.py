"""Actual delivery times fed back: one struct validates every row, whether it comes to
``POST /v1/feedback`` or from a file given to ``intellilog feedback import``.

A row is ``{order_id, actual_minutes, completed_at}``: ``order_id`` 1 to 128 characters,
``actual_minutes`` > 0 and <= 100000, ``completed_at`` ISO 8601 with an offset (``Z`` or
``+02:00``) or epoch seconds. It is stored for the deployment's tenant (``TENANT_ID``),
upserted on the order id (the latest received wins).
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from msgspec import Meta

from kernels.errors import DataError
from kernels.spec import EPOCH_MAX, EPOCH_MIN
from server.store import FeedbackResult, FeedbackRow, Store
from training.atomic import AtomicOutput, output_error

__all__ = [
    "COLUMNS",
    "Feedback",
    "FeedbackAccepted",
    "ImportReport",
    "batch_struct",
    "completed_epoch",
    "import_feedback",
]

#: The columns of a feedback file (and the fields of one feedback row).
COLUMNS = ("order_id", "actual_minutes", "completed_at")

OrderId = Annotated[str, Meta(min_length=1, max_length=128)]
ActualMinutes = Annotated[float, Meta(gt=0.0, le=100_000.0)]
CompletedAt = (
    Annotated[datetime, Meta(tz=True)] | Annotated[float, Meta(ge=EPOCH_MIN, le=EPOCH_MAX)]
)


class Feedback(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The actual duration of one delivery."""

    order_id: OrderId
    actual_minutes: ActualMinutes
    completed_at: CompletedAt


class FeedbackAccepted(msgspec.Struct, kw_only=True):
    """The 202 answer: every accepted row is durable (database, or the spool when it is
    down: ``spooled``). ``inserted``: order ids without feedback before; ``updated``: order
    ids that had some (the latest received wins); ``unknown_order_ids``: how many of the
    rows name an order with no logged prediction (stored all the same)."""

    accepted: int
    inserted: int
    updated: int
    unknown_order_ids: int
    spooled: int


def batch_struct(max_rows: int) -> type[msgspec.Struct]:
    """``{"feedback": [row, ...]}`` with 1 to ``max_rows`` rows (MAX_BATCH_SIZE)."""
    return msgspec.defstruct(
        "FeedbackBatch",
        [("feedback", Annotated[list[Feedback], Meta(min_length=1, max_length=max_rows)])],
        kw_only=True,
        forbid_unknown_fields=True,
    )


def completed_epoch(value: datetime | float) -> float:
    """``completed_at`` as epoch seconds (UTC)."""
    return value.timestamp() if isinstance(value, datetime) else float(value)


def accepted(n: int, result: FeedbackResult) -> FeedbackAccepted:
    return FeedbackAccepted(
        accepted=n,
        inserted=result.inserted,
        updated=result.updated,
        unknown_order_ids=result.unknown,
        spooled=result.spooled,
    )


# ---- intellilog feedback import ---------------------------------------------------------------


@dataclass
class ImportReport:
    """What ``intellilog feedback import`` did with a file."""

    path: str
    rows: int = 0  # data rows read
    stored: int = 0  # rows written to the database
    inserted: int = 0
    updated: int = 0
    unknown: int = 0  # stored rows whose order id has no logged prediction
    bad: int = 0  # rows refused (listed in ``rejects``)
    rejects: str | None = None
    seconds: float = 0.0
    #: the first refused rows: (row number, reason)
    examples: list[tuple[int, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [f"{self.path}: row {n}: {why}" for n, why in self.examples]
        if self.bad > len(self.examples):
            lines.append(f"... and {self.bad - len(self.examples)} more refused rows")
        if self.rejects:
            lines.append(f"refused rows with their reasons: {self.rejects}")
        lines.append(
            f"{self.rows} rows read, {self.stored} stored ({self.inserted} new, "
            f"{self.updated} updated, {self.unknown} for orders with no logged prediction), "
            f"{self.bad} refused, in {self.seconds:.1f}s"
        )
        return "\n".join(lines)


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(a feedback file needs {', '.join(COLUMNS)}; it has {', '.join(names) or 'none'})"
        )


def _batches(path: Path, batch_rows: int) -> tuple[int | None, Iterator[pa.RecordBatch]]:
    """(row count when known, record batches of the three columns) of a CSV/Parquet file."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if suffix in (".parquet", ".pq"):
            pf = pq.ParquetFile(path, pre_buffer=False)
            _check_columns(path, pf.schema_arrow.names)
            return pf.metadata.num_rows, pf.iter_batches(
                batch_size=batch_rows, columns=list(COLUMNS)
            )
        if suffix == ".csv":
            with path.open("rb") as f:
                header = f.readline().decode("utf-8", "replace").strip()
            _check_columns(path, [c.strip().strip('"') for c in header.split(",")])
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=max(1 << 20, batch_rows * 64)),
                # text throughout: a bad value is one refused row, not a failed file, and
                # an order id such as 00123 stays as written
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in COLUMNS},
                    include_columns=list(COLUMNS),
                    strings_can_be_null=True,
                ),
            )
            return None, iter(reader)
    except DataError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise DataError(f"{path}: cannot read: {str(exc).splitlines()[0]}") from None
    raise DataError(f"{path}: unsupported file type (use .parquet or .csv)")


def _values(col: pa.Array) -> list[Any]:
    """Python values of a column (timestamps at microseconds: what datetime holds)."""
    if pa.types.is_timestamp(col.type) and col.type.unit == "ns":
        col = pc.cast(col, pa.timestamp("us", col.type.tz), safe=False)
    return col.to_pylist()


def _order_ids(col: pa.Array) -> list[Any]:
    """The order ids as text (an integer column of ids is fine)."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.to_pylist()
    if pa.types.is_integer(col.type) or pa.types.is_dictionary(col.type):
        return pc.cast(col, pa.string()).to_pylist()
    return col.to_pylist()  # anything else is refused row by row, naming its type


def _row(values: tuple[Any, Any, Any]) -> Feedback | str:
    """The row as a Feedback, or the reason it is refused."""
    d: dict[str, Any] = {}
    for name, v in zip(COLUMNS, values, strict=True):
        if v is None or (isinstance(v, str) and not v.strip()):
            return f"{name}: missing value"
        d[name] = v.strip() if isinstance(v, str) and name != "order_id" else v
    try:
        return msgspec.convert(d, Feedback, strict=False)
    except msgspec.ValidationError as exc:
        msg, sep, where = str(exc).rpartition(" - at `$.")
        return f"{where.rstrip('`')}: {msg}" if sep else str(exc)


async def import_feedback(
    path: str | Path,
    store: Store,
    tenant: str,
    *,
    batch_rows: int = 10_000,
    rejects: str | Path | None = None,
    progress: Callable[[int], object] | None = None,
    max_examples: int = 20,
) -> ImportReport:
    """Read ``path`` (CSV or Parquet with ``order_id, actual_minutes, completed_at``) in
    batches of ``batch_rows`` and upsert every valid row into ``store`` for ``tenant``.

    Refused rows (numbered from 1, the first data row) are written with their reason to
    ``rejects`` (default ``<file>.rejects.csv``, only when there are some); the report
    keeps the first ``max_examples``. ``progress(n)`` is called after each batch of ``n``
    rows. Rows of one import share one ``received_at``; a later row for the same order id
    wins over an earlier one. Raises DataError for an unreadable file and StoreError when
    the database fails (the batches before are committed; importing again is safe).
    """
    p = Path(path)
    report = ImportReport(path=str(p))
    t0 = time.perf_counter()
    received = time.time()
    _, blocks = _batches(p, batch_rows)
    batches = (b.slice(off, batch_rows) for b in blocks for off in range(0, b.num_rows, batch_rows))
    reject_path = Path(rejects) if rejects else p.with_name(p.name + ".rejects.csv")
    reject_out: AtomicOutput | None = None  # renamed into place once the import is done
    reject_file: Any = None
    writer: Any = None
    try:
        for rb in batches:
            cols = [rb.column(c) for c in COLUMNS]
            values = zip(_order_ids(cols[0]), _values(cols[1]), _values(cols[2]), strict=True)
            good: list[FeedbackRow] = []
            for i, vals in enumerate(values, report.rows + 1):
                row = _row(vals)
                if isinstance(row, str):
                    report.bad += 1
                    if len(report.examples) < max_examples:
                        report.examples.append((i, row))
                    try:
                        if writer is None:
                            reject_out = AtomicOutput(reject_path)
                            reject_file = reject_out.tmp.open("w", newline="", encoding="utf-8")
                            writer = csv.writer(reject_file)
                            writer.writerow(["row", "reason", *COLUMNS])
                        writer.writerow([i, row, *vals])
                    except OSError as exc:
                        raise output_error(reject_path, exc) from None
                    continue
                good.append(
                    FeedbackRow(
                        order_id=row.order_id,
                        tenant=tenant,
                        actual_minutes=row.actual_minutes,
                        completed_at=completed_epoch(row.completed_at),
                        received_at=received,
                    )
                )
            report.rows += rb.num_rows
            if good:
                res = await store.write_feedback(good)
                report.stored += len(good)
                report.inserted += res.inserted
                report.updated += res.updated
                report.unknown += res.unknown
            if progress is not None:
                progress(rb.num_rows)
        if reject_out is not None:
            try:
                reject_file.close()
            except OSError as exc:
                raise output_error(reject_path, exc) from None
            reject_out.finish()
            reject_out.commit()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(
            f"{p}: cannot read past row {report.rows}: {str(exc).splitlines()[0]} "
            f"({report.stored} rows before it are stored)"
        ) from None
    finally:
        if reject_out is not None:  # not committed: no partial reject file stays
            with contextlib.suppress(OSError):
                reject_file.close()
            reject_out.discard()
    if report.rows == 0:
        raise DataError(f"{p}: no rows")
    report.rejects = str(reject_path) if report.bad else None
    report.seconds = time.perf_counter() - t0
    return report


def row_count(path: str | Path) -> int | None:
    """Rows in ``path`` when the format says so cheaply (Parquet), else None."""
    p = Path(path)
    if p.suffix.lower() in (".parquet", ".pq") and p.is_file():
        try:
            return int(pq.ParquetFile(p).metadata.num_rows)
        except (pa.ArrowInvalid, OSError):
            return None
    return None
