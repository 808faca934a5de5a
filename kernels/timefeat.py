"""Time kernels: ISO 8601 parsing, time-zone offsets, local time-of-day features.

Times travel as two columns: ``utc`` (int64 epoch seconds) and ``offset``
(int32 seconds east of UTC of the spec's time zone at that instant). The clock
rule: an offset written in the input (``+01:00``, ``Z``) only fixes the instant;
the local time every feature reads is always the spec zone's, looked up in a
transition table (:func:`zone_table`) so DST is exact inside numba. A time
without an offset is wall-clock time in the spec's zone.
"""

from __future__ import annotations

import bisect
import math
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
from numba import njit

__all__ = [
    "NO_OFFSET",
    "civil_from_days",
    "day_of_year_features",
    "days_from_civil",
    "fill_zone_offsets",
    "local_time_features",
    "offset_at",
    "parse_iso8601",
    "parse_iso_strings",
    "resolve_offsets",
    "to_utc_offset",
    "zone_table",
]

#: Marker in an ``offset`` column: the time carried no offset (use the zone).
NO_OFFSET = np.int32(-(2**31))
_TWO_PI = 2.0 * math.pi
_TABLE_START = datetime(1969, 12, 1, tzinfo=UTC)
_TABLE_END = datetime(2101, 1, 1, tzinfo=UTC)


def zone_table(zone: ZoneInfo | str) -> tuple[np.ndarray, np.ndarray]:
    """Transition table of a zone for 1970..2100: ``(starts, offsets)``, read-only arrays.

    ``offsets[i]`` (seconds) applies from ``starts[i]`` (epoch seconds) on; ``starts[0]``
    is -inf-like. Built by sampling every 6 hours and bisecting each change to the second;
    memoised per zone name (about 0.15 s to build).
    """
    return _zone_table(zone if isinstance(zone, str) else str(zone.key))


@lru_cache(maxsize=64)
def _zone_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    tz = ZoneInfo(name)

    def off(t: int) -> int:
        d = datetime.fromtimestamp(t, tz)
        u = d.utcoffset()
        return int(u.total_seconds()) if u is not None else 0

    step = 6 * 3600
    t0 = int(_TABLE_START.timestamp())
    t1 = int(_TABLE_END.timestamp())
    starts = [-(2**62)]
    offsets = [off(t0)]
    prev_t, prev_o = t0, offsets[0]
    for t in range(t0 + step, t1, step):
        o = off(t)
        if o != prev_o:
            lo, hi = prev_t, t  # off(lo) == prev_o, off(hi) == o
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if off(mid) == prev_o:
                    lo = mid
                else:
                    hi = mid
            starts.append(hi)
            offsets.append(o)
            prev_o = o
        prev_t = t
    s_arr = np.asarray(starts, dtype=np.int64)
    o_arr = np.asarray(offsets, dtype=np.int32)
    s_arr.setflags(write=False)
    o_arr.setflags(write=False)
    return s_arr, o_arr


@njit(cache=True, inline="always")
def offset_at(t: int, starts: np.ndarray, offsets: np.ndarray) -> int:
    """Offset (s) in force at epoch second t: offsets[k] for the last starts[k] <= t."""
    k = int(np.searchsorted(starts, t, side="right")) - 1
    return int(offsets[max(k, 0)])


@njit(cache=True, inline="always")
def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@njit(cache=True)
def civil_from_days(z: int) -> tuple[int, int, int]:
    """Inverse of :func:`days_from_civil`: (year, month, day)."""
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return y + (m <= 2), m, d


@njit(cache=True, inline="always")
def _digits(b: np.ndarray, i: int, n: int) -> int:
    v = 0
    for k in range(n):
        c = b[i + k] - 48
        if c < 0 or c > 9:
            return -1
        v = v * 10 + c
    return v


