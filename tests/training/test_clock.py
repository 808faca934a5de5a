"""One clock: the same instant, however it is written, gives bit-identical time features
on every path (files: ISO text with any offset, ``Z``, naive wall-clock text, epoch
seconds as numbers or text, Parquet timestamps of every unit with or without a zone;
requests: JSON strings and epoch integers through the request struct, batch and row)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.features import Pipeline
from kernels.spec import default_spec, spec_from_dict
from training.io import to_columns

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "America/St_Johns",
    "Pacific/Chatham",
]
LO = int(datetime(1995, 1, 1, tzinfo=UTC).timestamp())
HI = int(datetime(2090, 1, 1, tzinfo=UTC).timestamp())
_PIPES: dict[str, Pipeline] = {}


def pipe_for(zone: str) -> Pipeline:
    if zone not in _PIPES:
        d = default_spec().to_dict()
        d["timezone"] = zone
        d["time_features"] = ["hour", "day_of_week", "weekend", "day_of_year"]
        _PIPES[zone] = Pipeline(spec_from_dict(d), {"zone": ["Mitte"]})
    return _PIPES[zone]


def base_row() -> dict[str, object]:
    return {
        "order_id": "o1",
        "pickup_lat": 52.5,
        "pickup_lon": 13.4,
        "dropoff_lat": 52.52,
        "dropoff_lon": 13.45,
        "vehicle_type": "bike",
        "weather": "rain",
        "zone": "Mitte",
        "items_count": 3,
    }


def file_encodings(t: int, frac_ns: int, zone: str, writer: str) -> dict[str, pa.Array]:
    """Columns that all hold the instant ``t`` (+ a fraction of a second)."""
    w = datetime.fromtimestamp(t, ZoneInfo(writer))
    local = datetime.fromtimestamp(t, ZoneInfo(zone)).replace(tzinfo=None)
    out: dict[str, pa.Array] = {
        "iso_writer_offset": pa.array([w.isoformat()]),
        "iso_z": pa.array([datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]),
        "iso_fraction": pa.array([w.isoformat()[:19] + f".{frac_ns:09d}" + w.isoformat()[19:]]),
        "epoch_int": pa.array([t], pa.int64()),
        # milliseconds: a float64 epoch cannot carry nanoseconds
        "epoch_float": pa.array([t + (frac_ns // 1_000_000) / 1000], pa.float64()),
        "epoch_text": pa.array([str(t)]),
    }
    ns = t * 1_000_000_000 + frac_ns
    for unit, per in (("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000), ("ns", 1)):
        out[f"ts_{unit}_utc"] = pa.array([ns // per], pa.timestamp(unit, tz="UTC"))
        out[f"ts_{unit}_writer"] = pa.array([ns // per], pa.timestamp(unit, tz=writer))
    # wall-clock forms are only one instant when the local time is not repeated/skipped
    back = local.replace(tzinfo=ZoneInfo(zone))
    unique = int(back.timestamp()) == t and int(back.replace(fold=1).timestamp()) == t
    if unique:
        out["iso_naive"] = pa.array([local.isoformat()])
        wall_ns = int((local - datetime(1970, 1, 1)) / timedelta(microseconds=1)) * 1000
        out["ts_naive_ns"] = pa.array([wall_ns + frac_ns], pa.timestamp("ns"))
    return out


def file_features(pipe: Pipeline, column: pa.Array) -> np.ndarray:
    row = base_row()
    table = pa.table({**{k: [v] for k, v in row.items()}, "created_at": column})
    conv = to_columns(table, pipe)
    assert conv.n_valid == 1, conv.reject_reasons
    return pipe.matrix(conv.columns)


def request_features(pipe: Pipeline, value: object) -> tuple[np.ndarray, np.ndarray]:
    body = msgspec.json.encode({**base_row(), "created_at": value})
    item = msgspec.json.decode(body, type=pipe.spec.request_struct)
    batch = pipe.matrix(pipe.columns([item]))
    one = pipe.row(item, np.empty((1, pipe.n_features), np.float32))
    return batch, one


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    t=st.integers(LO, HI),
    frac_ns=st.integers(0, 999_999_999),
    zone=st.sampled_from(ZONES),
    writer=st.sampled_from(ZONES),
)
def test_every_encoding_of_an_instant_gives_the_same_features(
    t: int, frac_ns: int, zone: str, writer: str
) -> None:
    pipe = pipe_for(zone)
    want = file_features(pipe, pa.array([t], pa.int64()))
    for name, col in file_encodings(t, frac_ns, zone, writer).items():
        np.testing.assert_array_equal(file_features(pipe, col), want, err_msg=name)
    w = datetime.fromtimestamp(t, ZoneInfo(writer))
    for value in (w.isoformat(), datetime.fromtimestamp(t, UTC).isoformat(), t):
        batch, one = request_features(pipe, value)
        np.testing.assert_array_equal(batch, want, err_msg=repr(value))
        np.testing.assert_array_equal(one, want, err_msg=repr(value))


def test_the_hour_is_the_spec_zones_wall_clock() -> None:
    """12:30+01:00 and 11:30Z are one instant: 12:30 in Berlin in winter."""
    pipe = pipe_for("Europe/Berlin")
    a, _ = request_features(pipe, "2026-11-26T12:30:00+01:00")
    b, _ = request_features(pipe, "2026-11-26T11:30:00Z")
    c, _ = request_features(pipe, "2026-11-26T06:30:00-05:00")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    i = pipe.spec.feature_names.index("hour_sin")
    h = 12.5
    assert a[0, i] == np.float32(np.sin(2 * np.pi * h / 24))


def test_day_of_year_feature_follows_the_local_date() -> None:
    pipe = pipe_for("America/New_York")
    i = pipe.spec.feature_names.index("doy_sin")
    # 1 Jan 03:00 UTC is still 31 Dec in New York: day of year 364 of 365
    feats, _ = request_features(pipe, "2026-01-01T03:00:00Z")
    doy = 364 + 22 / 24
    assert feats[0, i] == np.float32(np.sin(2 * np.pi * doy / 365.25))
