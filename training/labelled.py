"""Training rows from logged inputs: raw JSON as the server received it, plus the actual.

Retraining learns from what production saw. Each logged input is decoded with the spec's
request struct (:attr:`kernels.spec.FeatureSpec.request_struct`, the decoder of
``POST /v1/predict``), so a row is valid here exactly when the server would accept it
today; an input that no longer decodes (the spec changed, the row was damaged) is
counted with its reason, never dropped silently. Decoded values become the spec's
columns the way the server reads a request struct (:meth:`kernels.features.Pipeline.columns`):

* the event time becomes epoch seconds through :func:`kernels.timefeat.to_utc_offset`
  (naive times are wall clock in the spec's zone); the zone offset is a function of the
  instant (the clock rule), so ``to_columns`` rebuilds the server's offset from it;
* categorical values are normalised with :meth:`FeatureSpec.normalize_level`;
* absent optional numerics are nulls (NaN in the kernels).

The target is the actual duration converted from minutes to the spec's unit.

A previous training file (``retrain --data``) is brought to the same columns with
:func:`canonical_table`, so the two can be concatenated; :func:`rows_digest` is the
sha256 of the rows as used (column names, types and values), independent of file format.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kernels.features import Pipeline
from kernels.spec import FeatureSpec
from kernels.timefeat import to_utc_offset
from training.io import to_columns

__all__ = ["Labelled", "canonical_table", "from_inputs", "rows_digest", "schema_for"]

#: Refused rows kept with their reason in reports (the count is always complete).
MAX_EXAMPLES = 20


@dataclass
class Labelled:
    """Rows in the spec's columns plus the rows that could not be used, with reasons."""

    table: pa.Table
    refused: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)  # {"row"/"order_id", "reason"}

    def refuse(self, where: str, reason: str) -> None:
        self.refused += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"where": where, "reason": reason})


def schema_for(spec: FeatureSpec) -> pa.Schema:
    """The canonical columns: key, points, event time (epoch seconds), categoricals,
    numerics and the target (in the spec's unit)."""
    fields = [
        pa.field(spec.key, pa.string()),
        *(
            pa.field(c, pa.float64())
            for c in (spec.pickup_lat, spec.pickup_lon, spec.dropoff_lat, spec.dropoff_lon)
        ),
        pa.field(spec.event_time, pa.int64()),
        *(pa.field(c.name, pa.string()) for c in spec.categorical),
        *(pa.field(n.name, pa.float64()) for n in spec.numeric),
        pa.field(spec.target, pa.float64()),
    ]
    return pa.schema(fields)


def from_inputs(
    inputs: Sequence[str],
    actual_minutes: Sequence[float],
    order_ids: Sequence[str],
    spec: FeatureSpec,
) -> Labelled:
    """Decode logged inputs (JSON text, one delivery each) into the canonical columns.

    ``actual_minutes[i]`` is the fed-back duration of ``inputs[i]``; ``order_ids`` name
    the rows in the refusal examples."""
    dec = msgspec.json.Decoder(spec.request_struct)
    # zone tables only: the levels are irrelevant here (categoricals stay text)
    pipe = Pipeline(spec, {c.name: c.levels or ("",) for c in spec.categorical})
    starts, offsets = pipe.zone_starts, pipe.zone_offsets
    norm = spec.normalize_level
    cols: dict[str, list[object]] = {f.name: [] for f in schema_for(spec)}
    out = Labelled(pa.table({}))
    geo = (spec.pickup_lat, spec.pickup_lon, spec.dropoff_lat, spec.dropoff_lon)
    scale = spec.goal.minutes
    for text, actual, order in zip(inputs, actual_minutes, order_ids, strict=True):
        try:
            item = dec.decode(text)
            utc, _ = to_utc_offset(getattr(item, spec.event_time), starts, offsets)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError, OverflowError) as exc:
            out.refuse(order, f"input no longer decodes: {exc}")
            continue
        cols[spec.key].append(order)
        for g in geo:
            cols[g].append(float(getattr(item, g)))
        cols[spec.event_time].append(int(utc))
        for c in spec.categorical:
            cols[c.name].append(norm(getattr(item, c.name)))
        for n in spec.numeric:
            v = getattr(item, n.name)
            cols[n.name].append(None if v is None else float(v))
        cols[spec.target].append(float(actual) / scale)
    out.table = pa.table(cols, schema=schema_for(spec))
    return out


def canonical_table(table: pa.Table, spec: FeatureSpec, source: str) -> Labelled:
    """A training file's rows in the canonical columns (see :func:`schema_for`).

    Rows ``to_columns`` refuses (bad time, missing value, impossible target, ...) are
    counted with their reason; the event time of the others becomes epoch seconds by
    the same rules training reads the file with."""
    pipe = Pipeline(spec, {c.name: c.levels or ("",) for c in spec.categorical})
    conv = to_columns(table, pipe, with_target=True)
    out = Labelled(pa.table({}))
    for i, why in zip(conv.reject_rows.tolist(), conv.reject_reasons, strict=True):
        out.refuse(f"{source} row {i + 1}", why)
    keep = pa.array(np.flatnonzero(conv.valid))
    rows = table.take(keep)
    schema = schema_for(spec)
    arrays: list[pa.Array] = []
    for f in schema:
        if f.name == spec.event_time:
            arrays.append(pa.array(conv.columns.utc, pa.int64()))
        elif f.name == spec.key and f.name not in rows.column_names:
            arrays.append(pa.array([f"{source}:{i + 1}" for i in keep.to_pylist()], pa.string()))
        elif f.name not in rows.column_names:  # an optional numeric the file lacks
            arrays.append(pa.nulls(rows.num_rows, f.type))
        else:
            col = rows.column(f.name).combine_chunks()
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            if f.type == pa.string():
                col = pc.utf8_trim_whitespace(col.cast(pa.string()))
                if spec.categorical_case == "lower" and f.name != spec.key:
                    col = pc.utf8_lower(col)
            elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                trimmed = pc.utf8_trim_whitespace(col)
                col = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, col.type), trimmed)
            arrays.append(col.cast(f.type))
    out.table = pa.Table.from_arrays(arrays, schema=schema)
    return out


def rows_digest(table: pa.Table) -> str:
    """sha256 of a table's rows as used: column names and types, then every column's
    values (numbers as little-endian float64/int64 with a null mask, text as UTF-8 with
    separators). The same rows give the same digest whatever file they came from."""
    h = hashlib.sha256()
    h.update(f"{table.num_rows}\n".encode())
    for name, col in zip(table.column_names, table.columns, strict=True):
        arr = col.combine_chunks()
        h.update(f"{name}:{arr.type}\n".encode())
        nulls = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=np.uint8)
        h.update(nulls.tobytes())
        if pa.types.is_integer(arr.type):
            h.update(np.asarray(arr.fill_null(0).to_numpy(), dtype="<i8").tobytes())
        elif pa.types.is_floating(arr.type):
            h.update(np.asarray(arr.fill_null(0.0).to_numpy(), dtype="<f8").tobytes())
        else:
            for v in arr.cast(pa.string()).fill_null("").to_pylist():
                h.update(v.encode("utf-8") + b"\x1f")
    return h.hexdigest()
