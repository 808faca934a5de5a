"""A realistic synthetic delivery data set: orders, their context and their true durations.

Fully vectorised with numpy (the only Python loops run over hours of the period or over the
few zones, never over rows) and deterministic: the same ``(rows, seed, start, weeks, city)``
gives the identical table on every machine.

The city
--------
The layout of a city is fixed (drawn from a constant per-city seed, so different ``seed``
values sample different orders from the *same* city and a model trained on one seed can be
evaluated on another):

* about a dozen named zones ``z`` with a centroid, a spread ``σ_z`` (km), a road detour
  factor ``δ_z ∈ [1.2, 1.6]``, a congestion weight ``c_z``, a door hand-off time ``h_z``
  (dense inner-city blocks take longer), a population weight and a restaurant weight;
* ``N_DEPOTS`` depots (80 % restaurants, 20 % grocery depots) clustered in busy zones:
  location = zone centroid + N(0, (0.6 σ_z)²) km, popularity ~ LogNormal(0, 0.8), kitchen
  speed ``k_d`` ~ LogNormal(0, 0.25) (a hidden per-depot effect, learnable from the pickup
  coordinates);
* ``N_CUSTOMERS`` customer addresses: zone ~ population weight, location = centroid +
  N(0, σ_z²) km, kept within 16 km of the centre.

Weather
-------
An hourly Markov chain: in each hour the state ends with probability ``1 / D_s`` (mean spell
length ``D`` = clear 10 h, rain 5 h, snow 8 h, fog 4 h) and a new state is drawn from the
season's mix (winter = Dec-Feb: clear .55 rain .15 snow .18 fog .12; summer = Jun-Aug:
clear .75 rain .22 fog .03; else clear .62 rain .25 fog .13). Snow exists only in winter.

Orders in time
--------------
Order counts per UTC hour slot ``t`` (local hour ``H``, local weekday ``w``) are one
multinomial draw with weights::

    λ_t = P_type(w)[H] · D[w] · W[weather_t] · (1 + 0.12 cos(2π (doy − 15) / 365.25)) · (1 + 0.2 f_t)

``P_type`` is the weekday or weekend hourly profile (lunch and dinner peaks; weekends: late
mornings, brunch, a bigger dinner peak), ``D`` the weekday factor (Fri-Sun busier), ``W`` the
weather boost (rain 1.15, snow 1.25, fog 1.05) and ``f_t ∈ [0, 1]`` the position in the period
(demand growth). Seconds are uniform within the slot. The relative load of a slot is
``L_t = λ_t / mean(λ)``. Local times follow the city's time zone rules (DST included).

One order
---------
* depot: grocery with probability ``0.12 + 0.18 · day(H)``, then a depot of that kind by
  popularity; customer zone ``z_c`` ~ ``pop_c · exp(−d(z_d, z_c) / 3.5 km)``, then a random
  address of that zone; ``d`` = great-circle km (:func:`kernels.geo.haversine_km_array`);
* items: restaurants ``1 + NegBin(2, 0.45)``, grocery ``round(LogNormal(2.4, 0.6))``,
  clipped to ``[1, 80]``;
* vehicle: Gumbel-max over logits ``bike 1.2 − 0.45 d``, ``scooter 0.7 − 0.12 d``,
  ``car −0.6 + 0.12 d + 0.03 n``, ``van −2.8 + 0.1 d + 0.08 n`` (+1 for grocery),
  with bikes less likely in rain (−0.7) and snow (−1.6);
* prep (minutes), ``g ~ Gamma(8, 1/8)``:
  restaurant ``k_d (6 + 2.2 n^0.75)(1 + 0.25 L) g``, grocery ``k_d (5 + 0.6 n)(1 + 0.15 L) g``,
  clipped to ``[1, 120]``; ``prep_minutes`` reports it (0.1 min) except for ~15 % rows (null);
* speed (km/h): ``v = v0 / (1 + s_v c_z (0.7 r(H, w) + day(H))) · m_v(weather) · night``
  with ``c_z`` the mean congestion weight of the pickup and dropoff zones, ``H`` the local
  hour with minutes, ``v0`` = bike 15, scooter 25, car 28, van 22; congestion sensitivity ``s_v`` = bike .05,
  scooter .3, car .9, van 1; rush ``r`` = ``a_m N(H; 8, 0.8) + a_e N(H; 18, 1.0)`` (unit-peak
  Gaussians, ``a_m, a_e`` = 1, 1 on weekdays, .15, .5 on Saturday, .1, .35 on Sunday),
  ``day(H) = 0.25 N(H; 13.5, 3.5)``; weather factors ``m_v`` (rain .80-.90, snow .55-.72,
  fog .85-.90); cars, vans and scooters are 10 % faster 22:00-06:00;
* travel = ``60 · d · δ / v · s(doy) · ε_travel`` minutes, ``δ = (δ_pickup + δ_dropoff)/2
  + U(−.05, .05)``, winter slowdown ``s = 1 + 0.05 cos(2π (doy − 20) / 365.25)``,
  ``ε_travel ~ LogNormal(0, 0.12)``;
* timeline: courier assignment ``a ~ Gamma(2, 0.8 + 1.2 min(L, 2)) · W_a`` (rain 1.3, snow 1.6,
  fog 1.1), ride to the depot ``Gamma(2.5, 1.6) · v0/v``, departure
  ``max(prep, a + ride) + U(1, 3) + 0.03 n``, hand-off ``h_z + 0.04 n + Exp(1)``;
* ``actual_minutes = (departure + travel + hand-off) · exp(0.08 clip(t₄, −6, 8)) · (1 + 0.04 f)``
  (Student-t noise with 4 degrees of freedom, a gradual 4 % slowdown over the period);
  0.5 % anomalies (failed attempts) become ``actual · U(1.8, 3.5) + U(20, 60)``; at least
  3 minutes, rounded to 0.01.

Rows are sorted by ``created_at`` and numbered ``o0000001``, ``o0000002``, ... in that order.

Long trips
----------
:func:`generate_trips` writes a second kind of data: intercity freight legs (truck, rail, air)
between 30 real cities in Europe, North America and Asia, hours to days long, with event
times written in each origin city's own UTC offset. Its model is described in its docstring.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa

from kernels.errors import ConfigError
from kernels.geo import haversine_km_array
from training import io as _io

__all__ = [
    "CITIES",
    "COLUMNS",
    "SCHEMA",
    "TRIP_CARRIERS",
    "TRIP_COLUMNS",
    "TRIP_MODES",
    "TRIP_SCHEMA",
    "VEHICLES",
    "WEATHERS",
    "generate",
    "generate_trips",
    "write_table",
]

VEHICLES: tuple[str, ...] = ("bike", "scooter", "car", "van")
WEATHERS: tuple[str, ...] = ("clear", "rain", "snow", "fog")

SCHEMA = pa.schema(
    [
        pa.field("order_id", pa.string(), nullable=False),
        pa.field("created_at", pa.string(), nullable=False),
        pa.field("pickup_lat", pa.float64(), nullable=False),
        pa.field("pickup_lon", pa.float64(), nullable=False),
        pa.field("dropoff_lat", pa.float64(), nullable=False),
        pa.field("dropoff_lon", pa.float64(), nullable=False),
        pa.field("vehicle_type", pa.string(), nullable=False),
        pa.field("weather", pa.string(), nullable=False),
        pa.field("zone", pa.string(), nullable=False),
        pa.field("items_count", pa.int64(), nullable=False),
        pa.field("prep_minutes", pa.float64(), nullable=True),
        pa.field("actual_minutes", pa.float64(), nullable=False),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)

N_DEPOTS = 320
N_CUSTOMERS = 50_000
_KM_PER_DEG_LAT = 111.195
_MAX_ROWS = 100_000_000
_MAX_WEEKS = 520


# ---- cities ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Zone:
    name: str
    lat: float
    lon: float
    sigma_km: float  # spread of addresses around the centroid
    detour: float  # road km per great-circle km
    congestion: float  # weight of rush-hour slowdown
    handoff: float  # minutes from the kerb to the customer's door
    population: float  # share of customers
    depots: float  # share of restaurants/depots


@dataclass(frozen=True, slots=True)
class _City:
    name: str
    timezone: str
    lat: float
    lon: float
    radius_km: float
    layout_seed: int
    zones: tuple[_Zone, ...]


_BERLIN = _City(
    name="berlin",
    timezone="Europe/Berlin",
    lat=52.52,
    lon=13.405,
    radius_km=16.0,
    layout_seed=52_520_13_405,
    zones=(
        _Zone("Mitte", 52.5200, 13.4050, 1.3, 1.45, 1.40, 3.8, 1.0, 2.2),
        _Zone("Kreuzberg", 52.4970, 13.4110, 1.2, 1.40, 1.30, 3.6, 1.1, 2.0),
        _Zone("Friedrichshain", 52.5150, 13.4540, 1.2, 1.35, 1.20, 3.4, 1.0, 1.6),
        _Zone("Prenzlauer Berg", 52.5390, 13.4240, 1.2, 1.30, 1.15, 3.5, 1.2, 1.5),
        _Zone("Neukoelln", 52.4810, 13.4350, 1.4, 1.38, 1.15, 3.3, 1.3, 1.3),
        _Zone("Charlottenburg", 52.5160, 13.3040, 1.6, 1.32, 1.10, 3.0, 1.1, 1.4),
        _Zone("Schoeneberg", 52.4830, 13.3530, 1.3, 1.33, 1.10, 3.1, 1.0, 1.0),
        _Zone("Wedding", 52.5500, 13.3660, 1.3, 1.36, 1.05, 3.2, 0.9, 0.8),
        _Zone("Tempelhof", 52.4660, 13.3860, 1.6, 1.25, 0.90, 2.5, 0.7, 0.5),
        _Zone("Lichtenberg", 52.5150, 13.4990, 1.8, 1.28, 0.85, 2.7, 0.8, 0.5),
        _Zone("Steglitz", 52.4570, 13.3220, 1.8, 1.22, 0.80, 2.2, 0.8, 0.5),
        _Zone("Pankow", 52.5690, 13.4020, 1.8, 1.20, 0.75, 2.0, 0.6, 0.4),
        _Zone("Spandau", 52.5350, 13.2000, 2.2, 1.55, 0.70, 2.0, 0.5, 0.3),
    ),
)

#: Cities the generator knows, by name.
CITIES: dict[str, _City] = {"berlin": _BERLIN}


# ---- the model's constants -------------------------------------------------------------------

# Orders per local hour, relative (weekday / weekend).
_PROFILE_WEEKDAY = np.array(
    [0.25, 0.12, 0.06, 0.04, 0.04, 0.06, 0.15, 0.35, 0.50, 0.55, 0.60, 0.95,
     1.35, 1.20, 0.75, 0.60, 0.70, 1.00, 1.50, 1.75, 1.45, 0.95, 0.60, 0.40]
)  # fmt: skip
_PROFILE_WEEKEND = np.array(
    [0.45, 0.30, 0.18, 0.10, 0.06, 0.05, 0.06, 0.10, 0.22, 0.42, 0.80, 1.10,
     1.30, 1.25, 0.90, 0.75, 0.85, 1.15, 1.70, 2.00, 1.75, 1.20, 0.80, 0.60]
)  # fmt: skip
_DOW_VOLUME = np.array([0.90, 0.90, 0.95, 1.00, 1.15, 1.20, 1.15])  # Monday first
_WEATHER_VOLUME = np.array([1.00, 1.15, 1.25, 1.05])
# Rush amplitudes (morning, evening) by weekday.
_RUSH_MORNING = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.15, 0.10])
_RUSH_EVENING = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.50, 0.35])

# Weather chain: mean spell length in hours and the seasonal mixes (clear, rain, snow, fog).
_SPELL_HOURS = np.array([10.0, 5.0, 8.0, 4.0])
_MIX_WINTER = np.array([0.55, 0.15, 0.18, 0.12])
_MIX_SUMMER = np.array([0.75, 0.22, 0.00, 0.03])
_MIX_OTHER = np.array([0.62, 0.25, 0.00, 0.13])
_SNOW = 2

# Vehicles: free-flow km/h, congestion sensitivity, weather speed factors [clear, rain, snow, fog].
_V0 = np.array([15.0, 25.0, 28.0, 22.0])
_CONGESTION_SENS = np.array([0.05, 0.30, 0.90, 1.00])
_WEATHER_SPEED = np.array(
    [
        [1.00, 0.80, 0.55, 0.90],  # bike
        [1.00, 0.82, 0.60, 0.88],  # scooter
        [1.00, 0.90, 0.70, 0.85],  # car
        [1.00, 0.90, 0.72, 0.87],  # van
    ]
)
_WEATHER_ASSIGN = np.array([1.0, 1.3, 1.6, 1.1])
_NIGHT_MOTOR = np.array([1.0, 1.1, 1.1, 1.1])

_NULL_PREP_SHARE = 0.15
_ANOMALY_SHARE = 0.005


# ---- the public API --------------------------------------------------------------------------


def generate(
    rows: int,
    seed: int = 0,
    start: str = "2025-01-06",
    weeks: int = 26,
    city: str = "berlin",
) -> pa.Table:
    """``rows`` synthetic deliveries over ``weeks`` weeks from local midnight of ``start``.

    Columns are :data:`COLUMNS` (see :data:`SCHEMA`), sorted by ``created_at``. The generative
    model is described in this module's docstring. Raises :class:`ConfigError` for a bad
    argument.
    """
    c = _check_args(rows, seed, start, weeks, city)
    rows, seed, weeks = int(rows), int(seed), int(weeks)
    tz = ZoneInfo(c.timezone)
    day0 = date.fromisoformat(start)
    t0 = int(datetime(day0.year, day0.month, day0.day, tzinfo=tz).timestamp())
    end_day = day0 + timedelta(weeks=weeks)
    t1 = int(datetime(end_day.year, end_day.month, end_day.day, tzinfo=tz).timestamp())
    n_slots = (t1 - t0) // 3600

    weather_ss, order_ss = np.random.SeedSequence([seed, 0x5EED]).spawn(2)
    layout = _layout(c)

    # -- hour slots: local calendar, weather, demand --------------------------------------------
    slot_utc = t0 + 3600 * np.arange(n_slots, dtype=np.int64)
    slot_off = _utc_offsets(slot_utc, tz)
    slot_local = slot_utc + slot_off
    s_hour = (slot_local // 3600) % 24
    s_days = slot_local // 86400
    s_dow = (s_days + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    s_d64 = s_days.astype("datetime64[D]")
    s_month = s_d64.astype("datetime64[M]").astype(np.int64) % 12 + 1
    s_doy = (s_d64 - s_d64.astype("datetime64[Y]")).astype(np.int64)
    s_frac = np.arange(n_slots) / max(n_slots - 1, 1)
    s_weather = _weather_chain(np.random.default_rng(weather_ss), s_month)

    profile = np.where(s_dow[:, None] >= 5, _PROFILE_WEEKEND, _PROFILE_WEEKDAY)
    lam = (
        profile[np.arange(n_slots), s_hour]
        * _DOW_VOLUME[s_dow]
        * _WEATHER_VOLUME[s_weather]
        * (1.0 + 0.12 * np.cos(2 * np.pi * (s_doy - 15) / 365.25))
        * (1.0 + 0.2 * s_frac)
    )
    load = lam / lam.mean()

    rng = np.random.default_rng(order_ss)
    counts = rng.multinomial(rows, lam / lam.sum())
    slot = np.repeat(np.arange(n_slots), counts)
    utc = np.sort(slot_utc[slot] + rng.integers(0, 3600, rows))  # stays within its slot
    n = rows

    off = slot_off[slot]
    local = utc + off
    hour_f = (local % 86400) / 3600.0
    hour = s_hour[slot]
    dow = s_dow[slot]
    weather = s_weather[slot]
    L = load[slot]
    frac = (utc - t0) / max(t1 - t0, 1)
    doy = s_doy[slot]

    # -- depot, customer, distance ------------------------------------------------------------
    day_shape = np.exp(-0.5 * ((hour_f - 13.5) / 3.5) ** 2)
    grocery = rng.random(n) < 0.12 + 0.18 * day_shape
    depot = np.empty(n, dtype=np.int64)
    for kind in (False, True):
        sel = grocery == kind
        ids = np.flatnonzero(layout.grocery == kind)
        cum = np.cumsum(layout.popularity[ids])
        pick = np.searchsorted(cum, rng.random(int(sel.sum())) * cum[-1], side="right")
        depot[sel] = ids[np.minimum(pick, ids.size - 1)]
    d_zone = layout.depot_zone[depot]

    zone_cum = layout.zone_choice_cum[d_zone]  # (n, zones)
    c_zone = (zone_cum < rng.random(n)[:, None]).sum(axis=1)
    c_zone = np.minimum(c_zone, len(c.zones) - 1)
    z_start = layout.cust_start[c_zone]
    z_count = layout.cust_start[c_zone + 1] - z_start
    cust = z_start + (rng.random(n) * z_count).astype(np.int64)
    cust = np.minimum(cust, z_start + z_count - 1)

    p_lat = layout.depot_lat[depot]
    p_lon = layout.depot_lon[depot]
    d_lat = layout.cust_lat[cust]
    d_lon = layout.cust_lon[cust]
    dist = haversine_km_array(p_lat, p_lon, d_lat, d_lon)

    # -- items and vehicle ----------------------------------------------------------------------
    items = np.where(
        grocery,
        np.rint(rng.lognormal(2.4, 0.6, n)),
        1 + rng.negative_binomial(2, 0.45, n),
    )
    items = np.clip(items, 1, 80).astype(np.int64)

    logits = np.empty((n, 4))
    logits[:, 0] = 1.2 - 0.45 * dist - 0.7 * (weather == 1) - 1.6 * (weather == _SNOW)
    logits[:, 1] = 0.7 - 0.12 * dist
    logits[:, 2] = -0.6 + 0.12 * dist + 0.03 * items
    logits[:, 3] = -2.8 + 0.1 * dist + 0.08 * items + 1.0 * grocery
    vehicle = np.argmax(logits + rng.gumbel(size=(n, 4)), axis=1)

    # -- preparation ----------------------------------------------------------------------------
    k = layout.kitchen[depot]
    g = rng.gamma(8.0, 1.0 / 8.0, n)
    prep = np.where(
        grocery,
        k * (5.0 + 0.6 * items) * (1.0 + 0.15 * L),
        k * (6.0 + 2.2 * items**0.75) * (1.0 + 0.25 * L),
    )
    prep = np.clip(prep * g, 1.0, 120.0)

    # -- speed and travel -----------------------------------------------------------------------
    morning = np.exp(-0.5 * ((hour_f - 8.0) / 0.8) ** 2)
    evening = np.exp(-0.5 * ((hour_f - 18.0) / 1.0) ** 2)
    rush = _RUSH_MORNING[dow] * morning + _RUSH_EVENING[dow] * evening
    zc = layout.zone_congestion
    congestion = 0.5 * (zc[d_zone] + zc[c_zone]) * (0.7 * rush + 0.25 * day_shape)
    night = (hour >= 22) | (hour < 6)
    v_free = _V0[vehicle]
    speed = (
        v_free
        / (1.0 + _CONGESTION_SENS[vehicle] * congestion)
        * _WEATHER_SPEED[vehicle, weather]
        * np.where(night, _NIGHT_MOTOR[vehicle], 1.0)
    )
    zd = layout.zone_detour
    detour = 0.5 * (zd[d_zone] + zd[c_zone]) + rng.uniform(-0.05, 0.05, n)
    season = 1.0 + 0.05 * np.cos(2 * np.pi * (doy - 20) / 365.25)
    travel = 60.0 * dist * detour / speed * season * rng.lognormal(0.0, 0.12, n)

    # -- the timeline ---------------------------------------------------------------------------
    assign = rng.gamma(2.0, 0.8 + 1.2 * np.minimum(L, 2.0)) * _WEATHER_ASSIGN[weather]
    ride = rng.gamma(2.5, 1.6, n) * (v_free / speed)
    depart = np.maximum(prep, assign + ride) + rng.uniform(1.0, 3.0, n) + 0.03 * items
    handoff = layout.zone_handoff[c_zone] + 0.04 * items + rng.exponential(1.0, n)
    total = depart + travel + handoff
    total *= np.exp(0.08 * np.clip(rng.standard_t(4.0, n), -6.0, 8.0)) * (1.0 + 0.04 * frac)
    anomaly = rng.random(n) < _ANOMALY_SHARE
    total = np.where(anomaly, total * rng.uniform(1.8, 3.5, n) + rng.uniform(20.0, 60.0, n), total)
    actual = np.round(np.maximum(total, 3.0), 2)

    prep_null = rng.random(n) < _NULL_PREP_SHARE
    prep_rep = pa.array(np.round(prep, 1), type=pa.float64(), mask=prep_null)

    zone_names = pa.array([z.name for z in c.zones], type=pa.string())
    arrays: list[pa.Array] = [
        _ids(n, "o"),
        _iso_strings(local, off),
        pa.array(p_lat, type=pa.float64()),
        pa.array(p_lon, type=pa.float64()),
        pa.array(d_lat, type=pa.float64()),
        pa.array(d_lon, type=pa.float64()),
        pa.array(VEHICLES, type=pa.string()).take(pa.array(vehicle)),
        pa.array(WEATHERS, type=pa.string()).take(pa.array(weather)),
        zone_names.take(pa.array(c_zone)),
        pa.array(items, type=pa.int64()),
        prep_rep,
        pa.array(actual, type=pa.float64()),
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` as Parquet (``.parquet``) or CSV (``.csv``), by the suffix of ``path``.

    Missing parent folders are created. The file appears only once complete (temporary
    file, fsync, rename: :mod:`training.atomic`), so a failed write leaves no partial
    file. Raises :class:`~kernels.errors.DataError` with a one-line message for any other
    suffix or when the path cannot be written (naming the cause: no space left, ...).
    """
    _io.write_table(table, path)


