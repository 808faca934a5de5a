"""The synthetic delivery generator: determinism, schema, time zones and real structure."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from kernels.errors import ConfigError, DataError
from kernels.geo import haversine_km_array
from kernels.spec import default_spec, load_spec, parse_spec
from server.cli import main as cli_main
from training.quality import assess
from training.synth import (
    _TRIP_CITIES,
    COLUMNS,
    SCHEMA,
    TRIP_CARRIERS,
    TRIP_COLUMNS,
    TRIP_MODES,
    TRIP_SCHEMA,
    VEHICLES,
    WEATHERS,
    generate,
    generate_trips,
    write_table,
)

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture(scope="module")
def big() -> dict[str, np.ndarray]:
    """50k rows over the default 26 weeks (January to early July), as numpy columns."""
    tb = generate(50_000, seed=7)
    cols = {c: tb.column(c).to_numpy(zero_copy_only=False) for c in tb.column_names}
    times = [datetime.fromisoformat(s) for s in cols["created_at"]]
    cols["_local_hour"] = np.array([t.hour for t in times])
    cols["_month"] = np.array([t.month for t in times])
    cols["_weekday"] = np.array([t.weekday() for t in times])
    cols["_utc"] = np.array([t.timestamp() for t in times])
    cols["_dist"] = haversine_km_array(
        cols["pickup_lat"], cols["pickup_lon"], cols["dropoff_lat"], cols["dropoff_lon"]
    )
    return cols


# ---- determinism and schema ------------------------------------------------------------------


def test_same_seed_same_table_other_seed_other_table() -> None:
    a = generate(3_000, seed=11)
    b = generate(3_000, seed=11)
    c = generate(3_000, seed=12)
    assert a.equals(b)
    assert not a.equals(c)
    assert a.column("actual_minutes") != c.column("actual_minutes")


def test_schema_matches_the_default_spec() -> None:
    tb = generate(500, seed=1)
    assert tb.schema == SCHEMA
    assert tb.column_names == list(COLUMNS)
    spec = default_spec()
    assert set(tb.column_names) == {spec.key, spec.target, *spec.input_columns}
    assert tb.schema.field("items_count").type == pa.int64()
    for name in ("pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon", "prep_minutes"):
        assert tb.schema.field(name).type == pa.float64()
    for name in ("order_id", "created_at", "vehicle_type", "weather", "zone"):
        assert tb.schema.field(name).type == pa.string()
    levels = {c.name: c.levels for c in spec.categorical}
    assert levels["vehicle_type"] == VEHICLES
    assert levels["weather"] == WEATHERS


def test_zero_and_one_rows() -> None:
    empty = generate(0)
    assert empty.num_rows == 0
    assert empty.schema == SCHEMA
    one = generate(1, seed=3)
    assert one.num_rows == 1
    assert one.column("order_id")[0].as_py() == "o0000001"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rows": -1},
        {"rows": 10, "seed": -2},
        {"rows": 10, "weeks": 0},
        {"rows": 10, "start": "2025-13-01"},
        {"rows": 10, "city": "atlantis"},
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        generate(**kwargs)  # type: ignore[arg-type]


# ---- values ----------------------------------------------------------------------------------


def test_value_ranges(big: dict[str, np.ndarray]) -> None:
    n = big["order_id"].size
    assert n == 50_000
    ids = big["order_id"]
    assert len(set(ids.tolist())) == n
    assert ids[0] == "o0000001" and ids[-1] == "o0050000"
    assert np.all(np.diff(big["_utc"]) >= 0), "rows must be sorted by created_at"
    for lat, lon in (("pickup_lat", "pickup_lon"), ("dropoff_lat", "dropoff_lon")):
        assert np.all(np.abs(big[lat] - 52.52) < 0.2)
        assert np.all(np.abs(big[lon] - 13.405) < 0.3)
    dist = big["_dist"]
    assert np.mean((dist >= 0.5) & (dist <= 12.0)) > 0.9
    assert set(np.unique(big["vehicle_type"])) == set(VEHICLES)
    assert set(np.unique(big["weather"])) <= set(WEATHERS)
    assert 10 <= np.unique(big["zone"]).size <= 15
    items = big["items_count"]
    assert items.min() >= 1 and 30 <= items.max() <= 80
    assert np.median(items) <= 6
    actual = big["actual_minutes"]
    assert np.all(actual > 0) and np.all(np.isfinite(actual))
    assert np.mean((actual >= 10) & (actual <= 90)) > 0.9
    assert 0.001 < np.mean(actual > 150) < 0.02  # the anomalies (failed attempts) and tail
    prep = big["prep_minutes"]
    null = np.isnan(prep)
    assert 0.13 < null.mean() < 0.17
    assert np.all((prep[~null] > 0) & (prep[~null] <= 240))


def test_created_at_carries_the_berlin_offset(big: dict[str, np.ndarray]) -> None:
    offsets = np.array([s[-6:] for s in big["created_at"]])
    assert set(offsets[big["_month"] == 1]) == {"+01:00"}
    assert set(offsets[big["_month"] == 7]) == {"+02:00"}
    for s in big["created_at"][::97]:
        t = datetime.fromisoformat(s)
        assert t.utcoffset() == t.astimezone(BERLIN).utcoffset()


@pytest.mark.parametrize(("start", "switch_day"), [("2025-03-24", 30), ("2025-10-20", 26)])
def test_created_at_across_a_dst_switch(start: str, switch_day: int) -> None:
    tb = generate(20_000, seed=2, start=start, weeks=1)
    strings = tb.column("created_at").to_pylist()
    times = [datetime.fromisoformat(s) for s in strings]
    # every string is exactly the Berlin wall time and offset of its instant
    for s, t in zip(strings, times, strict=True):
        assert t.astimezone(BERLIN).isoformat() == s
    utc = np.array([t.timestamp() for t in times])
    assert np.all(np.diff(utc) >= 0)
    switch = datetime(2025, 3 if switch_day == 30 else 10, switch_day, 1, tzinfo=UTC).timestamp()
    before = {s[-6:] for s, u in zip(strings, utc, strict=True) if u < switch}
    after = {s[-6:] for s, u in zip(strings, utc, strict=True) if u >= switch}
    assert before == ({"+01:00"} if switch_day == 30 else {"+02:00"})
    assert after == ({"+02:00"} if switch_day == 30 else {"+01:00"})
    if switch_day == 30:  # 02:00-02:59 local does not exist that night
        assert not any(s.startswith("2025-03-30T02:") for s in strings)


def test_weather_persists_and_snows_only_in_winter(big: dict[str, np.ndarray]) -> None:
    w = big["weather"]
    assert set(w[big["_month"] >= 3]) <= {"clear", "rain", "fog"}
    assert np.mean(w[big["_month"] <= 2] == "snow") > 0.03
    assert np.mean(w[1:] != w[:-1]) < 0.05  # spells last hours, orders come minutes apart
    hour_key = np.floor(big["_utc"] / 3600).astype(np.int64)
    same_hour = hour_key[1:] == hour_key[:-1]
    assert np.all(w[1:][same_hour] == w[:-1][same_hour])


# ---- structure a model can learn -------------------------------------------------------------


def test_demand_has_daily_and_weekly_patterns(big: dict[str, np.ndarray]) -> None:
    h = big["_local_hour"]
    per_hour = np.bincount(h, minlength=24)
    assert per_hour[12] > 4 * per_hour[4]
    assert per_hour[19] > 4 * per_hour[4]
    assert per_hour[19] > per_hour[16] and per_hour[12] > per_hour[10]
    weekend = big["_weekday"] >= 5
    days = np.array([c[:10] for c in big["created_at"]])  # local dates
    n_weekend_days = np.unique(days[weekend]).size
    n_weekdays = np.unique(days[~weekend]).size

    def per_day(hours: np.ndarray, weekend_days: bool) -> float:
        sel = hours & (weekend if weekend_days else ~weekend)
        return float(sel.sum() / (n_weekend_days if weekend_days else n_weekdays))

    morning = (h >= 7) & (h < 10)
    evening = (h >= 18) & (h < 21)
    assert per_day(morning, True) < 0.85 * per_day(morning, False)
    assert per_day(evening, True) > 1.2 * per_day(evening, False)


def test_rush_hour_slows_cars_much_more_than_bikes(big: dict[str, np.ndarray]) -> None:
    h, wd = big["_local_hour"], big["_weekday"]
    weekday = wd < 5
    rush = weekday & np.isin(h, (7, 8, 17, 18))
    off = weekday & (h >= 10) & (h <= 15)
    base = (big["_dist"] > 2.0) & (big["weather"] == "clear")
    mpk = big["actual_minutes"] / big["_dist"]

    def ratio(vehicle: str) -> float:
        v = base & (big["vehicle_type"] == vehicle)
        return float(np.median(mpk[v & rush]) / np.median(mpk[v & off]))

    car, bike = ratio("car"), ratio("bike")
    assert car > 1.08
    assert car > bike + 0.05


def test_bad_weather_is_slower(big: dict[str, np.ndarray]) -> None:
    a, w = big["actual_minutes"], big["weather"]
    winter = big["_month"] <= 2
    assert a[w == "rain"].mean() > 1.03 * a[w == "clear"].mean()
    assert a[winter & (w == "snow")].mean() > 1.1 * a[winter & (w == "clear")].mean()


def test_longer_trips_and_more_items_take_longer(big: dict[str, np.ndarray]) -> None:
    a, d = big["actual_minutes"], big["_dist"]
    edges = [0.0, 2.0, 4.0, 6.0, 9.0]
    means = [a[(d >= lo) & (d < hi)].mean() for lo, hi in itertools.pairwise(edges)]
    assert all(m2 > m1 + 3.0 for m1, m2 in itertools.pairwise(means))
    items, prep = big["items_count"], big["prep_minutes"]
    bins = [(1, 1), (2, 3), (4, 9), (10, 19), (20, 80)]
    preps = [np.nanmean(prep[(items >= lo) & (items <= hi)]) for lo, hi in bins]
    assert all(p2 > p1 for p1, p2 in itertools.pairwise(preps))
    assert preps[-1] > 1.8 * preps[0]
    few, many = items <= 2, items >= 10
    assert a[many].mean() > a[few].mean() + 3.0


def test_naive_baselines_are_clearly_worse(big: dict[str, np.ndarray]) -> None:
    a = big["actual_minutes"]
    median_mae = np.abs(a - np.median(a)).mean()
    # a crude model from the features: cell means by vehicle x distance bin x weather x rush
    dbin = np.digitize(big["_dist"], [1, 2, 3, 4, 5, 6, 8, 10])
    vcode = np.searchsorted(np.array(VEHICLES), big["vehicle_type"], sorter=np.argsort(VEHICLES))
    wcode = np.searchsorted(np.sort(WEATHERS), big["weather"])
    rush = np.isin(big["_local_hour"], (7, 8, 17, 18)).astype(np.int64)
    cell = ((vcode * 10 + dbin) * 4 + wcode) * 2 + rush
    sums = np.bincount(cell, weights=a)
    counts = np.bincount(cell)
    pred = sums[cell] / counts[cell]
    assert np.abs(a - pred).mean() < 0.75 * median_mae


# ---- writing ---------------------------------------------------------------------------------


def test_parquet_and_csv_round_trip(tmp_path: Path) -> None:
    tb = generate(2_000, seed=4)
    pq_path = tmp_path / "out" / "d.parquet"  # a missing folder is created
    write_table(tb, pq_path)
    assert pq.read_table(pq_path).equals(tb)

    csv_path = tmp_path / "d.csv"
    write_table(tb, csv_path)
    back = pacsv.read_csv(
        csv_path,
        convert_options=pacsv.ConvertOptions(
            column_types={f.name: f.type for f in SCHEMA}, strings_can_be_null=False
        ),
    )
    assert back.column_names == list(COLUMNS)
    assert back.cast(SCHEMA).equals(tb)
    assert back.column("prep_minutes").null_count == tb.column("prep_minutes").null_count


def test_bad_suffix_and_unwritable_path_raise_data_error(tmp_path: Path) -> None:
    tb = generate(10, seed=4)
    with pytest.raises(DataError, match=r"\.parquet or \.csv"):
        write_table(tb, tmp_path / "d.xlsx")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError) as err:
        write_table(tb, blocker / "d.parquet")  # parent is a file
    assert "\n" not in str(err.value)


# ---- long trips ------------------------------------------------------------------------------

TRIPS_TOML = Path(__file__).resolve().parents[2] / "kernels" / "trips.toml"
TRIP_ZONES = {c.code: ZoneInfo(c.timezone) for c in _TRIP_CITIES}


@pytest.fixture(scope="module")
def trips() -> pa.Table:
    """20k trips over the default 52 weeks."""
    return generate_trips(20_000, seed=5)


@pytest.fixture(scope="module")
def trip_cols(trips: pa.Table) -> dict[str, np.ndarray]:
    cols = {c: trips.column(c).to_numpy(zero_copy_only=False) for c in trips.column_names}
    times = [datetime.fromisoformat(s) for s in cols["departed_at"]]
    cols["_utc"] = np.array([t.timestamp() for t in times])
    cols["_local_hour"] = np.array([t.hour + t.minute / 60.0 for t in times])
    cols["_dist"] = haversine_km_array(
        cols["origin_lat"], cols["origin_lon"], cols["dest_lat"], cols["dest_lon"]
    )
    return cols


def test_trips_same_seed_same_table_other_seed_other_table() -> None:
    a = generate_trips(3_000, seed=11)
    assert a.equals(generate_trips(3_000, seed=11))
    c = generate_trips(3_000, seed=12)
    assert not a.equals(c)
    assert a.column("duration_minutes") != c.column("duration_minutes")
    assert generate_trips(0).num_rows == 0
    assert generate_trips(1, seed=3).column("trip_id")[0].as_py() == "t0000001"


def test_trips_spec_loads_by_path_and_bundled_name() -> None:
    spec = load_spec("trips")
    assert spec == load_spec(TRIPS_TOML) == load_spec(str(TRIPS_TOML))
    assert resources.files("kernels").joinpath("trips.toml").is_file()  # package data
    assert (spec.name, spec.key, spec.event_time, spec.timezone) == (
        "trips",
        "trip_id",
        "departed_at",
        "UTC",
    )
    assert spec.time_features == ("hour", "day_of_week", "weekend", "day_of_year")
    g = spec.goal
    assert (g.name, g.unit, g.max_speed_kmh, g.tolerance) == (
        "duration_minutes",
        "minutes",
        950,
        30,
    )
    cats = [c.name for c in spec.categorical]
    nums = [n.name for n in spec.numeric]
    assert cats == ["mode", "carrier", "origin_hub"] and cats != sorted(cats)
    assert nums == ["weight_kg", "pallets", "stops", "customs_checks", "precip_mm"]
    assert nums != sorted(nums)
    assert TRIPS_TOML.read_text().index("[numeric]") < TRIPS_TOML.read_text().index("[categorical]")
    assert [n.name for n in spec.numeric if n.optional] == ["customs_checks"]
    levels = {c.name: c.levels for c in spec.categorical}
    assert levels == {"mode": TRIP_MODES, "carrier": (), "origin_hub": ()}


def test_trips_columns_match_the_trips_spec(trips: pa.Table) -> None:
    spec = load_spec("trips")
    assert trips.schema == TRIP_SCHEMA
    assert trips.column_names == list(TRIP_COLUMNS)
    assert trips.column_names == [spec.key, *spec.input_columns, spec.target]
    assert set(np.unique(trips.column("mode").to_numpy(zero_copy_only=False))) == set(TRIP_MODES)
    carriers = set(trips.column("carrier").to_pylist())
    assert carriers <= set(TRIP_CARRIERS) and len(carriers) >= 12
    hubs = set(trips.column("origin_hub").to_pylist())
    assert 30 <= len(hubs) <= 45 and all(h[:3] in TRIP_ZONES for h in hubs)
    assert 0.10 < trips.column("customs_checks").null_count / trips.num_rows < 0.14


def test_trips_distances_durations_and_speeds(trip_cols: dict[str, np.ndarray]) -> None:
    spec = load_spec("trips")
    g = spec.goal
    d, m, mode = trip_cols["_dist"], trip_cols["duration_minutes"], trip_cols["mode"]
    assert d.min() > 150.0 and d.max() < 20_000.0  # hundreds to thousands of km
    assert 500.0 < np.median(d) < 5_000.0 and np.mean(d > 5_000.0) > 0.1
    assert np.all((m >= 60.0) & (m <= 6_000.0))
    assert np.all((m >= g.min) & (m <= g.max))
    assert 600.0 < np.median(m) < 3_000.0  # hours to days
    speed = d / (m / 60.0)
    assert g.max_speed_kmh is not None and speed.max() < g.max_speed_kmh
    assert d[mode == "truck"].max() <= 1_500.0  # trucks only under ~1500 km
    assert d[mode == "rail"].max() <= 2_500.0
    assert np.median(d[mode == "air"]) > 2_000.0
    assert np.median(speed[mode == "air"]) > 2.0 * np.median(speed[mode == "truck"])
    for k in ("truck", "rail", "air"):
        assert np.mean(mode == k) > 0.08


def test_trips_departed_at_carries_each_origins_offset(trip_cols: dict[str, np.ndarray]) -> None:
    strings = trip_cols["departed_at"]
    offsets = {s[-6:] for s in strings}
    assert len(offsets) >= 10  # several zones, DST on both sides of the Atlantic
    assert {"+05:30", "+09:00", "-05:00", "-08:00", "+01:00", "+02:00"} <= offsets
    for s, hub in zip(strings[::41], trip_cols["origin_hub"][::41], strict=True):
        t = datetime.fromisoformat(s)
        assert t.astimezone(TRIP_ZONES[hub[:3]]).isoformat() == s  # the origin's wall clock
        assert s.endswith(":00" + s[-6:])  # whole minutes
    utc = trip_cols["_utc"]
    assert np.all(np.diff(utc) >= 0), "rows are sorted by the departure instant"
    assert list(strings) != sorted(strings)  # ... which is not text order
    assert (utc.max() - utc.min()) / 86_400 > 350  # about a year


def test_trips_local_time_effects(trip_cols: dict[str, np.ndarray]) -> None:
    """Air freight waits for the next cut-off (07, 15, 23 local): handing it in just before
    a cut-off is hours faster than just after it, on every origin's own clock."""
    air = trip_cols["mode"] == "air"
    h, m = trip_cols["_local_hour"], trip_cols["duration_minutes"]
    before = air & (((h >= 6.0) & (h < 7.0)) | ((h >= 14.0) & (h < 15.0)))
    after = air & (((h >= 7.0) & (h < 8.0)) | ((h >= 15.0) & (h < 16.0)))
    assert np.median(m[after]) > np.median(m[before]) + 4 * 60
    rail = trip_cols["mode"] == "rail"  # trains leave at 08:00 and 20:00 local
    assert (
        np.median(m[rail & (h >= 8.0) & (h < 10.0)])
        > np.median(m[rail & (h >= 6.0) & (h < 8.0)]) + 6 * 60
    )


