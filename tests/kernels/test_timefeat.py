"""Time kernels against Python's datetime/zoneinfo."""

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.timefeat import (
    NO_OFFSET,
    civil_from_days,
    days_from_civil,
    local_time_features,
    offset_at,
    parse_iso_strings,
    resolve_offsets,
    to_utc_offset,
    zone_table,
)

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Sao_Paulo",
]
TABLES = {z: zone_table(z) for z in ZONES}
epochs = st.integers(0, 4_102_444_799)


@given(st.sampled_from(ZONES), epochs)
@settings(max_examples=400, deadline=None)
def test_zone_offsets_match_zoneinfo(zone: str, t: int) -> None:
    starts, offs = TABLES[zone]
    expected = datetime.fromtimestamp(t, ZoneInfo(zone)).utcoffset()
    assert expected is not None
    assert offset_at(t, starts, offs) == int(expected.total_seconds())


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
def test_offsets_exact_around_dst_changes(zone: str) -> None:
    starts, offs = TABLES[zone]
    assert len(starts) > 100  # many DST changes over 130 years
    for s in starts[1:40]:
        for t in (int(s) - 1, int(s), int(s) + 1):
            u = datetime.fromtimestamp(t, ZoneInfo(zone)).utcoffset()
            assert u is not None
            assert offset_at(t, starts, offs) == int(u.total_seconds())


@given(st.integers(-1_000_000, 1_000_000))
def test_civil_roundtrip(days: int) -> None:
    y, m, d = civil_from_days(days)
    assert days_from_civil(y, m, d) == days
    if 1 <= y <= 9999:
        assert (datetime(1970, 1, 1) + timedelta(days=days)).date() == datetime(y, m, d).date()


@given(epochs, st.integers(-14 * 3600, 14 * 3600))
@settings(max_examples=300, deadline=None)
def test_local_time_features_match_datetime(t: int, off: int) -> None:
    hs, hc, ds, dc, we = local_time_features(t, off)
    local = datetime.fromtimestamp(t, UTC) + timedelta(seconds=off)
    h = local.hour + local.minute / 60 + local.second / 3600
    assert math.isclose(hs, math.sin(2 * math.pi * h / 24), abs_tol=1e-9)
    assert math.isclose(hc, math.cos(2 * math.pi * h / 24), abs_tol=1e-9)
    dow = local.weekday()
    assert math.isclose(ds, math.sin(2 * math.pi * dow / 7), abs_tol=1e-9)
    assert math.isclose(dc, math.cos(2 * math.pi * dow / 7), abs_tol=1e-9)
    assert we == (1.0 if dow >= 5 else 0.0)


aware = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2099, 12, 30),
    timezones=st.sampled_from([UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("Asia/Kolkata")]),
)


@given(aware, st.sampled_from(["T", " "]), st.booleans())
@settings(max_examples=300, deadline=None)
def test_parse_iso_with_offset_matches_fromisoformat(dt: datetime, sep: str, frac: bool) -> None:
    dt = dt.replace(microsecond=dt.microsecond if frac else 0)
    text = dt.isoformat(sep=sep)
    wall, off, ok = parse_iso_strings([text])
    assert ok[0]
    u = dt.utcoffset()
    assert u is not None
    assert off[0] == int(u.total_seconds())
    starts, offs = TABLES["UTC"]
    resolve_offsets(wall, off, starts, offs)
    assert wall[0] == math.floor(dt.timestamp())


def test_parse_variants_and_rejects() -> None:
    texts = [
        "2026-03-29T01:30:00Z",
        "2026-03-29T03:30:00+0200",
        "2026-03-29T03:30+02",
        " 2026-03-29T03:30:00.123456+02:00 ",
        "2026-01-01",
        "2024-02-29T23:59:60Z",  # leap second clamps to :59
        "2026-02-30T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T10:00:00+25:00",
        "2026-01-01T10:00:00 junk",
        "1767225600",
        "",
        "2026-01-01T10:00:00.",
    ]
    wall, off, ok = parse_iso_strings(texts)
    assert ok.tolist() == [True] * 6 + [False] * 8
    assert off[4] == NO_OFFSET
    starts, offs = TABLES["UTC"]
    resolve_offsets(wall, off, starts, offs)
    assert wall[0] == wall[1] == wall[2] == wall[3] == 1774747800
    assert wall[5] == int(datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC).timestamp())


def test_naive_times_take_the_zone_offset_across_dst() -> None:
    starts, offs = TABLES["Europe/Berlin"]
    texts = [
        "2026-01-15T12:00:00",
        "2026-07-15T12:00:00",
        "2026-03-29T03:30:00",
        "2026-10-25T01:30:00",
    ]
    wall, off, _ok = parse_iso_strings(texts)
    resolve_offsets(wall, off, starts, offs)
    berlin = ZoneInfo("Europe/Berlin")
    for i, t in enumerate(texts):
        ref = datetime.fromisoformat(t).replace(tzinfo=berlin)
        assert wall[i] == int(ref.timestamp()), t
        u = ref.utcoffset()
        assert u is not None and off[i] == int(u.total_seconds())


def test_to_utc_offset_all_input_kinds() -> None:
    starts, offs = TABLES["Europe/Berlin"]
    aware = datetime(2026, 7, 1, 8, 0, tzinfo=ZoneInfo("America/New_York"))
    # the clock rule: the written offset fixes the instant, the spec's zone the wall clock
    assert to_utc_offset(aware, starts, offs) == (int(aware.timestamp()), 2 * 3600)
    naive = datetime(2026, 7, 1, 8, 0)
    assert to_utc_offset(naive, starts, offs) == (
        int(naive.replace(tzinfo=ZoneInfo("Europe/Berlin")).timestamp()),
        7200,
    )
    assert to_utc_offset(1767225600, starts, offs) == (1767225600, 3600)


def test_time_columns_vectorised_equals_scalar() -> None:
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4_000_000_000, 1000)
    starts, offs = TABLES["America/New_York"]
    got = np.array([offset_at(int(x), starts, offs) for x in t])
    ref = np.array(
        [
            datetime.fromtimestamp(int(x), ZoneInfo("America/New_York")).utcoffset().total_seconds()
            for x in t
        ]
    )  # type: ignore[union-attr]
    assert (got == ref).all()