# ---- helpers ---------------------------------------------------------------------------------


def _check_args(rows: int, seed: int, start: str, weeks: int, city: str) -> _City:
    _check_common(rows, seed, start, weeks)
    c = CITIES.get(str(city).strip().lower())
    if c is None:
        raise ConfigError(f"unknown city {city!r} (known: {', '.join(sorted(CITIES))})")
    return c


def _check_common(rows: int, seed: int, start: str, weeks: int) -> None:
    if (
        isinstance(rows, bool)
        or not isinstance(rows, int | np.integer)
        or not 0 <= rows <= _MAX_ROWS
    ):
        raise ConfigError(f"rows must be an integer in 0..{_MAX_ROWS}, got {rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if (
        isinstance(weeks, bool)
        or not isinstance(weeks, int | np.integer)
        or not 1 <= weeks <= _MAX_WEEKS
    ):
        raise ConfigError(f"weeks must be an integer in 1..{_MAX_WEEKS}, got {weeks!r}")
    try:
        day0 = date.fromisoformat(start)
    except (TypeError, ValueError):
        raise ConfigError(f"start must be a date like 2025-01-06, got {start!r}") from None
    if not 1971 <= day0.year <= 2090:
        raise ConfigError(f"start year must be in 1971..2090, got {day0.year}")