def test_trips_drift_over_the_period(trip_cols: dict[str, np.ndarray]) -> None:
    utc = trip_cols["_utc"]
    f = (utc - utc.min()) / (utc.max() - utc.min())
    nova = trip_cols["carrier"] == "Nova Freight"
    assert not nova[f < 0.7].any() and nova[f > 0.8].mean() > 0.02  # a carrier enters late
    # Skybridge Cargo moves its sorting to a remote hub after 55 % of the period
    m, air = trip_cols["duration_minutes"], trip_cols["mode"] == "air"
    sky = trip_cols["carrier"] == "Skybridge Cargo"

    def growth(sel: np.ndarray) -> float:
        return float(np.median(m[sel & (f > 0.6)]) / np.median(m[sel & (f < 0.5)]))

    assert growth(air & sky) > growth(air & ~sky) + 0.07


def test_trips_pass_the_quality_gate_and_fail_a_slow_speed_limit(trips: pa.Table) -> None:
    report = assess(trips, load_spec("trips"))
    assert report.passed and report.score >= 80, report.format()
    text = TRIPS_TOML.read_text(encoding="utf-8")
    slow_text = re.sub(r"(?m)^max_speed_kmh = 950\b", "max_speed_kmh = 150", text)
    assert slow_text != text
    slow = parse_spec(slow_text, "trips-150.toml")
    assert slow.goal.max_speed_kmh == 150
    bad = assess(trips, slow)
    assert not bad.passed, bad.format()
    check = next(c for c in bad.checks if c.name == "impossible_durations")
    assert not check.passed and "max_speed_kmh" in check.detail


@pytest.mark.parametrize(
    "kwargs", [{"rows": -1}, {"rows": 10, "seed": -2}, {"rows": 10, "weeks": 0}]
)
def test_trips_bad_arguments_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        generate_trips(**kwargs)  # type: ignore[arg-type]


def test_cli_generate_kind(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    assert (
        cli_main(["generate", "--kind", "trips", "--rows", "400", "--seed", "2", "--out", str(out)])
        == 0
    )
    assert pq.read_table(out).equals(generate_trips(400, seed=2))
    out2 = tmp_path / "d.parquet"
    assert cli_main(["generate", "--rows", "300", "--seed", "2", "--out", str(out2)]) == 0
    assert pq.read_table(out2).equals(generate(300, seed=2))  # deliveries by default
    with pytest.raises(SystemExit):
        cli_main(["generate", "--kind", "boats", "--rows", "3", "--out", str(out2)])
