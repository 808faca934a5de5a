"""Reading files into kernel columns: every refused row keeps its reason."""

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernels.errors import DataError
from kernels.features import Pipeline
from kernels.spec import default_spec, parse_spec
from training.io import iter_batches, learn_levels, read_table, to_columns, write_table

SPEC = default_spec()


def table(n: int = 6, **over: list) -> pa.Table:
    cols = {
        "order_id": [f"o{i}" for i in range(n)],
        "created_at": ["2026-07-01T12:00:00+02:00"] * n,
        "pickup_lat": [52.5] * n,
        "pickup_lon": [13.4] * n,
        "dropoff_lat": [52.52] * n,
        "dropoff_lon": [13.45] * n,
        "vehicle_type": ["bike"] * n,
        "weather": ["clear"] * n,
        "zone": ["Mitte"] * n,
        "items_count": [2] * n,
        "prep_minutes": [5.0] * n,
        "actual_minutes": [20.0] * n,
    }
    cols.update(over)
    return pa.table(cols)


def pipe() -> Pipeline:
    return Pipeline(SPEC, {"zone": ["Mitte", "Wedding"]})


def test_clean_rows_convert_and_match_time() -> None:
    c = to_columns(table(), pipe(), with_target=True)
    assert c.n_valid == 6 and c.reject_reasons == []
    assert c.columns.utc[0] == int(datetime(2026, 7, 1, 10, tzinfo=ZoneInfo("UTC")).timestamp())
    assert c.columns.offset[0] == 7200
    assert c.target is not None and c.target.tolist() == [20.0] * 6


def test_bad_rows_are_refused_with_reasons() -> None:
    t = table(
        pickup_lat=["52.5", "abc", "95", None, "52.5", "52.5"],
        created_at=[
            "2026-07-01T12:00:00Z",
            "x",
            "2026-07-01T12:00:00Z",
            "2026-07-01T12:00:00Z",
            "1782900000",
            "2026-07-01T12:00:00Z",
        ],
        vehicle_type=["bike", "bike", "bike", "bike", "hovercraft", None],
        items_count=[1, 1, 1, 0, 1, 1],
        actual_minutes=[20.0, 20.0, 20.0, 20.0, -3.0, 20.0],
    )
    c = to_columns(t, pipe(), with_target=True)
    assert c.valid.tolist() == [True, False, False, False, False, False]
    r = dict(zip(c.reject_rows.tolist(), c.reject_reasons, strict=True))
    assert "pickup_lat: not a number ('abc')" in r[1] and "created_at: not an ISO 8601" in r[1]
    assert "pickup_lat: 95 outside [-90, 90]" in r[2]
    assert "pickup_lat: missing" in r[3] and "items_count: 0 outside [1, 500]" in r[3]
    # epoch seconds as text are fine; an unknown level maps to 'unknown'; the target is impossible
    assert r[4] == "actual_minutes: not a duration in (0, 1440] minutes (the spec's target.max)"
    assert r[5] == "vehicle_type: missing"
    assert c.checks == {"type": 2, "range": 2, "missing": 2, "impossible": 1}


def test_unknown_level_rejected_when_spec_says_so() -> None:
    text = Path(__file__).parents[2].joinpath("kernels/deliveries.toml").read_text()
    text = text.replace(
        'vehicle_type = ["bike", "scooter", "car", "van"]',
        'vehicle_type = { levels = ["bike", "car"], unknown = "reject" }',
    )
    spec = parse_spec(text)
    c = to_columns(
        table(vehicle_type=["bike", "boat", "car", "bike", "bike", "bike"]),
        Pipeline(spec, {"zone": ["Mitte"]}),
    )
    assert c.reject_rows.tolist() == [1]
    assert "unknown level 'boat' (known: bike, car)" in c.reject_reasons[0]


def test_optional_column_may_be_absent_and_time_kinds() -> None:
    t = table().drop_columns(["prep_minutes"])
    c = to_columns(t, pipe())
    assert np.isnan(c.columns.nums[:, 1]).all()
    berlin = Pipeline(
        parse_spec(
            Path(__file__)
            .parents[2]
            .joinpath("kernels/deliveries.toml")
            .read_text()
            .replace('"UTC"', '"Europe/Berlin"')
        ),
        {"zone": ["Mitte"]},
    )
    ts = pa.array([datetime(2026, 1, 1, 12, 0)] * 6, pa.timestamp("us"))  # naive: Berlin wall clock
    c2 = to_columns(table(created_at=ts), berlin)
    assert c2.columns.offset[0] == 3600
    assert c2.columns.utc[0] == int(datetime(2026, 1, 1, 11, 0, tzinfo=ZoneInfo("UTC")).timestamp())
    tz = pa.array(
        [datetime(2026, 7, 1, 10, 0, tzinfo=ZoneInfo("UTC"))] * 6, pa.timestamp("ms", tz="UTC")
    )
    c3 = to_columns(table(created_at=tz), berlin)
    assert c3.columns.offset[0] == 7200
    ep = pa.array([1782900000] * 6, pa.int64())
    c4 = to_columns(table(created_at=ep), berlin)
    assert c4.columns.utc[0] == 1782900000 and c4.columns.offset[0] == 7200


def test_read_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "x.csv", SPEC)
    with pytest.raises(DataError, match="unsupported file type"):
        read_table(tmp_path / "x.json", SPEC)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="file is empty"):
        read_table(tmp_path / "empty.csv", SPEC)
    (tmp_path / "header.csv").write_text(",".join(table().column_names) + "\n")
    with pytest.raises(DataError, match="no rows"):
        read_table(tmp_path / "header.csv", SPEC)
    write_table(table().drop_columns(["pickup_lat", "zone"]), tmp_path / "miss.parquet")
    with pytest.raises(DataError, match="missing columns pickup_lat, zone"):
        read_table(tmp_path / "miss.parquet", SPEC)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read parquet"):
        read_table(tmp_path / "junk.parquet", SPEC)


def test_batches_stream_both_formats(tmp_path: Path) -> None:
    t = table(5000, order_id=[f"o{i}" for i in range(5000)])
    for name in ("a.csv", "a.parquet"):
        write_table(t, tmp_path / name)
        got = list(iter_batches(tmp_path / name, SPEC, batch_rows=1000))
        assert sum(b.num_rows for b in got) == 5000
        assert got[0].column("order_id")[0].as_py() == "o0"
    # CSV with a bad value far into the file: one refused row, not a failed file
    csv = tmp_path / "dirty.csv"
    lines = (tmp_path / "a.csv").read_text().splitlines()
    lines[4000] = lines[4000].replace("52.52", "oops", 1)
    csv.write_text("\n".join(lines) + "\n")
    refused = sum(
        len(to_columns(b, pipe()).reject_rows) for b in iter_batches(csv, SPEC, batch_rows=1000)
    )
    assert refused == 1


def test_learn_levels_by_frequency() -> None:
    zones = ["A"] * 10 + ["B"] * 20 + ["C"] * 2 + [None] * 3
    t = table(35, zone=zones)
    lv = learn_levels(t, SPEC, min_count=5)
    assert lv["zone"] == ("B", "A")
    assert lv["vehicle_type"] == ("bike", "scooter", "car", "van")
    with pytest.raises(DataError, match="no value occurs"):
        learn_levels(table(3, zone=["x", "y", "z"]), SPEC, min_count=5)


def test_parquet_roundtrip_of_types(tmp_path: Path) -> None:
    t = table()
    write_table(t, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").equals(t)
