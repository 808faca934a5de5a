"""The storage protocol: row types, the ``Store`` interface, migrations, ``open_store``.

Two implementations share this interface: SQLite (:mod:`server.store.sqlite`, the
embedded default) and PostgreSQL through asyncpg (:mod:`server.store.postgres`).

Contracts every implementation keeps:

- **Predictions are idempotent on** ``row_id``: writing a row whose ``row_id`` is already
  stored changes nothing, so a batch may be written again (a spool replay after a crash)
  without duplicating anything.
- **Feedback is an upsert on** ``(tenant, order_id)``: the stored row is the one with the
  latest ``received_at`` (a tie goes to the row written last), so replaying old feedback
  never overwrites newer feedback. Feedback whose order id matches no prediction is
  stored all the same and counted as ``unknown``.
- **A write is one transaction**: when a ``write_*`` call returns, every row is committed;
  when it raises :class:`~kernels.errors.StoreError`, the caller must assume nothing was.
- **Migrations** (``migrations/<dialect>/NNNN_name.sql``) are applied at ``open()`` in
  one transaction and recorded in ``schema_migrations``; opening again applies nothing.
  A database recorded at a newer version than this code knows refuses to open.
- Times are epoch seconds (UTC) as floats; features are float32 little-endian bytes.
- Predictions are stored per written batch (:mod:`server.store.batches`, migration 0002);
  the ``predictions`` view gives them back one row per prediction with 0001's columns.
  A row with a missing (None) or mistyped value, or a NUL character in an id, is refused
  (``StoreDataError``) by both stores alike.
- Database failures surface as ``StoreError`` (never a driver's own exception type);
  rows the database refuses for their content raise its subclass ``StoreDataError``,
  which retrying cannot fix (the prediction log sets such rows aside, see spool.py).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import msgspec
import numpy as np

from kernels.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from server.store.chunks import PredictionChunk

__all__ = [
    "EXPERIMENT_COLUMNS",
    "Experiment",
    "FeatureSample",
    "FeedbackResult",
    "FeedbackRow",
    "JoinedRow",
    "LabelledRow",
    "Migration",
    "PredictionRow",
    "SchemaVersionError",
    "Store",
    "StoreDataError",
    "check_schema_version",
    "experiment_of",
    "experiment_params",
    "group_features",
    "load_migrations",
    "open_store",
    "pack_features",
    "redact_url",
    "store_from_url",
    "unpack_features",
]


class StoreDataError(StoreError):
    """The database refused rows for their content (a NUL character in a text, a missing
    value, a wrong type), not because it is unreachable: writing them again cannot work."""


class SchemaVersionError(StoreError):
    """The database was migrated by a newer intellilog than this one: opening it is refused
    (the server must not start on it)."""


#: Feature rows are stored as this dtype (float32, little-endian), one row per prediction.
FEATURE_DTYPE = np.dtype("<f4")


# gc=False on the row types: they hold only strings, bytes and numbers (no cycles), so the
# garbage collector need not track the up to 100k rows a prediction log queues.
class PredictionRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One predicted row, as logged off the hot path.

    ``row_id`` is the idempotency key (unique per predicted row, e.g.
    ``f"{request_id}:{index}"``). ``inputs`` is the raw input as sent (JSON text);
    ``features`` the float32 little-endian bytes of the feature row
    (:func:`pack_features`), enough to rebuild it for drift checks.
    """

    row_id: str
    request_id: str
    order_id: str | None
    tenant: str
    model_version: str
    arm: str = "production"
    inputs: str
    features: bytes
    eta: float
    p10: float
    p90: float
    created_at: float


class FeedbackRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The actual duration of one delivery, keyed by ``(tenant, order_id)``."""

    order_id: str
    tenant: str
    actual_minutes: float
    completed_at: float
    received_at: float


class FeedbackResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one feedback write did.

    ``inserted``: rows whose ``(tenant, order_id)`` was new; ``updated``: rows whose key
    was already stored (or repeated within the batch) — the latest ``received_at`` is
    kept; ``unknown``: rows whose order id matches no stored prediction (stored anyway);
    ``spooled``: rows written to the local spool instead because the database was down
    (they reach the database when it is back; the other counts are then 0 for them).
    """

    inserted: int = 0
    updated: int = 0
    unknown: int = 0
    spooled: int = 0


class JoinedRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A prediction joined with the feedback for its order: one point of live quality."""

    model_version: str
    arm: str
    eta: float
    p10: float
    p90: float
    actual: float
    created_at: float
    completed_at: float
    order_id: str = ""


class LabelledRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A logged input with the actual duration fed back for its order: one training row
    for retraining (``inputs`` is the raw input as sent, JSON text)."""

    order_id: str
    model_version: str
    arm: str
    inputs: str
    eta: float
    actual: float
    created_at: float
    completed_at: float