@dataclass(frozen=True, slots=True)
class _Layout:
    depot_zone: np.ndarray
    depot_lat: np.ndarray
    depot_lon: np.ndarray
    grocery: np.ndarray
    popularity: np.ndarray
    kitchen: np.ndarray
    cust_lat: np.ndarray  # sorted by zone
    cust_lon: np.ndarray
    cust_start: np.ndarray  # first customer of each zone, plus the total at the end
    zone_choice_cum: np.ndarray  # (zones, zones): cumulative P(customer zone | depot zone)
    zone_detour: np.ndarray
    zone_congestion: np.ndarray
    zone_handoff: np.ndarray


_LAYOUTS: dict[str, _Layout] = {}


def _layout(c: _City) -> _Layout:
    """The fixed geography of a city: depots and customer addresses (cached per city)."""
    got = _LAYOUTS.get(c.name)
    if got is not None:
        return got
    rng = np.random.default_rng(c.layout_seed)
    zlat = np.array([z.lat for z in c.zones])
    zlon = np.array([z.lon for z in c.zones])
    sigma = np.array([z.sigma_km for z in c.zones])
    km_lon = _KM_PER_DEG_LAT * np.cos(np.radians(c.lat))

    def place(zone: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = zone.size
        lat = zlat[zone] + rng.normal(0.0, 1.0, m) * spread / _KM_PER_DEG_LAT
        lon = zlon[zone] + rng.normal(0.0, 1.0, m) * spread / km_lon
        # keep everything within the city's radius
        dn = (lat - c.lat) * _KM_PER_DEG_LAT
        de = (lon - c.lon) * km_lon
        r = np.hypot(dn, de)
        shrink = np.where(r > c.radius_km, c.radius_km / np.maximum(r, 1e-9), 1.0)
        lat = c.lat + dn * shrink / _KM_PER_DEG_LAT
        lon = c.lon + de * shrink / km_lon
        return np.round(lat, 6), np.round(lon, 6)

    dw = np.array([z.depots for z in c.zones])
    depot_zone = np.sort(rng.choice(len(c.zones), N_DEPOTS, p=dw / dw.sum()))
    depot_lat, depot_lon = place(depot_zone, 0.6 * sigma[depot_zone])
    grocery = rng.random(N_DEPOTS) < 0.2
    popularity = rng.lognormal(0.0, 0.8, N_DEPOTS)
    kitchen = rng.lognormal(0.0, 0.25, N_DEPOTS)

    pw = np.array([z.population for z in c.zones])
    cust_zone = np.sort(rng.choice(len(c.zones), N_CUSTOMERS, p=pw / pw.sum()))
    cust_lat, cust_lon = place(cust_zone, sigma[cust_zone])
    cust_start = np.searchsorted(cust_zone, np.arange(len(c.zones) + 1))

    zz = len(c.zones)
    zd = haversine_km_array(
        np.repeat(zlat, zz), np.repeat(zlon, zz), np.tile(zlat, zz), np.tile(zlon, zz)
    ).reshape(zz, zz)
    w = pw[None, :] * np.exp(-zd / 3.5)
    cum = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
    cum[:, -1] = 1.0

    got = _Layout(
        depot_zone=depot_zone,
        depot_lat=depot_lat,
        depot_lon=depot_lon,
        grocery=grocery,
        popularity=popularity,
        kitchen=kitchen,
        cust_lat=cust_lat,
        cust_lon=cust_lon,
        cust_start=cust_start,
        zone_choice_cum=cum,
        zone_detour=np.array([z.detour for z in c.zones]),
        zone_congestion=np.array([z.congestion for z in c.zones]),
        zone_handoff=np.array([z.handoff for z in c.zones]),
    )
    _LAYOUTS[c.name] = got
    return got


def _utc_offsets(slot_utc: np.ndarray, tz: ZoneInfo) -> np.ndarray:
    """UTC offset in seconds at the start of each hour slot (a loop over hours, not rows)."""
    out = np.empty(slot_utc.size, dtype=np.int64)
    for i, t in enumerate(slot_utc.tolist()):
        delta = datetime.fromtimestamp(t, UTC).astimezone(tz).utcoffset()
        out[i] = int(delta.total_seconds()) if delta is not None else 0
    return out


def _weather_chain(rng: np.random.Generator, month: np.ndarray) -> np.ndarray:
    """Hourly weather states (codes into :data:`WEATHERS`): persistent spells, snow in winter."""
    n = month.size
    winter = np.isin(month, (12, 1, 2))
    summer = np.isin(month, (6, 7, 8))
    mixes = np.where(
        winter[:, None], _MIX_WINTER, np.where(summer[:, None], _MIX_SUMMER, _MIX_OTHER)
    )
    cum = np.cumsum(mixes, axis=1)
    draws = (cum < rng.random(n)[:, None]).sum(axis=1).clip(0, 3)  # a fresh state per hour
    change = rng.random(n)
    end_p = 1.0 / _SPELL_HOURS
    out = np.empty(n, dtype=np.int64)
    state = int(draws[0]) if n else 0
    for i in range(n):  # over hours of the period
        if change[i] < end_p[state] or (state == _SNOW and not winter[i]):
            state = int(draws[i])
        out[i] = state
    return out


def _digits(buf: np.ndarray, col: int, values: np.ndarray, width: int) -> None:
    """Write ``values`` as zero-padded decimals into ``buf[:, col:col + width]``."""
    v = values.astype(np.int64)
    for j in range(width - 1, -1, -1):
        buf[:, col + j] = 48 + v % 10
        v = v // 10


def _string_array(buf: np.ndarray) -> pa.Array:
    """A string array from a (rows, width) uint8 matrix of ASCII, one row per value."""
    n, w = buf.shape
    offsets = (np.arange(n + 1, dtype=np.int64) * w).astype(np.int32 if n * w < 2**31 else np.int64)
    typ = pa.string() if offsets.dtype == np.int32 else pa.large_string()
    arr = pa.Array.from_buffers(
        typ, n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(buf))]
    )
    return arr if typ == pa.string() else arr.cast(pa.string())


