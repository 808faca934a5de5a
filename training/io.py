"""Reading delivery files (CSV or Parquet) into kernel columns, row by row validated.

Every row either becomes part of the :class:`~kernels.features.Columns` batch or is
reported with the reason it was refused: nothing is dropped silently. Files are read
in bounded batches so a file larger than memory can be scored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kernels.errors import DataError
from kernels.features import Columns, Pipeline
from kernels.spec import EPOCH_MAX, EPOCH_MIN, FeatureSpec
from kernels.timefeat import NO_OFFSET, fill_zone_offsets, parse_iso8601, resolve_offsets
from training.atomic import atomic_output

__all__ = [
    "Converted",
    "check_columns",
    "check_readable",
    "csv_block_size",
    "csv_header",
    "file_format",
    "iter_batches",
    "learn_levels",
    "read_csv_block",
    "read_table",
    "to_columns",
    "write_table",
]

_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def file_format(path: str | Path) -> str:
    fmt = _FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported file type (use .parquet or .csv)")
    return fmt


def check_readable(path: Path) -> None:
    """A one-line DataError unless ``path`` is a file with some bytes in it."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def _csv_convert(spec: FeatureSpec, names: Sequence[str]) -> pacsv.ConvertOptions:
    # Spec columns are read as text and converted tolerantly here, so one bad value
    # becomes one rejected row instead of a failed file.
    wanted = {spec.key, spec.target, *spec.input_columns}
    return pacsv.ConvertOptions(
        column_types={c: pa.string() for c in names if c in wanted},
        strings_can_be_null=True,
        include_columns=[c for c in names if c in wanted],
    )


def csv_header(path: Path) -> list[str]:
    """The column names on the first line of a CSV file."""
    with path.open("rb") as f:
        first = f.readline().decode("utf-8", "replace").strip()
    if not first:
        raise DataError(f"{path}: no header line")
    return [c.strip().strip('"') for c in first.split(",")]


def csv_block_size(batch_rows: int) -> int:
    """Bytes of CSV read at a time for batches of about ``batch_rows`` rows (~100 bytes
    a row, at least 1 MiB)."""
    return max(1 << 20, batch_rows * 100)


def read_csv_block(data: bytes, names: Sequence[str], spec: FeatureSpec) -> pa.Table:
    """Parse ``data`` (a CSV header line, whose columns are ``names``, then whole lines)
    as :func:`iter_batches` parses a file: the spec's columns as text. Arrow errors
    propagate; the caller knows where the block came from."""
    return pacsv.read_csv(pa.BufferReader(data), convert_options=_csv_convert(spec, names))


def check_columns(path: Path, names: Sequence[str], spec: FeatureSpec, need_target: bool) -> None:
    """A one-line DataError naming the columns ``spec`` needs that ``names`` lacks."""
    need = list(spec.required_columns) + ([spec.target] if need_target else [])
    missing = [c for c in need if c not in names]
    if missing:
        raise DataError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(spec {spec.name!r} needs {', '.join(need)})"
        )


def read_table(path: str | Path, spec: FeatureSpec, need_target: bool = True) -> pa.Table:
    """Read a whole file (training, validation). Errors are one-line DataErrors."""
    p = Path(path)
    fmt = file_format(p)
    check_readable(p)
    try:
        if fmt == "parquet":
            schema = pq.read_schema(p)
            check_columns(p, schema.names, spec, need_target)
            table = pq.read_table(p)
        else:
            names = csv_header(p)
            check_columns(p, names, spec, need_target)
            table = pacsv.read_csv(p, convert_options=_csv_convert(spec, names))
    except DataError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise DataError(f"{p}: cannot read {fmt}: {str(exc).splitlines()[0]}") from None
    if table.num_rows == 0:
        raise DataError(f"{p}: no rows")
    return table