@njit(cache=True)
def parse_iso8601(
    data: np.ndarray, offsets: np.ndarray, wall: np.ndarray, offset: np.ndarray, ok: np.ndarray
) -> None:
    """Parse ISO 8601 texts stored Arrow-style: row r is ``data[offsets[r]:offsets[r+1]]``.

    Accepts ``YYYY-MM-DD``, then optionally ``T`` or a space and ``HH:MM[:SS[.fff…]]``,
    then optionally ``Z``, ``±HH``, ``±HHMM`` or ``±HH:MM``; surrounding spaces are
    ignored. Writes the wall-clock time as epoch seconds (as if it were UTC), the offset
    in seconds (NO_OFFSET when none) and ``ok``. Fractions of a second are dropped.
    """
    n = wall.shape[0]
    for r in range(n):
        ok[r] = False
        wall[r] = 0
        offset[r] = NO_OFFSET
        i = offsets[r]
        ln = offsets[r + 1]
        while ln > i and (data[ln - 1] == 32 or data[ln - 1] == 0):
            ln -= 1
        while i < ln and data[i] == 32:
            i += 1
        b = data
        if ln - i < 10 or b[i + 4] != 45 or b[i + 7] != 45:
            continue
        y = _digits(b, i, 4)
        mo = _digits(b, i + 5, 2)
        d = _digits(b, i + 8, 2)
        if y < 0 or mo < 1 or mo > 12 or d < 1:
            continue
        mdays = 31
        if mo == 4 or mo == 6 or mo == 9 or mo == 11:
            mdays = 30
        elif mo == 2:
            leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
            mdays = 29 if leap else 28
        if d > mdays:
            continue
        i += 10
        hh = 0
        mi = 0
        ss = 0
        if i < ln and (b[i] == 84 or b[i] == 116 or b[i] == 32):  # 'T', 't', ' '
            i += 1
            if ln - i < 5 or b[i + 2] != 58:
                continue
            hh = _digits(b, i, 2)
            mi = _digits(b, i + 3, 2)
            if hh < 0 or hh > 23 or mi < 0 or mi > 59:
                continue
            i += 5
            if i < ln and b[i] == 58:
                ss = _digits(b, i + 1, 2) if ln - i >= 3 else -1
                if ss < 0 or ss > 60:
                    continue
                ss = min(ss, 59)
                i += 3
                if i < ln and (b[i] == 46 or b[i] == 44):  # fraction
                    i += 1
                    j = i
                    while i < ln and 48 <= b[i] <= 57:
                        i += 1
                    if i == j:
                        continue
        off: int = int(NO_OFFSET)
        if i < ln:
            c = b[i]
            if (c == 90 or c == 122) and i + 1 == ln:  # 'Z'
                off = 0
                i += 1
            elif c == 43 or c == 45:  # '+', '-'
                sign = 1 if c == 43 else -1
                rest = ln - i - 1
                oh = -1
                om = 0
                if rest == 2:
                    oh = _digits(b, i + 1, 2)
                elif rest == 4:
                    oh = _digits(b, i + 1, 2)
                    om = _digits(b, i + 3, 2)
                elif rest == 5 and b[i + 3] == 58:
                    oh = _digits(b, i + 1, 2)
                    om = _digits(b, i + 4, 2)
                if oh < 0 or oh > 18 or om < 0 or om > 59:
                    continue
                off = sign * (oh * 3600 + om * 60)
                i = ln
            else:
                continue
        if i != ln:
            continue
        wall[r] = days_from_civil(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss
        offset[r] = off
        ok[r] = True


def parse_iso_strings(values: list[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convenience wrapper of :func:`parse_iso8601` for Python strings: (wall, offset, ok)."""
    enc = [str(v).encode("utf-8", "replace") for v in values]
    lens = np.fromiter((len(e) for e in enc), dtype=np.int64, count=len(enc))
    offs = np.zeros(len(enc) + 1, dtype=np.int64)
    np.cumsum(lens, out=offs[1:])
    data = np.frombuffer(b"".join(enc), dtype=np.uint8) if enc else np.empty(0, np.uint8)
    n = len(enc)
    wall = np.empty(n, np.int64)
    off = np.empty(n, np.int32)
    ok = np.empty(n, np.bool_)
    parse_iso8601(data, offs, wall, off, ok)
    return wall, off, ok


@njit(cache=True)
def resolve_offsets(
    wall: np.ndarray, offset: np.ndarray, starts: np.ndarray, offsets: np.ndarray
) -> None:
    """In place: turn (wall clock, written offset|NO_OFFSET) into (utc, zone offset).

    Rows with an offset: utc = wall − offset. Rows without: the wall clock is in the
    zone; utc = wall − o where o is the zone's offset at (wall − o₀), o₀ the offset at
    wall itself (exact except inside the hour a DST change skips or repeats). Either
    way ``offset`` ends as the zone's offset at utc (the clock rule).
    """
    for i in range(wall.shape[0]):
        o = offset[i]
        if o == NO_OFFSET:
            o0 = offset_at(wall[i], starts, offsets)
            o = offset_at(wall[i] - o0, starts, offsets)
        wall[i] -= o
        offset[i] = offset_at(wall[i], starts, offsets)


@njit(cache=True)
def fill_zone_offsets(
    utc: np.ndarray, offset: np.ndarray, starts: np.ndarray, offsets: np.ndarray
) -> None:
    """In place: offset[i] = the zone's offset at utc[i] (for epoch-second inputs)."""
    for i in range(utc.shape[0]):
        offset[i] = offset_at(utc[i], starts, offsets)


@njit(cache=True, inline="always")
def local_time_features(utc: int, offset: int) -> tuple[float, float, float, float, float]:
    """(sin, cos) of the local hour of day, (sin, cos) of the day of week, weekend flag.

    local = utc + offset;  h = (local mod 86400) / 3600;  hour = (sin, cos)(2π h / 24);
    dow = (⌊local / 86400⌋ + 3) mod 7 (Monday = 0);  day = (sin, cos)(2π dow / 7);
    weekend = 1 if dow ≥ 5 else 0.
    """
    local = utc + offset
    days = local // 86400
    sod = local - days * 86400
    h = sod / 3600.0
    dow = (days + 3) % 7
    a = _TWO_PI * h / 24.0
    b = _TWO_PI * dow / 7.0
    return math.sin(a), math.cos(a), math.sin(b), math.cos(b), 1.0 if dow >= 5 else 0.0


@njit(cache=True, inline="always")
def day_of_year_features(utc: int, offset: int) -> tuple[float, float]:
    """(sin, cos) of the local day of the year: a = 2π (doy + sod / 86400) / 365.25,
    doy = days since 1 January of the local date (0-based)."""
    local = utc + offset
    days = local // 86400
    y, _m, _d = civil_from_days(days)
    doy = days - days_from_civil(y, 1, 1)
    a = _TWO_PI * (doy + (local - days * 86400) / 86400.0) / 365.25
    return math.sin(a), math.cos(a)


def to_utc_offset(
    value: datetime | int | float, starts: np.ndarray, offsets: np.ndarray
) -> tuple[int, int]:
    """One event time (aware/naive datetime or epoch seconds) as (utc, zone offset).

    The offset lookup is :func:`offset_at` done with ``bisect`` on the table as Python
    lists (memoised per zone): a quarter of a numba call's cost on the one-request path."""
    if isinstance(value, datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            t = math.floor(value.timestamp())
            return t, _offset_py(t, starts, offsets)
        wall = int((value - datetime(1970, 1, 1)) // timedelta(seconds=1))
        w = np.array([wall], dtype=np.int64)
        o = np.array([NO_OFFSET], dtype=np.int32)
        resolve_offsets(w, o, starts, offsets)
        return int(w[0]), int(o[0])
    t = math.floor(value)
    return t, _offset_py(t, starts, offsets)


_LISTS: dict[int, tuple[np.ndarray, list[int], list[int]]] = {}


def _offset_py(t: int, starts: np.ndarray, offsets: np.ndarray) -> int:
    got = _LISTS.get(id(starts))
    if got is None or got[0] is not starts:  # zone tables are memoised and read-only
        got = (starts, starts.tolist(), offsets.tolist())
        _LISTS[id(starts)] = got
    k = bisect.bisect_right(got[1], t) - 1
    return int(got[2][max(k, 0)])