def _ids(n: int, prefix: str) -> pa.Array:
    """``prefix`` + a zero-padded 1-based row number (at least 7 digits)."""
    width = max(7, len(str(n)))
    buf = np.empty((n, width + 1), dtype=np.uint8)
    buf[:, 0] = ord(prefix)
    _digits(buf, 1, np.arange(1, n + 1), width)
    return _string_array(buf)


def _iso_strings(local: np.ndarray, offset: np.ndarray) -> pa.Array:
    """``YYYY-MM-DDTHH:MM:SS±HH:MM`` from local epoch seconds and UTC offsets (seconds)."""
    n = local.size
    days = local // 86400
    sod = local - days * 86400
    d64 = days.astype("datetime64[D]")
    month_start = d64.astype("datetime64[M]")
    year = d64.astype("datetime64[Y]").astype(np.int64) + 1970
    month = month_start.astype(np.int64) % 12 + 1
    day = (d64 - month_start).astype(np.int64) + 1
    buf = np.empty((n, 25), dtype=np.uint8)
    _digits(buf, 0, year, 4)
    buf[:, 4] = ord("-")
    _digits(buf, 5, month, 2)
    buf[:, 7] = ord("-")
    _digits(buf, 8, day, 2)
    buf[:, 10] = ord("T")
    _digits(buf, 11, sod // 3600, 2)
    buf[:, 13] = ord(":")
    _digits(buf, 14, (sod // 60) % 60, 2)
    buf[:, 16] = ord(":")
    _digits(buf, 17, sod % 60, 2)
    buf[:, 19] = np.where(offset < 0, ord("-"), ord("+"))
    a = np.abs(offset) // 60
    _digits(buf, 20, a // 60, 2)
    buf[:, 22] = ord(":")
    _digits(buf, 23, a % 60, 2)
    return _string_array(buf)


# ==== long trips ==============================================================================


@dataclass(frozen=True, slots=True)
class _TripCity:
    name: str
    code: str  # hub codes are CODE-1, CODE-2, ...
    lat: float
    lon: float
    timezone: str
    land: str  # trucks and trains run only within one land group
    customs: str  # customs area: a leg between two areas is checked at the border
    weight: float  # freight volume (origin and destination attraction)
    congestion: float  # hours lost leaving the city in its rush hours (trucks)
    hubs: int
    cold: float  # 0..1: how much winter precipitation turns into snow and ice
    wet: float  # chance of a wet day, yearly mean
    wet_amp: float  # seasonal swing of that chance
    wet_peak: int  # day of the year of the wettest season
    wet_mm: float  # mean precipitation of a wet day (mm)


# fmt: off
_TRIP_CITIES: tuple[_TripCity, ...] = (
    _TripCity("Berlin", "BER", 52.5200, 13.4050, "Europe/Berlin", "eu", "EU", 1.0, 0.8, 2, 0.6, 0.45, 0.05, 200, 5.0),
    _TripCity("Hamburg", "HAM", 53.5511, 9.9937, "Europe/Berlin", "eu", "EU", 1.2, 0.7, 1, 0.5, 0.50, 0.05, 200, 5.0),
    _TripCity("Munich", "MUC", 48.1372, 11.5755, "Europe/Berlin", "eu", "EU", 0.8, 0.7, 1, 0.7, 0.45, 0.10, 180, 7.0),
    _TripCity("Frankfurt", "FRA", 50.1109, 8.6821, "Europe/Berlin", "eu", "EU", 1.6, 0.8, 2, 0.5, 0.45, 0.05, 180, 6.0),
    _TripCity("Paris", "CDG", 48.8566, 2.3522, "Europe/Paris", "eu", "EU", 1.4, 1.2, 2, 0.3, 0.42, 0.05, 330, 5.0),
    _TripCity("Madrid", "MAD", 40.4168, -3.7038, "Europe/Madrid", "eu", "EU", 0.8, 0.8, 1, 0.1, 0.25, 0.12, 330, 6.0),
    _TripCity("Lisbon", "LIS", 38.7223, -9.1393, "Europe/Lisbon", "eu", "EU", 0.5, 0.6, 1, 0.0, 0.30, 0.18, 350, 8.0),
    _TripCity("London", "LHR", 51.5074, -0.1278, "Europe/London", "eu", "GB", 1.3, 1.3, 2, 0.2, 0.50, 0.05, 330, 5.0),
    _TripCity("Amsterdam", "AMS", 52.3676, 4.9041, "Europe/Amsterdam", "eu", "EU", 1.2, 0.7, 1, 0.3, 0.52, 0.05, 300, 6.0),
    _TripCity("Milan", "MXP", 45.4642, 9.1900, "Europe/Rome", "eu", "EU", 0.9, 0.9, 1, 0.3, 0.30, 0.05, 300, 9.0),
    _TripCity("Warsaw", "WAW", 52.2297, 21.0122, "Europe/Warsaw", "eu", "EU", 0.7, 0.8, 1, 0.8, 0.45, 0.08, 190, 5.0),
    _TripCity("Vienna", "VIE", 48.2082, 16.3738, "Europe/Vienna", "eu", "EU", 0.6, 0.6, 1, 0.6, 0.42, 0.06, 180, 6.0),
    _TripCity("Istanbul", "IST", 41.0082, 28.9784, "Europe/Istanbul", "eu", "TR", 0.9, 1.5, 1, 0.2, 0.35, 0.15, 350, 8.0),
    _TripCity("New York", "JFK", 40.7128, -74.0060, "America/New_York", "na", "US", 1.5, 1.4, 2, 0.5, 0.33, 0.02, 200, 10.0),
    _TripCity("Chicago", "ORD", 41.8781, -87.6298, "America/Chicago", "na", "US", 1.4, 1.0, 2, 0.9, 0.33, 0.05, 170, 9.0),
    _TripCity("Atlanta", "ATL", 33.7490, -84.3880, "America/New_York", "na", "US", 0.9, 1.0, 1, 0.05, 0.30, 0.03, 60, 12.0),
    _TripCity("Dallas", "DFW", 32.7767, -96.7970, "America/Chicago", "na", "US", 1.0, 0.9, 1, 0.05, 0.22, 0.06, 130, 15.0),
    _TripCity("Denver", "DEN", 39.7392, -104.9903, "America/Denver", "na", "US", 0.5, 0.6, 1, 0.8, 0.25, 0.06, 130, 6.0),
    _TripCity("Los Angeles", "LAX", 34.0522, -118.2437, "America/Los_Angeles", "na", "US", 1.5, 1.6, 2, 0.0, 0.10, 0.09, 30, 12.0),
    _TripCity("Seattle", "SEA", 47.6062, -122.3321, "America/Los_Angeles", "na", "US", 0.6, 0.8, 1, 0.2, 0.40, 0.25, 350, 6.0),
    _TripCity("Toronto", "YYZ", 43.6532, -79.3832, "America/Toronto", "na", "CA", 0.8, 1.0, 1, 0.9, 0.36, 0.04, 200, 8.0),
    _TripCity("Mexico City", "MEX", 19.4326, -99.1332, "America/Mexico_City", "na", "MX", 0.7, 1.5, 1, 0.0, 0.30, 0.25, 200, 8.0),
    _TripCity("Tokyo", "NRT", 35.6762, 139.6503, "Asia/Tokyo", "jp", "JP", 1.3, 1.2, 2, 0.05, 0.32, 0.12, 200, 15.0),
    _TripCity("Seoul", "ICN", 37.5665, 126.9780, "Asia/Seoul", "kr", "KR", 1.0, 1.1, 1, 0.5, 0.28, 0.20, 200, 20.0),
    _TripCity("Shanghai", "PVG", 31.2304, 121.4737, "Asia/Shanghai", "cn", "CN", 1.8, 1.3, 2, 0.05, 0.35, 0.15, 175, 12.0),
    _TripCity("Hong Kong", "HKG", 22.3193, 114.1694, "Asia/Hong_Kong", "cn", "HK", 1.5, 1.2, 1, 0.0, 0.30, 0.25, 190, 20.0),
    _TripCity("Singapore", "SIN", 1.3521, 103.8198, "Asia/Singapore", "sea", "SG", 1.2, 0.8, 1, 0.0, 0.45, 0.10, 340, 15.0),
    _TripCity("Bangkok", "BKK", 13.7563, 100.5018, "Asia/Bangkok", "sea", "TH", 0.7, 1.5, 1, 0.0, 0.30, 0.30, 250, 16.0),
    _TripCity("Dubai", "DXB", 25.2048, 55.2708, "Asia/Dubai", "me", "AE", 1.1, 0.9, 1, 0.0, 0.03, 0.03, 30, 8.0),
    _TripCity("Mumbai", "BOM", 19.0760, 72.8777, "Asia/Kolkata", "in", "IN", 0.9, 1.8, 1, 0.0, 0.20, 0.55, 200, 30.0),
)
# fmt: on

#: Transport modes, in the trips spec's declared order.
TRIP_MODES: tuple[str, ...] = ("truck", "rail", "air")
_TRUCK, _RAIL, _AIR = 0, 1, 2

# Land groups: (truck km/h, road detour, rail km/h or 0 without freight rail).
_LAND: dict[str, tuple[float, float, float]] = {
    "eu": (68.0, 1.22, 55.0),
    "na": (84.0, 1.15, 52.0),
    "cn": (62.0, 1.28, 60.0),
    "sea": (55.0, 1.30, 0.0),
    "jp": (60.0, 1.30, 0.0),
    "kr": (60.0, 1.30, 0.0),
    "me": (70.0, 1.25, 0.0),
    "in": (45.0, 1.35, 0.0),
}


@dataclass(frozen=True, slots=True)
class _Carrier:
    name: str
    mode: int
    lands: tuple[str, ...]  # land groups it serves (air carriers: every origin)
    share: float  # relative market share where it serves
    speed: float  # run speed factor (hidden)
    handling: float  # handling-time factor (hidden)
    team: float  # trucks: share of two-driver crews (no daily rest)


_CARRIERS: tuple[_Carrier, ...] = (
    _Carrier("Nordfrakt", _TRUCK, ("eu",), 1.0, 1.00, 0.90, 0.35),
    _Carrier("Iberlog", _TRUCK, ("eu",), 0.7, 0.96, 1.10, 0.10),
    _Carrier("Vistula Haulage", _TRUCK, ("eu",), 0.8, 1.03, 1.00, 0.20),
    _Carrier("Lakeshore Freight", _TRUCK, ("na",), 1.0, 1.00, 0.95, 0.50),
    _Carrier("Sierra Haul", _TRUCK, ("na", "me"), 0.6, 0.95, 1.15, 0.15),
    _Carrier("Yangtze Trucking", _TRUCK, ("cn", "jp", "kr"), 1.0, 1.00, 1.00, 0.30),
    _Carrier("Malay Road", _TRUCK, ("sea", "in"), 1.0, 0.94, 1.10, 0.10),
    _Carrier("EuroRail Cargo", _RAIL, ("eu",), 1.0, 1.00, 1.00, 0.0),
    _Carrier("Continental Rail", _RAIL, ("na",), 1.0, 0.97, 1.05, 0.0),
    _Carrier("Pearl River Rail", _RAIL, ("cn",), 1.0, 1.05, 0.95, 0.0),
    _Carrier("Skybridge Cargo", _AIR, (), 1.0, 1.00, 1.00, 0.0),
    _Carrier("Polar Air", _AIR, (), 0.8, 1.02, 0.85, 0.0),
    _Carrier("Orient Wings", _AIR, (), 0.9, 0.98, 1.05, 0.0),
    _Carrier("Atlas Jet", _AIR, (), 0.5, 1.00, 1.20, 0.0),
    # enters the market late in the period (a level the early data never saw)
    _Carrier("Nova Freight", _TRUCK, ("eu",), 0.0, 1.04, 0.85, 0.60),
)
#: Every carrier the trip generator may write (the spec learns them from the data).
TRIP_CARRIERS: tuple[str, ...] = tuple(c.name for c in _CARRIERS)
_SKYBRIDGE = TRIP_CARRIERS.index("Skybridge Cargo")
_NOVA = TRIP_CARRIERS.index("Nova Freight")
_NOVA_FROM = 0.75  # position in the period where Nova Freight starts, with this share of EU trucks
_NOVA_SHARE = 0.25
_SKYBRIDGE_FROM = 0.55  # ... and where Skybridge Cargo moves its sorting to a remote hub
_SKYBRIDGE_EXTRA_H = 4.0

# Tendering by local hour (origin's wall clock), per mode.
_TRIP_HOURS = np.array(
    [
        [0.20, 0.15, 0.15, 0.20, 0.50, 1.00, 1.60, 1.80, 1.60, 1.30, 1.10, 1.00,
         1.00, 1.10, 1.30, 1.40, 1.30, 1.00, 0.80, 0.60, 0.50, 0.40, 0.30, 0.25],  # truck
        [0.30, 0.20, 0.20, 0.20, 0.30, 0.50, 0.80, 1.00, 1.10, 1.10, 1.10, 1.10,
         1.10, 1.20, 1.30, 1.40, 1.50, 1.50, 1.30, 1.00, 0.70, 0.50, 0.40, 0.30],  # rail
        [0.40, 0.30, 0.30, 0.30, 0.40, 0.60, 0.80, 1.00, 1.20, 1.30, 1.30, 1.30,
         1.30, 1.30, 1.40, 1.50, 1.60, 1.70, 1.60, 1.40, 1.10, 0.80, 0.60, 0.50],  # air
    ]
)  # fmt: skip
# Departures by local weekday (Monday first), per mode: few trucks at weekends.
_TRIP_DOW = np.array(
    [
        [1.00, 1.00, 1.00, 1.00, 1.05, 0.45, 0.15],
        [1.00, 1.00, 1.00, 1.00, 1.00, 0.60, 0.50],
        [1.00, 1.00, 1.00, 1.00, 1.05, 0.70, 0.60],
    ]
)
_TRIP_NULL_CUSTOMS = 0.12
_TRIP_ANOMALY_SHARE = 0.005
_TRIP_MIN_MINUTES = 60.0
_TRIP_MAX_MINUTES = 6000.0
_TRIP_FASTEST_KMH = 850.0  # no row implies more over the great-circle distance
_HUB_SEED = 0x7219_5EED

TRIP_SCHEMA = pa.schema(
    [
        pa.field("trip_id", pa.string(), nullable=False),
        pa.field("origin_lat", pa.float64(), nullable=False),
        pa.field("origin_lon", pa.float64(), nullable=False),
        pa.field("dest_lat", pa.float64(), nullable=False),
        pa.field("dest_lon", pa.float64(), nullable=False),
        pa.field("departed_at", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("carrier", pa.string(), nullable=False),
        pa.field("origin_hub", pa.string(), nullable=False),
        pa.field("weight_kg", pa.float64(), nullable=False),
        pa.field("pallets", pa.int64(), nullable=False),
        pa.field("stops", pa.int64(), nullable=False),
        pa.field("customs_checks", pa.int64(), nullable=True),
        pa.field("precip_mm", pa.float64(), nullable=False),
        pa.field("duration_minutes", pa.float64(), nullable=False),
    ]
)
TRIP_COLUMNS: tuple[str, ...] = tuple(TRIP_SCHEMA.names)


def generate_trips(
    rows: int, seed: int = 0, start: str = "2025-01-06", weeks: int = 52
) -> pa.Table:
    """``rows`` synthetic intercity freight legs over ``weeks`` weeks from ``start``.

    Columns are :data:`TRIP_COLUMNS` (see :data:`TRIP_SCHEMA`; the bundled spec
    ``kernels/trips.toml`` describes them). Vectorised and deterministic like :func:`generate`;
    raises :class:`ConfigError` for a bad argument.

    The network (fixed, whatever the seed)
        30 real cities (Europe, North America, East/South Asia, the Gulf) with their
        coordinates and IANA zones, 1-2 hubs each (hub = city + N(0, 12 km), a hidden handling
        efficiency ~ LogNormal(0, 0.15)), 15 carriers with hidden speed and handling factors.
    One trip
        origin city ~ volume; destination ~ ``w_d (1.6 exp(-d / 1000 km) [same land group]
        + 0.015 [otherwise])``; origin/destination points = a hub + N(0, 8 km). Mode: across
        land groups or over 2500 km air; up to 1500 km truck ``0.78 - 0.38 d/1500``, rail
        ``0.10 + 0.15 d/1500`` (where freight rail runs), else air; 1500-2500 km rail 0.4,
        else air. Carrier by mode and land group (Nova Freight takes 25 % of EU trucks in the
        last quarter of the period). Local departure day ~ weekday weights per mode (few
        trucks at weekends) × growth ``1 + 0.15 f`` × peak season (Nov/Dec), local hour ~ a
        per-mode profile, whole minutes; the instant follows the origin's zone rules (DST
        included) and ``departed_at`` is written with the origin's offset at that instant.
    Duration (hours, every clock effect on the ORIGIN's wall clock)
        * handling factor ``m = hub · carrier · (1.25 at weekends) · (1 + 0.15 peak)``;
        * drift: handling, customs, rail runs and layovers take ``1 + 0.08 f`` times longer,
          driving half that (congestion builds up over the period; the flights and the
          waits for a slot do not drift), and Skybridge Cargo moves its sorting to a remote hub
          from 55 % of the period on (+4 h per leg);
        * weather: the origin's daily precipitation ``p`` (``precip_mm``; a seasonal wet-day
          chance per city, Gamma amounts: monsoons, winter rain), snow ``s = cold · max(0,
          cos(2π (doy − 15) / 365.25)) · min(p / 8, 1.5)``;
        * customs: ``customs_checks`` ~ border crossings (a leg between customs areas has
          1-2) + Poisson(0.1..0.2), each ``Gamma(2, 0.9)`` h; border posts close from Friday
          14:00 over Saturday (+U(8, 20) h for ground legs); reported except 12 % (null);
        * truck: road km ``d · detour + 18 · stops`` at the land group's speed × carrier ×
          1.06 at night (21-05) / (1 + 0.35 s + 0.05 min(p / 25, 2)); solo drivers rest
          11 h per 9 h beyond the first 9 and 45 min per 4.5 h (team crews: 8 %); loading
          ``(0.5 + 0.06 pallets) m``, unloading ``0.4 + 0.04 pallets``, stops
          ``0.6 + Exp(0.3)`` h each, weekday rush hours (7-9:30, 16-19) cost the city's
          congestion; EU trucks wait out the Sunday ban (00-22 Sunday) when under way;
        * rail: trains leave at 08:00 and 20:00 (the wait), terminals ``(3 + 0.08 pallets) m
          + 3 + 0.05 pallets``, run ``1.2 d`` at the group's rail speed, slower in snow;
        * air: acceptance cut-offs at 07:00, 15:00 and 23:00 (the wait) + 3 h to the bank,
          flight ``1.06 d / (830 km/h · carrier) + 0.6`` (× U(0.96, 1.06), winds) + per stop
          ``2 + Exp(1.5)`` h, handling ``(1.5 + 0.0004 kg) m + 2.5 + 0.0003 kg``, storms
          (``p > 20``: 40 % + Gamma(2, 2) h), de-icing in snow;
        * Chinese New Year (doy 25-45, Chinese origins): +18 h ground, +9 h air;
        * noise: the parts that drift × ``exp(0.10 clip(t₄, −4, 6))``; 0.5 % anomalies
          (breakdowns, missed connections) + U(6, 36) h.
        ``duration_minutes`` = 60 h, clipped to [max(60, 60 d / 850), 6000], 0.1 min.

    Rows are sorted by the departure instant (UTC) and numbered ``t0000001``, ... in that
    order; the ``departed_at`` strings are therefore *not* in text order (offsets differ).
    """
    _check_common(rows, seed, start, weeks)
    n, seed, weeks = int(rows), int(seed), int(weeks)
    cities = _TRIP_CITIES
    nc = len(cities)
    day0 = date.fromisoformat(start)
    n_days = 7 * weeks
    start_days = (day0 - date(1970, 1, 1)).days
    t0 = start_days * 86400 - 14 * 3600  # the earliest instant of the first local day anywhere
    t1 = (start_days + n_days) * 86400 + 12 * 3600
    net = _trip_network()
    weather_ss, trip_ss = np.random.SeedSequence([seed, 0x7219]).spawn(2)

    # -- daily weather per city (calendar days, one spare before and after) -------------------
    wrng = np.random.default_rng(weather_ss)
    g_days = start_days - 1 + np.arange(n_days + 2)
    g_doy = _doy(g_days)
    wet_p = np.clip(
        net.wet[:, None]
        + net.wet_amp[:, None]
        * np.cos(2 * np.pi * (g_doy[None, :] - net.wet_peak[:, None]) / 365.25),
        0.01,
        0.95,
    )
    wet = wrng.random((nc, g_days.size)) < wet_p
    amount = wrng.gamma(0.9, 1.0, (nc, g_days.size)) * (net.wet_mm[:, None] / 0.9)
    precip_grid = np.round(np.where(wet, np.minimum(amount, 250.0), 0.0), 1)

    rng = np.random.default_rng(trip_ss)
    # -- where: origin, destination, hubs, points ---------------------------------------------
    oc = np.searchsorted(net.origin_cum, rng.random(n) * net.origin_cum[-1], side="right")
    oc = np.minimum(oc, nc - 1)
    dc = _pick(net.dest_flat, oc, rng.random(n), nc)
    ohub = net.hub_start[oc] + (rng.random(n) * net.n_hubs[oc]).astype(np.int64)
    dhub = net.hub_start[dc] + (rng.random(n) * net.n_hubs[dc]).astype(np.int64)
    o_lat, o_lon = _jitter(rng, net.hub_lat[ohub], net.hub_lon[ohub], 8.0)
    d_lat, d_lon = _jitter(rng, net.hub_lat[dhub], net.hub_lon[dhub], 8.0)
    dist = haversine_km_array(o_lat, o_lon, d_lat, d_lon)
    same_land = net.land[oc] == net.land[dc]
    has_rail = net.rail_kmh[oc] > 0

    # -- mode ---------------------------------------------------------------------------------
    x = dist / 1500.0
    p_truck = np.where(same_land & (dist <= 1500.0), 0.78 - 0.38 * x, 0.0)
    p_rail = np.where(
        same_land & has_rail,
        np.where(dist <= 1500.0, 0.10 + 0.15 * x, np.where(dist <= 2500.0, 0.40, 0.0)),
        0.0,
    )
    u = rng.random(n)
    mode = np.where(u < p_truck, _TRUCK, np.where(u < p_truck + p_rail, _RAIL, _AIR))

    # -- when: local day and hour at the origin -> instant and offset --------------------------
    k = np.arange(n_days)
    k_doy = _doy(start_days + k)
    day_w = (
        _TRIP_DOW[:, (start_days + k + 3) % 7]
        * (1.0 + 0.15 * k / max(n_days - 1, 1))
        * (1.0 + 0.2 * _peak(k_doy))
    )
    day_cum = np.cumsum(day_w, axis=1)
    hour_cum = np.cumsum(_TRIP_HOURS, axis=1)
    ud, uh = rng.random(n), rng.random(n)
    day = np.empty(n, dtype=np.int64)
    hour = np.empty(n, dtype=np.int64)
    for m in (_TRUCK, _RAIL, _AIR):  # over the three modes
        sel = mode == m
        day[sel] = np.searchsorted(day_cum[m], ud[sel] * day_cum[m, -1], side="right")
        hour[sel] = np.searchsorted(hour_cum[m], uh[sel] * hour_cum[m, -1], side="right")
    day = np.minimum(day, n_days - 1)
    hour = np.minimum(hour, 23)
    minute = rng.integers(0, 60, n)
    naive = (start_days + day) * 86400 + hour * 3600 + minute * 60
    zone = net.zone_of_city[oc]
    o1 = net.offset_at(zone, naive, t0, t1)
    o2 = net.offset_at(zone, naive - o1, t0, t1)
    utc = naive - o2
    off = net.offset_at(zone, utc, t0, t1)  # the true offset at that instant (DST gaps move on)
    local = utc + off
    order = np.argsort(utc, kind="stable")

    ldays = local // 86400
    H = (local % 86400) / 3600.0
    dow = (ldays + 3) % 7
    doy = _doy(ldays)
    wk = dow >= 5
    frac = (utc - start_days * 86400) / (n_days * 86400)
    precip = precip_grid[oc, np.clip(ldays - start_days + 1, 0, g_days.size - 1)]
    peak = _peak(doy)
    winter = np.maximum(0.0, np.cos(2 * np.pi * (doy - 15) / 365.25))
    snow = net.cold[oc] * winter * np.minimum(precip / 8.0, 1.5)
    rain = np.minimum(precip / 25.0, 2.0)
    land = net.land[oc]

    # -- carrier ------------------------------------------------------------------------------
    key = (3 * (frac >= _NOVA_FROM) + mode) * len(_LAND) + land  # Nova Freight: late rows
    carrier = _pick(net.carrier_flat, key, rng.random(n), len(_CARRIERS))

    # -- load: pallets, weight, stops, customs ------------------------------------------------
    ftl = rng.random(n) < 0.35
    pallets = np.where(
        mode == _AIR,
        np.minimum(1 + rng.poisson(1.8, n), 12),
        np.where(
            mode == _RAIL,
            10 + rng.binomial(30, 0.6, n),
            np.where(ftl, 33 - rng.binomial(8, 0.3, n), 1 + rng.binomial(14, 0.3, n)),
        ),
    ).astype(np.int64)
    per_pallet = np.where(
        mode == _AIR, rng.lognormal(np.log(250.0), 0.5, n), rng.lognormal(np.log(400.0), 0.45, n)
    )
    weight = np.round(pallets * np.clip(per_pallet, 60.0, 1000.0), 1)
    intercont = ~same_land
    stops = np.where(
        mode == _TRUCK,
        np.minimum(rng.poisson(np.where(ftl, 0.3, 0.9)), 6),
        np.where(
            mode == _RAIL,
            np.minimum(rng.poisson(0.2, n), 2),
            rng.binomial(2, np.where(intercont & (dist > 6000.0), 0.25, 0.08)),
        ),
    ).astype(np.int64)
    cross = net.customs[oc] != net.customs[dc]
    checks = cross * (1 + (rng.random(n) < 0.3)) + rng.poisson(np.where(cross, 0.2, 0.1))
    checks = np.minimum(checks, 5).astype(np.int64)

    # -- durations (hours) --------------------------------------------------------------------
    c_speed = net.c_speed[carrier]
    hm = net.hub_eff[ohub] * net.c_handling[carrier] * (1.0 + 0.25 * wk) * (1.0 + 0.15 * peak)
    customs_h = rng.gamma(np.maximum(2.0 * checks, 1e-9), 0.9) * (checks > 0)
    closed = (checks > 0) & (((dow == 4) & (H >= 14.0)) | (dow == 5))
    border_h = np.where(closed & (mode != _AIR), rng.uniform(8.0, 20.0, n), 0.0)
    cny = np.where((net.land[oc] == net.land_code["cn"]) & (doy >= 25) & (doy <= 45), 18.0, 0.0)
    eps = np.exp(0.10 * np.clip(rng.standard_t(4.0, n), -4.0, 6.0)) * (1.0 + 0.08 * frac)

    # truck
    road = dist * (net.detour[oc] + rng.uniform(0.0, 0.08, n)) + 18.0 * stops
    night = (H >= 21.0) | (H < 5.0)
    v = net.truck_kmh[oc] * c_speed * np.where(night, 1.06, 1.0) / (1.0 + 0.35 * snow + 0.05 * rain)
    drive = road / v
    team = rng.random(n) < net.c_team[carrier]
    rest = np.where(team, 0.08 * drive, 11.0 * np.maximum(drive - 9.0, 0.0) / 9.0 + drive / 6.0)
    rush = ~wk & (((H >= 7.0) & (H < 9.5)) | ((H >= 16.0) & (H < 19.0)))
    truck_ground = (
        (0.5 + 0.06 * pallets) * hm
        + 0.4
        + 0.04 * pallets
        + stops * 0.6
        + rng.exponential(0.3, n) * stops
        + np.where(rush, net.congestion[oc], 0.0)
        + customs_h
        + border_h
        + cny
    )
    truck_h = (drive + rest) * (0.5 + 0.5 * eps) + truck_ground * eps
    # the Sunday driving ban: hours of the trip (local week hours) inside Sunday 00-22
    s0 = dow * 24.0 + H
    s1 = s0 + truck_h
    ban = sum(np.maximum(0.0, np.minimum(s1, b + 22.0) - np.maximum(s0, b)) for b in (144.0, 312.0))
    truck_h = truck_h + np.where(land == net.land_code["eu"], ban, 0.0)

    # rail
    rail_wait = (8.0 - H) % 12.0
    rail_run = 1.2 * dist / (np.maximum(net.rail_kmh[oc], 1.0) * c_speed) * (1.0 + 0.15 * snow)
    rail_ground = (3.0 + 0.08 * pallets) * hm + 3.0 + 0.05 * pallets + customs_h + border_h + cny
    rail_h = rail_wait + (rail_run + rail_ground) * eps

    # air
    air_wait = (7.0 - H) % 8.0 + 3.0
    flight = (1.06 * dist / (830.0 * c_speed) + 0.6) * rng.uniform(0.96, 1.06, n)
    layover = stops * 2.0 + rng.gamma(np.maximum(stops, 1e-9), 1.5) * (stops > 0)
    storm = np.where((precip > 20.0) & (rng.random(n) < 0.4), rng.gamma(2.0, 2.0, n), 0.0)
    air_ground = (
        (1.5 + 0.0004 * weight) * hm
        + 2.5
        + 0.0003 * weight
        + customs_h
        + storm
        + 1.5 * snow
        + 0.5 * cny
        + np.where((carrier == _SKYBRIDGE) & (frac >= _SKYBRIDGE_FROM), _SKYBRIDGE_EXTRA_H, 0.0)
    )
    air_h = air_wait + flight + (layover + air_ground) * eps

    hours = np.where(mode == _TRUCK, truck_h, np.where(mode == _RAIL, rail_h, air_h))
    anomaly = rng.random(n) < _TRIP_ANOMALY_SHARE
    hours = hours + np.where(anomaly, rng.uniform(6.0, 36.0, n), 0.0)
    floor = np.maximum(_TRIP_MIN_MINUTES, 60.0 * dist / _TRIP_FASTEST_KMH)
    minutes = np.round(np.clip(60.0 * hours, floor, _TRIP_MAX_MINUTES), 1)

    checks_null = rng.random(n) < _TRIP_NULL_CUSTOMS

    # -- the table, sorted by the departure instant -------------------------------------------
    o = order
    arrays: list[pa.Array] = [
        _ids(n, "t"),
        pa.array(o_lat[o], type=pa.float64()),
        pa.array(o_lon[o], type=pa.float64()),
        pa.array(d_lat[o], type=pa.float64()),
        pa.array(d_lon[o], type=pa.float64()),
        _iso_strings(local[o], off[o]),
        pa.array(TRIP_MODES, type=pa.string()).take(pa.array(mode[o])),
        pa.array(TRIP_CARRIERS, type=pa.string()).take(pa.array(carrier[o])),
        pa.array(net.hub_code, type=pa.string()).take(pa.array(ohub[o])),
        pa.array(weight[o], type=pa.float64()),
        pa.array(pallets[o], type=pa.int64()),
        pa.array(stops[o], type=pa.int64()),
        pa.array(checks[o], type=pa.int64(), mask=checks_null[o]),
        pa.array(precip[o], type=pa.float64()),
        pa.array(minutes[o], type=pa.float64()),
    ]
    return pa.Table.from_arrays(arrays, schema=TRIP_SCHEMA)


@dataclass(frozen=True, slots=True)
class _TripNetwork:
    land_code: dict[str, int]
    land: np.ndarray  # per city: land group code
    customs: np.ndarray  # per city: customs area code
    truck_kmh: np.ndarray
    detour: np.ndarray
    rail_kmh: np.ndarray
    congestion: np.ndarray
    cold: np.ndarray
    wet: np.ndarray
    wet_amp: np.ndarray
    wet_peak: np.ndarray
    wet_mm: np.ndarray
    origin_cum: np.ndarray
    dest_flat: np.ndarray  # P(destination | origin) as :func:`_pick` wants it
    n_hubs: np.ndarray
    hub_start: np.ndarray
    hub_lat: np.ndarray
    hub_lon: np.ndarray
    hub_eff: np.ndarray
    hub_code: tuple[str, ...]
    c_speed: np.ndarray
    c_handling: np.ndarray
    c_team: np.ndarray
    carrier_flat: np.ndarray  # P(carrier | period, mode, land group) for :func:`_pick`
    zone_of_city: np.ndarray
    zone_names: tuple[str, ...]

    def offset_at(self, zone: np.ndarray, t: np.ndarray, t0: int, t1: int) -> np.ndarray:
        """UTC offset (seconds) of each row's zone at instant ``t`` (within ``t0 .. t1``)."""
        keys, offs = _zone_transitions(self.zone_names, t0 - 3 * 86400, t1 + 3 * 86400)
        pos = np.searchsorted(keys, zone * _ZONE_KEY + t, side="right") - 1
        return offs[pos]


_ZONE_KEY = 1 << 36  # zone index * this + epoch seconds: one sorted key over every zone


@functools.cache
def _trip_network() -> _TripNetwork:
    """The fixed network: cities, hubs, carriers and the trip choice tables (cached)."""
    cities = _TRIP_CITIES
    nc = len(cities)
    lands = list(_LAND)
    land_code = {g: i for i, g in enumerate(lands)}
    areas = sorted({c.customs for c in cities})
    lat = np.array([c.lat for c in cities])
    lon = np.array([c.lon for c in cities])
    w = np.array([c.weight for c in cities])
    land = np.array([land_code[c.land] for c in cities])
    dist = haversine_km_array(
        np.repeat(lat, nc), np.repeat(lon, nc), np.tile(lat, nc), np.tile(lon, nc)
    ).reshape(nc, nc)
    same = land[:, None] == land[None, :]
    attract = w[None, :] * np.where(same, 1.6 * np.exp(-dist / 1000.0), 0.015)
    np.fill_diagonal(attract, 0.0)

    hrng = np.random.default_rng(_HUB_SEED)
    n_hubs = np.array([c.hubs for c in cities])
    hub_start = np.concatenate([[0], np.cumsum(n_hubs)[:-1]])
    hub_city = np.repeat(np.arange(nc), n_hubs)
    hub_lat, hub_lon = _jitter(hrng, lat[hub_city], lon[hub_city], 12.0)
    hub_eff = hrng.lognormal(0.0, 0.15, hub_city.size)
    hub_code = tuple(f"{cities[c].code}-{i - hub_start[c] + 1}" for i, c in enumerate(hub_city))

    nl, ncar = len(lands), len(_CARRIERS)

    def shares(nova: float) -> np.ndarray:
        s = np.zeros((3 * nl, ncar))
        for j, car in enumerate(_CARRIERS):
            for g in range(nl):
                if car.mode == _AIR or lands[g] in car.lands:
                    s[car.mode * nl + g, j] = car.share
        eu_truck = _TRUCK * nl + land_code["eu"]
        s[eu_truck] *= (1.0 - nova) / s[eu_truck].sum()
        s[eu_truck, _NOVA] = nova
        # air: Orient Wings is stronger from Asian origins, Polar Air from North America
        for asian in ("cn", "sea", "jp", "kr", "in", "me"):
            s[_AIR * nl + land_code[asian], TRIP_CARRIERS.index("Orient Wings")] *= 2.5
        s[_AIR * nl + land_code["na"], TRIP_CARRIERS.index("Polar Air")] *= 2.0
        tot = s.sum(axis=1, keepdims=True)
        return np.where(tot > 0, s / np.where(tot > 0, tot, 1.0), 1.0 / ncar)

    zone_names = tuple(sorted({c.timezone for c in cities}))
    got = _TripNetwork(
        land_code=land_code,
        land=land,
        customs=np.array([areas.index(c.customs) for c in cities]),
        truck_kmh=np.array([_LAND[c.land][0] for c in cities]),
        detour=np.array([_LAND[c.land][1] for c in cities]),
        rail_kmh=np.array([_LAND[c.land][2] for c in cities]),
        congestion=np.array([c.congestion for c in cities]),
        cold=np.array([c.cold for c in cities]),
        wet=np.array([c.wet for c in cities]),
        wet_amp=np.array([c.wet_amp for c in cities]),
        wet_peak=np.array([float(c.wet_peak) for c in cities]),
        wet_mm=np.array([c.wet_mm for c in cities]),
        origin_cum=np.cumsum(w),
        dest_flat=_flat_cum(attract),
        n_hubs=n_hubs,
        hub_start=hub_start,
        hub_lat=hub_lat,
        hub_lon=hub_lon,
        hub_eff=hub_eff,
        hub_code=hub_code,
        c_speed=np.array([c.speed for c in _CARRIERS]),
        c_handling=np.array([c.handling for c in _CARRIERS]),
        c_team=np.array([c.team for c in _CARRIERS]),
        carrier_flat=_flat_cum(np.concatenate([shares(0.0), shares(_NOVA_SHARE)])),
        zone_of_city=np.array([zone_names.index(c.timezone) for c in cities]),
        zone_names=zone_names,
    )
    return got


@functools.cache
def _zone_transitions(zones: tuple[str, ...], t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys ``zone * _ZONE_KEY + start`` and the offset from each start on.

    Offsets are sampled daily over ``t0 .. t1`` and each change is located to the minute
    (loops over days and zones, never rows); cached per period.
    """

    def off(tz: ZoneInfo, t: int) -> int:
        delta = datetime.fromtimestamp(t, UTC).astimezone(tz).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    keys: list[int] = []
    offs: list[int] = []
    for zi, name in enumerate(zones):
        tz = ZoneInfo(name)
        prev = off(tz, t0)
        keys.append(zi * _ZONE_KEY + t0)
        offs.append(prev)
        for t in range(t0 + 86400, t1 + 86400, 86400):
            cur = off(tz, t)
            if cur == prev:
                continue
            lo, hi = t - 86400, t  # offset(lo) == prev, offset(hi) == cur: bisect to the minute
            while hi - lo > 60:
                mid = (lo + hi) // 2
                if off(tz, mid) == prev:
                    lo = mid
                else:
                    hi = mid
            keys.append(zi * _ZONE_KEY + hi)
            offs.append(cur)
            prev = cur
    return np.array(keys, dtype=np.int64), np.array(offs, dtype=np.int64)


def _flat_cum(weights: np.ndarray) -> np.ndarray:
    """Row ``r`` of ``weights`` (rows of choice weights) as ``r + cumulative shares``, flat:
    one non-decreasing array, so :func:`_pick` serves every row with one searchsorted."""
    cum = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    cum[:, -1] = 1.0
    return (np.arange(weights.shape[0])[:, None] + cum).ravel()


def _pick(flat: np.ndarray, row: np.ndarray, u: np.ndarray, k: int) -> np.ndarray:
    """A choice among ``k`` per element: row ``row`` of :func:`_flat_cum`, uniform ``u``."""
    idx = np.searchsorted(flat, row + u, side="right") - row * k
    return np.minimum(idx, k - 1)


def _doy(days: np.ndarray) -> np.ndarray:
    """Day of the year (0-based) of days since 1970-01-01."""
    d64 = np.asarray(days).astype("datetime64[D]")
    return (d64 - d64.astype("datetime64[Y]")).astype(np.int64)


def _peak(doy: np.ndarray) -> np.ndarray:
    """The pre-Christmas peak season: 1 in early December, fading over Nov and late Dec."""
    return np.exp(-0.5 * ((doy - 340.0) / 18.0) ** 2)


def _jitter(
    rng: np.random.Generator, lat: np.ndarray, lon: np.ndarray, sigma_km: float
) -> tuple[np.ndarray, np.ndarray]:
    """Points N(0, sigma²) km around (lat, lon), rounded to 5 decimals (~1 m)."""
    m = lat.size
    out_lat = lat + rng.normal(0.0, 1.0, m) * sigma_km / _KM_PER_DEG_LAT
    out_lon = lon + rng.normal(0.0, 1.0, m) * sigma_km / (_KM_PER_DEG_LAT * np.cos(np.radians(lat)))
    return np.round(out_lat, 5), np.round(out_lon, 5)