def iter_batches(
    path: str | Path, spec: FeatureSpec, batch_rows: int = 262_144, need_target: bool = False
) -> Iterator[pa.Table]:
    """Stream a file in tables of about ``batch_rows`` rows (bounded memory)."""
    p = Path(path)
    fmt = file_format(p)
    check_readable(p)
    rows = 0
    try:
        if fmt == "parquet":
            # no pre-buffering: Arrow's buffers otherwise grow with every row group read
            pf = pq.ParquetFile(p, pre_buffer=False)
            names = pf.schema_arrow.names
            check_columns(p, names, spec, need_target)
            for rb in pf.iter_batches(batch_size=batch_rows):
                rows += rb.num_rows
                yield pa.Table.from_batches([rb])
        else:
            names = csv_header(p)
            check_columns(p, names, spec, need_target)
            reader = pacsv.open_csv(
                p,
                read_options=pacsv.ReadOptions(block_size=csv_block_size(batch_rows)),
                convert_options=_csv_convert(spec, names),
            )
            for rb in reader:
                rows += rb.num_rows
                yield pa.Table.from_batches([rb])
    except DataError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise DataError(f"{p}: cannot read {fmt}: {str(exc).splitlines()[0]}") from None
    if rows == 0:
        raise DataError(f"{p}: no rows")


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` to ``path`` atomically (:mod:`training.atomic`): the file appears
    only once complete; missing folders are created."""
    p = Path(path)
    fmt = file_format(p)
    with atomic_output(p, make_parents=True) as tmp:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp)


# ---- conversion ------------------------------------------------------------------------------


@dataclass
class Converted:
    """Valid rows as kernel columns, plus every refused row with its reason."""

    columns: Columns
    valid: np.ndarray  # bool [n_input]
    reject_rows: np.ndarray  # int64 indices into the input table
    reject_reasons: list[str]
    target: np.ndarray | None = None  # float64 [n_valid] when requested
    checks: dict[str, int] = field(default_factory=dict)  # refused-row counts per check

    @property
    def n_valid(self) -> int:
        return len(self.columns)


class _Reasons:
    def __init__(self, n: int) -> None:
        self.n = n
        self.bad = np.zeros(n, dtype=bool)
        self.parts: dict[int, list[str]] = {}
        self.checks: dict[str, int] = {}

    def add(self, mask: np.ndarray, check: str, text: str | Sequence[str]) -> None:
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return
        self.checks[check] = self.checks.get(check, 0) + int(idx.size)
        self.bad[idx] = True
        for j, i in enumerate(idx.tolist()):
            self.parts.setdefault(i, []).append(text if isinstance(text, str) else text[j])


def _value_repr(v: object) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _as_float(col: pa.ChunkedArray | pa.Array, name: str, r: _Reasons) -> np.ndarray:
    """float64 values, NaN where missing; unparsable values are refused with the text."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if (
        pa.types.is_floating(arr.type)
        or pa.types.is_integer(arr.type)
        or pa.types.is_boolean(arr.type)
    ):
        return np.asarray(arr.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        trimmed = pc.utf8_trim_whitespace(arr)
        empty = pc.equal(trimmed, "")
        trimmed = pc.if_else(empty, pa.scalar(None, pa.string()), trimmed)
        try:
            return np.asarray(
                trimmed.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        # slow path, only for dirty columns: find the values that are not numbers
        out = np.full(len(arr), np.nan)
        bad = np.zeros(len(arr), dtype=bool)
        texts = []
        for i, v in enumerate(trimmed.to_pylist()):
            if v is None:
                continue
            try:
                out[i] = float(v)
            except ValueError:
                bad[i] = True
                texts.append(f"{name}: not a number ({_value_repr(v)})")
        r.add(bad, "type", texts)
        return out
    raise DataError(f"column {name!r} has type {arr.type}, expected numbers")


def _times(
    col: pa.ChunkedArray, name: str, pipe: Pipeline, r: _Reasons
) -> tuple[np.ndarray, np.ndarray]:
    arr = col.combine_chunks()
    n = len(arr)
    utc = np.zeros(n, dtype=np.int64)
    off = np.full(n, NO_OFFSET, dtype=np.int32)
    missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    t = arr.type
    if pa.types.is_timestamp(t):
        # any unit; fractions of a second are dropped (floor), as for ISO text
        raw = np.asarray(arr.cast(pa.int64()).fill_null(0).to_numpy(), dtype=np.int64)
        secs = np.floor_divide(raw, _PER_SECOND[t.unit])
        if t.tz is None:  # naive: wall clock of the spec's zone
            utc[:] = secs
            resolve_offsets(utc, off, pipe.zone_starts, pipe.zone_offsets)
        else:
            utc[:] = secs
            fill_zone_offsets(utc, off, pipe.zone_starts, pipe.zone_offsets)
        bad_fmt = np.zeros(n, dtype=bool)
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        vals = np.asarray(arr.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        finite = np.isfinite(vals)
        utc[finite] = vals[finite].astype(np.int64)
        fill_zone_offsets(utc, off, pipe.zone_starts, pipe.zone_offsets)
        bad_fmt = ~finite & ~missing
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        if pa.types.is_string(t):
            arr = arr.cast(pa.large_string())
        bufs = arr.buffers()
        offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
        data = (
            np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(1, np.uint8)
        )
        ok = np.empty(n, dtype=np.bool_)
        parse_iso8601(data, offsets, utc, off, ok)
        resolve_offsets(utc, off, pipe.zone_starts, pipe.zone_offsets)
        bad_fmt = ~ok & ~missing
        if bad_fmt.any():  # epoch seconds written as text?
            idx = np.flatnonzero(bad_fmt)
            for i in idx.tolist():
                try:
                    v = float(arr[i].as_py())
                except (TypeError, ValueError):
                    continue
                if math.isfinite(v):
                    utc[i] = int(v)
                    bad_fmt[i] = False
            fixed = idx[~bad_fmt[idx]]
            if fixed.size:
                o = np.empty(fixed.size, dtype=np.int32)
                fill_zone_offsets(utc[fixed], o, pipe.zone_starts, pipe.zone_offsets)
                off[fixed] = o
    else:
        raise DataError(
            f"column {name!r} has type {t}, expected ISO 8601 text, a timestamp or epoch seconds"
        )
    if bad_fmt.any():
        texts = [
            f"{name}: not an ISO 8601 time or epoch seconds ({_value_repr(arr[i].as_py())})"
            for i in np.flatnonzero(bad_fmt).tolist()
        ]
        r.add(bad_fmt, "type", texts)
    r.add(missing, "missing", f"{name}: missing")
    oor = ~missing & ~bad_fmt & ((utc < EPOCH_MIN) | (utc > EPOCH_MAX))
    r.add(oor, "range", f"{name}: outside 1970..2100")
    return utc, off


def _bounded(
    vals: np.ndarray, name: str, lo: float, hi: float, r: _Reasons, optional: bool = False
) -> None:
    nan = np.isnan(vals)
    if not optional:
        r.add(nan & ~r.bad, "missing", f"{name}: missing")
    with np.errstate(invalid="ignore"):
        oor = ~nan & ((vals < lo) | (vals > hi))
    if oor.any():
        idx = np.flatnonzero(oor)
        r.add(oor, "range", [f"{name}: {vals[i]:g} outside [{lo:g}, {hi:g}]" for i in idx.tolist()])


_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _strings(col: pa.ChunkedArray, name: str = "?", lower: bool = False) -> pa.Array:
    """Text of a categorical column with the spec's one normalisation
    (:meth:`kernels.spec.FeatureSpec.normalize_level`: trimmed, lower-cased if asked)."""
    arr = col.combine_chunks()
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        if not (pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t)):
            raise DataError(f"column {name!r} has type {t}, expected text")
        arr = arr.cast(pa.string())
    arr = pc.utf8_trim_whitespace(arr)
    return pc.utf8_lower(arr) if lower else arr


def to_columns(table: pa.Table, pipe: Pipeline, with_target: bool = False) -> Converted:
    """Validate and convert a table into kernel columns (valid rows only)."""
    spec = pipe.spec
    n = table.num_rows
    r = _Reasons(n)
    names = set(table.column_names)

    def col(name: str) -> pa.ChunkedArray:
        if name not in names:
            raise DataError(f"missing column {name}")
        return table.column(name)

    geo = []
    for name, lo, hi in (
        (spec.pickup_lat, -90.0, 90.0),
        (spec.pickup_lon, -180.0, 180.0),
        (spec.dropoff_lat, -90.0, 90.0),
        (spec.dropoff_lon, -180.0, 180.0),
    ):
        v = _as_float(col(name), name, r)
        _bounded(v, name, lo, hi, r)
        geo.append(v)
    utc, off = _times(col(spec.event_time), spec.event_time, pipe, r)

    cats = np.empty((n, len(spec.categorical)), dtype=np.int32)
    for k, c in enumerate(spec.categorical):
        arr = _strings(col(c.name), c.name, spec.categorical_case == "lower")
        levels = pipe.levels[c.name]
        codes = pc.index_in(arr, value_set=pa.array(levels, pa.string()))
        cats[:, k] = np.asarray(
            codes.fill_null(len(levels)).to_numpy(zero_copy_only=False), dtype=np.int32
        )
        nulls = np.asarray(
            pc.or_(arr.is_null(), pc.equal(arr, "")).fill_null(True).to_numpy(zero_copy_only=False),
            dtype=bool,
        )
        r.add(nulls, "missing", f"{c.name}: missing")
        if c.reject_unknown:
            unk = (cats[:, k] == len(levels)) & ~nulls
            if unk.any():
                vals = arr.to_pylist()
                r.add(
                    unk,
                    "range",
                    [
                        f"{c.name}: unknown level {_value_repr(vals[i])} (known: {', '.join(levels)})"
                        for i in np.flatnonzero(unk).tolist()
                    ],
                )

    nums = np.empty((n, len(spec.numeric)), dtype=np.float64)
    for k, nm in enumerate(spec.numeric):
        if nm.name in names:
            v = _as_float(col(nm.name), nm.name, r)
        elif nm.optional:
            v = np.full(n, np.nan)
        else:
            raise DataError(f"missing column {nm.name}")
        _bounded(v, nm.name, nm.min, nm.max, r, optional=nm.optional)
        nums[:, k] = v

    target = None
    if with_target:
        g = spec.goal
        t = _as_float(col(g.name), g.name, r)
        tn = np.isnan(t)
        r.add(tn & ~r.bad, "missing", f"{g.name}: missing")
        with np.errstate(invalid="ignore"):
            imp = ~tn & ((t <= 0) | (t > g.max) | ~np.isfinite(t))
        r.add(
            imp,
            "impossible",
            f"{g.name}: not a duration in (0, {g.max:g}] {g.unit} (the spec's target.max)",
        )
        target = t

    valid = ~r.bad
    idx = np.flatnonzero(valid)
    full = Columns(geo[0], geo[1], geo[2], geo[3], utc, off, cats, nums)
    cols = full if idx.size == n else full.take(idx)
    rej = np.flatnonzero(r.bad)
    reasons = ["; ".join(r.parts[i]) for i in rej.tolist()]
    return Converted(
        columns=cols,
        valid=valid,
        reject_rows=rej.astype(np.int64),
        reject_reasons=reasons,
        target=None if target is None else target[idx],
        checks=r.checks,
    )


def learn_levels(
    table: pa.Table, spec: FeatureSpec, min_count: int = 5, max_levels: int = 1000
) -> dict[str, tuple[str, ...]]:
    """Levels of every categorical: declared ones as they are; learned ones from the data.

    A learned level needs ``min_count`` rows (rarer values train the 'unknown' level),
    at most ``max_levels`` kept, most frequent first.
    """
    out: dict[str, tuple[str, ...]] = {}
    for c in spec.categorical:
        if not c.learned:
            out[c.name] = c.levels
            continue
        arr = _strings(table.column(c.name), c.name, spec.categorical_case == "lower").drop_null()
        counts = pc.value_counts(arr)
        vals = counts.field("values").to_pylist()
        cnts = counts.field("counts").to_numpy()
        order = np.argsort(-cnts, kind="stable")
        kept = [vals[i] for i in order if cnts[i] >= min_count and vals[i]][:max_levels]
        if not kept:
            raise DataError(
                f"categorical {c.name!r} learns its levels from the data, but no value occurs "
                f"at least {min_count} times"
            )
        out[c.name] = tuple(kept)
    return out
