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
"""

from __future__ import annotations

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
    "VEHICLES",
    "WEATHERS",
    "generate",
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
        _order_ids(n),
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

    Missing parent folders are created. Raises :class:`~kernels.errors.DataError` with a
    one-line message for any other suffix or when the path cannot be written.
    """
    _io.write_table(table, path)


# ---- helpers ---------------------------------------------------------------------------------


def _check_args(rows: int, seed: int, start: str, weeks: int, city: str) -> _City:
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
    c = CITIES.get(str(city).strip().lower())
    if c is None:
        raise ConfigError(f"unknown city {city!r} (known: {', '.join(sorted(CITIES))})")
    return c


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


def _order_ids(n: int) -> pa.Array:
    width = max(7, len(str(n)))
    buf = np.empty((n, width + 1), dtype=np.uint8)
    buf[:, 0] = ord("o")
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