class Experiment(msgspec.Struct, frozen=True, kw_only=True):
    """One A/B or shadow test of a candidate model version against a baseline.

    ``split`` is the share of orders routed to the candidate (mode ``ab``; shadow scores
    every request with both). ``status`` is ``running``, ``stopped`` or ``concluded``;
    ``decision`` and ``reason`` say how it ended. ``options`` holds the analysis options
    and who started it (JSON object).
    """

    experiment_id: str
    tenant: str
    mode: str
    baseline_version: str
    candidate_version: str
    split: float
    status: str
    started_at: float
    planned_hours: float
    updated_at: float
    ended_at: float | None = None
    decision: str | None = None
    reason: str | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class FeatureSample:
    """Logged feature rows of one model version: ``features`` [n, F] float32 and the
    predicted ``eta`` [n] float64, oldest first."""

    model_version: str
    features: np.ndarray
    eta: np.ndarray


def pack_features(matrix: np.ndarray) -> list[bytes]:
    """The rows of a feature matrix [n, F] as float32 little-endian bytes, one per row
    (the form of :attr:`PredictionRow.features`)."""
    m = np.ascontiguousarray(np.atleast_2d(matrix), dtype=FEATURE_DTYPE)
    return [row.tobytes() for row in m]


def unpack_features(blobs: Sequence[bytes]) -> np.ndarray:
    """The inverse of :func:`pack_features`: a float32 matrix [n, F] (native byte order).

    Raises StoreError when the rows do not all have the same length.
    """
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    width = len(blobs[0])
    if width % 4 or any(len(b) != width for b in blobs):
        raise StoreError(
            f"logged feature rows have different lengths ({sorted({len(b) for b in blobs})} "
            "bytes): were rows of different feature specs logged under one model version?"
        )
    flat = np.frombuffer(b"".join(blobs), dtype=FEATURE_DTYPE)
    return flat.reshape(len(blobs), width // 4).astype(np.float32)


class Migration(msgspec.Struct, frozen=True):
    """One versioned SQL file of a dialect."""

    version: int
    name: str
    sql: str


_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def group_features(rows: Sequence[tuple[str, bytes, float]]) -> list[FeatureSample]:
    """``(model_version, features, eta)`` rows, newest first (as the stores select them),
    grouped into one :class:`FeatureSample` per version, rows oldest first."""
    by_version: dict[str, tuple[list[bytes], list[float]]] = {}
    for version, blob, eta in reversed(rows):
        blobs, etas = by_version.setdefault(version, ([], []))
        blobs.append(bytes(blob))
        etas.append(eta)
    return [
        FeatureSample(model_version=v, features=unpack_features(b), eta=np.asarray(e))
        for v, (b, e) in by_version.items()
    ]


_EXPERIMENT_ENCODE = msgspec.json.Encoder()
_OPTIONS_DECODE = msgspec.json.Decoder(dict[str, Any])


#: The columns of the ``experiments`` table, in the order of :func:`experiment_params`.
EXPERIMENT_COLUMNS = (
    "experiment_id, tenant, mode, baseline_version, candidate_version, split, status, "
    "started_at, planned_hours, ended_at, decision, reason, options, updated_at"
)


def experiment_params(exp: Experiment) -> tuple[Any, ...]:
    """An experiment as the 14 column values both stores write (:data:`EXPERIMENT_COLUMNS`)."""
    return (
        exp.experiment_id,
        exp.tenant,
        exp.mode,
        exp.baseline_version,
        exp.candidate_version,
        exp.split,
        exp.status,
        exp.started_at,
        exp.planned_hours,
        exp.ended_at,
        exp.decision,
        exp.reason,
        _EXPERIMENT_ENCODE.encode(exp.options).decode(),
        exp.updated_at,
    )


def experiment_of(row: Sequence[Any]) -> Experiment:
    """The inverse of :func:`experiment_params` (a row selected in table order)."""
    return Experiment(
        experiment_id=row[0],
        tenant=row[1],
        mode=row[2],
        baseline_version=row[3],
        candidate_version=row[4],
        split=float(row[5]),
        status=row[6],
        started_at=float(row[7]),
        planned_hours=float(row[8]),
        ended_at=None if row[9] is None else float(row[9]),
        decision=row[10],
        reason=row[11],
        options=_OPTIONS_DECODE.decode(row[12]),
        updated_at=float(row[13]),
    )


def load_migrations(dialect: str) -> list[Migration]:
    """The migrations of ``dialect`` (``sqlite`` or ``postgres``), in version order.

    Read from the installed package (``server/store/migrations/<dialect>/NNNN_name.sql``)
    through importlib.resources; versions must be 1, 2, 3, ... without gaps.
    """
    folder = resources.files("server.store").joinpath("migrations").joinpath(dialect)
    out: list[Migration] = []
    for entry in folder.iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    out.sort(key=lambda mig: mig.version)
    if [mig.version for mig in out] != list(range(1, len(out) + 1)):
        raise StoreError(
            f"migrations of {dialect} are not numbered 0001, 0002, ... without gaps: "
            f"{[mig.version for mig in out]} (is the package installed completely?)"
        )
    return out


def check_schema_version(found: int, known: int) -> None:
    """Refuse a database recorded at a newer schema version than this code knows."""
    if found > known:
        raise SchemaVersionError(
            f"database schema version {found} is newer than this intellilog (knows up to "
            f"{known}): upgrade intellilog or point DATABASE_URL elsewhere"
        )


class Store(abc.ABC):
    """The storage interface the server talks to; every method is a coroutine.

    Use ``async with await open_store(url) as store`` or call :meth:`open` and
    :meth:`close`. Methods other than :meth:`open`, :meth:`ping` and :meth:`close`
    raise StoreError when the database fails.
    """

    #: The URL the store was made from, with any password removed (for logs, errors).
    url: str = ""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations (:meth:`migrate`).

        Raises StoreError when the database is unreachable or newer than this code.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections (and worker threads). Safe to call twice."""

    @abc.abstractmethod
    async def migrate(self) -> int:
        """Apply pending migrations in one transaction; return how many were applied."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The highest migration version recorded in the database (0 when none)."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the database answers a trivial query; never raises."""

    @abc.abstractmethod
    async def write_predictions(self, rows: Sequence[PredictionRow]) -> int:
        """Store ``rows`` in one transaction; rows whose ``row_id`` is already stored
        (or repeated in ``rows``) are skipped. Returns how many rows were new."""

    async def write_chunks(self, chunks: Sequence[PredictionChunk]) -> int:
        """:meth:`write_predictions` of the chunks' rows (the prediction log's columnar
        path, :mod:`server.store.chunks`): same rows, same contract. This default builds
        the rows; the SQLite and PostgreSQL stores pack the columns directly."""
        return await self.write_predictions([r for c in chunks for r in c.rows()])

    @abc.abstractmethod
    async def write_feedback(self, rows: Sequence[FeedbackRow]) -> FeedbackResult:
        """Upsert ``rows`` on ``(tenant, order_id)`` in one transaction (latest
        ``received_at`` wins). Returns counts of inserted, updated and unknown rows."""

    @abc.abstractmethod
    async def joined(
        self, tenant: str, since: float, until: float | None = None
    ) -> list[JoinedRow]:
        """Predictions of ``tenant`` made in ``[since, until)`` (no upper bound when
        ``until`` is None) that have feedback, oldest first; one row per prediction."""

    @abc.abstractmethod
    async def recent_features(
        self, tenant: str, since: float, limit: int = 10_000
    ) -> list[FeatureSample]:
        """The latest ``limit`` predictions of ``tenant`` made at or after ``since``,
        grouped by model version (one sample per version)."""

    @abc.abstractmethod
    async def labelled(
        self, tenant: str, since: float, until: float, lead_s: float
    ) -> list[LabelledRow]:
        """Logged inputs of ``tenant`` whose order has feedback completed in
        ``[since, until)``: one row per order (its latest prediction made in
        ``[since - lead_s, until)``, shadow predictions left out), oldest completion first."""

    @abc.abstractmethod
    async def save_experiment(self, exp: Experiment, *, new: bool) -> None:
        """Insert (``new``) or replace an experiment. A second running experiment of one
        tenant is refused (StoreDataError)."""

    @abc.abstractmethod
    async def experiments(self, tenant: str, status: str | None = None) -> list[Experiment]:
        """The experiments of ``tenant`` (only those with ``status`` if given), newest first."""

    @abc.abstractmethod
    async def prune(self, older_than: float) -> int:
        """Delete predictions created before ``older_than`` and feedback received before
        it (the ``PREDICTION_RETENTION_DAYS`` setting). Returns rows deleted in all."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def redact_url(url: str) -> str:
    """``url`` with the password (if any) replaced by ``***``."""
    return re.sub(r"^([a-z]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def store_from_url(url: str, *, connect_timeout: float = 5.0, pool_size: int = 4) -> Store:
    """An unopened store for ``url`` (the ``DATABASE_URL`` setting).

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or
    ``sqlite:///:memory:`` give SQLite; ``postgresql://...`` or ``postgres://...`` give
    PostgreSQL (asyncpg DSN syntax, e.g. ``postgresql://user@/db?host=/run/postgresql``).
    Anything else raises ConfigError naming DATABASE_URL and the value.
    """
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        from server.store.sqlite import SqliteStore

        path = url[len("sqlite:///") :]
        return SqliteStore(path if path == ":memory:" else Path(path))
    if url.startswith(("postgresql://", "postgres://")):
        from server.store.postgres import PostgresStore

        return PostgresStore(url, connect_timeout=connect_timeout, pool_size=pool_size)
    raise ConfigError(
        f"DATABASE_URL={redact_url(url)!r}: use sqlite:///PATH.db (relative), sqlite:////PATH.db "
        "(absolute), sqlite:///:memory: or postgresql://USER@HOST/DB"
    )


async def open_store(url: str, *, connect_timeout: float = 5.0, pool_size: int = 4) -> Store:
    """:func:`store_from_url`, opened (connected, migrated). Close it when done."""
    store = store_from_url(url, connect_timeout=connect_timeout, pool_size=pool_size)
    await store.open()
    return store
