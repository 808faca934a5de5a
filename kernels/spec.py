"""The feature spec: one declaration of the raw input fields and their roles.

From it come the request struct (msgspec, strictly typed and bounded), the
column set for training files, the feature names of the kernel pipeline and
the spec hash stored in every model artifact.

A spec is a TOML file (see ``deliveries.toml`` beside this module)::

    name = "deliveries"
    event_time = "created_at"
    timezone = "Europe/Berlin"         # the clock of every time feature (see below)
    time_features = ["hour", "day_of_week", "weekend"]
    [target]
    name = "actual_minutes"            # `target = "actual_minutes"` alone takes the defaults
    unit = "minutes"
    min = 1
    max = 1440
    max_speed_kmh = 150
    tolerance = 5                      # accuracy = share of |error| <= tolerance
    [pickup]
    lat = "pickup_lat"
    lon = "pickup_lon"
    [dropoff]
    lat = "dropoff_lat"
    lon = "dropoff_lon"
    [categorical]
    vehicle_type = ["bike", "scooter", "car", "van"]
    zone = []                          # levels learned from the training data
    [numeric]
    items_count = { min = 1, max = 500 }
    prep_minutes = { min = 0, max = 240, optional = true }

Column order is part of the contract: the categorical and numeric columns enter the
feature matrix in the order the spec lists them, :meth:`FeatureSpec.to_dict` keeps
that order (lists, not objects) and the spec hash depends on it.

The clock rule: every event time is an instant; the time features are read off the
wall clock of the spec's ``timezone`` at that instant, whatever offset the input was
written with (``+01:00``, ``Z``, epoch seconds, a zone-aware timestamp). Only a time
written without any offset is read as wall-clock time of ``timezone``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta

from kernels.errors import SpecError

__all__ = [
    "GEO_FEATURES",
    "TIME_FEATURES",
    "TIME_FEATURE_COLUMNS",
    "Categorical",
    "FeatureSpec",
    "Numeric",
    "Target",
    "default_spec",
    "load_spec",
    "parse_spec",
    "spec_from_dict",
]

#: Features computed from the two points, in matrix order.
GEO_FEATURES: tuple[str, ...] = (
    "pickup_lat",
    "pickup_lon",
    "dropoff_lat",
    "dropoff_lon",
    "distance_km",
    "bearing_sin",
    "bearing_cos",
    "dlat_km",
    "dlon_km",
)
#: Time features a spec may choose (``time_features``), each with its matrix columns.
TIME_FEATURE_COLUMNS: dict[str, tuple[str, ...]] = {
    "hour": ("hour_sin", "hour_cos"),
    "day_of_week": ("dow_sin", "dow_cos"),
    "weekend": ("weekend",),
    "day_of_year": ("doy_sin", "doy_cos"),
}
#: The default choice (and the order of the columns whatever the choice).
DEFAULT_TIME_FEATURES: tuple[str, ...] = ("hour", "day_of_week", "weekend")
#: Every column name a time feature may take (reserved: a spec column may not use them).
TIME_FEATURES: tuple[str, ...] = tuple(c for cols in TIME_FEATURE_COLUMNS.values() for c in cols)
#: Target units and their length in minutes (speeds and the served ``eta_minutes``).
UNITS: dict[str, float] = {"seconds": 1.0 / 60.0, "minutes": 1.0, "hours": 60.0}

#: Epoch bounds accepted for event times (1970-01-01 .. 2100-01-01).
EPOCH_MIN = 0
EPOCH_MAX = 4_102_444_800
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

# The event-time text msgspec's datetime decoder accepts, written as a JSON Schema pattern
# (ECMA-262, so [0-9] rather than \d): a real calendar date (leap years included), 'T', 't'
# or a space, a time to the second with any fraction, then an offset (Z, +HH:MM, +HHMM) or
# none (wall-clock time of the spec's zone). The request schema says it so a client (or a
# schema fuzzer) knows what is valid; the decoder, not this pattern, enforces it.
_YEAR = "(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = (
    f"(?:{_YEAR}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
    f"|(?:0[13578]|1[02])-31)|{_LEAP_YEAR}-02-29)"
)
_TIME = "[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]+)?"
_OFFSET = "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9])"
#: the text form of an event time (anchored): date, time, optional offset
EVENT_TIME_PATTERN = f"^{_DATE}{_TIME}{_OFFSET}?$"
_MAX_LEVEL_LEN = 128


# ---- the TOML shape, validated by msgspec so errors carry a path ------------------------------


class _Point(msgspec.Struct, forbid_unknown_fields=True):
    lat: str
    lon: str


class _NumericDecl(msgspec.Struct, forbid_unknown_fields=True):
    min: float
    max: float
    optional: bool = False


class _CategoricalDecl(msgspec.Struct, forbid_unknown_fields=True):
    levels: list[str] = []
    unknown: str = "map"  # "map": unseen levels become 'unknown'; "reject": refuse them


class _NamedNumeric(_NumericDecl, forbid_unknown_fields=True, kw_only=True):
    name: str


class _NamedCategorical(_CategoricalDecl, forbid_unknown_fields=True, kw_only=True):
    name: str


class _TargetDecl(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    unit: str = "minutes"
    min: float = 1.0
    max: float = 1440.0
    max_speed_kmh: float | None = 150.0
    tolerance: float = 5.0
    huber_delta: float | None = None


class _SpecDecl(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    target: str | _TargetDecl
    event_time: str
    pickup: _Point
    dropoff: _Point
    timezone: str = "UTC"
    key: str = "order_id"
    time_features: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_TIME_FEATURES))
    categorical_case: str = "keep"
    # TOML tables keep the file's order; manifests store ordered lists
    categorical: dict[str, list[str] | _CategoricalDecl] | list[_NamedCategorical] = {}
    numeric: dict[str, _NumericDecl] | list[_NamedNumeric] = {}


# ---- the resolved spec -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Categorical:
    """A categorical column. ``levels`` empty means: learn them from training data."""

    name: str
    levels: tuple[str, ...]
    reject_unknown: bool = False

    @property
    def learned(self) -> bool:
        return not self.levels


@dataclass(frozen=True, slots=True)
class Numeric:
    """A numeric column with inclusive bounds; optional ones may be absent (NaN)."""

    name: str
    min: float
    max: float
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """The target's domain: unit, plausible range, speed limit and the accuracy tolerance.

    Rows outside ``(0, max]`` are refused; rows under ``min`` or implying a speed over
    ``max_speed_kmh`` (great-circle distance / duration) count as impossible in the data
    quality score. ``tolerance`` (target unit) defines accuracy; ``huber_delta`` (default
    2 × tolerance) is the Huber loss's transition point.
    """

    name: str
    unit: str = "minutes"
    min: float = 1.0
    max: float = 1440.0
    max_speed_kmh: float | None = 150.0
    tolerance: float = 5.0
    huber_delta: float | None = None

    @property
    def minutes(self) -> float:
        """Length of one target unit in minutes."""
        return UNITS[self.unit]

    @property
    def hours(self) -> float:
        """Length of one target unit in hours."""
        return UNITS[self.unit] / 60.0

    @property
    def delta(self) -> float:
        return self.huber_delta if self.huber_delta is not None else 2.0 * self.tolerance


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    name: str
    target: str
    event_time: str
    timezone: str
    pickup_lat: str
    pickup_lon: str
    dropoff_lat: str
    dropoff_lon: str
    key: str = "order_id"
    categorical: tuple[Categorical, ...] = ()
    numeric: tuple[Numeric, ...] = ()
    domain: Target | None = None  # None: the delivery defaults for column ``target``
    time_features: tuple[str, ...] = DEFAULT_TIME_FEATURES
    categorical_case: str = "keep"  # "keep" | "lower": applied after trimming, everywhere
    _struct: Any = field(default=None, compare=False, repr=False)

    @property
    def goal(self) -> Target:
        """The target with its domain (defaults when the spec gave only its name)."""
        return self.domain if self.domain is not None else Target(self.target)

    @property
    def time_columns(self) -> tuple[str, ...]:
        """Matrix columns of the chosen time features, in matrix order."""
        return tuple(
            c
            for f in TIME_FEATURE_COLUMNS
            if f in self.time_features
            for c in TIME_FEATURE_COLUMNS[f]
        )

    def normalize_level(self, value: str) -> str:
        """The one normalisation of a categorical value: trimmed, then case per the spec."""
        return _normalize_level(value, self.categorical_case)

    # -- derived names --------------------------------------------------------------------
    @property
    def input_columns(self) -> tuple[str, ...]:
        """Columns a file must (or, for optional numerics, may) carry to be scored."""
        return (
            self.pickup_lat,
            self.pickup_lon,
            self.dropoff_lat,
            self.dropoff_lon,
            self.event_time,
            *(c.name for c in self.categorical),
            *(n.name for n in self.numeric),
        )

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(
            c for c in self.input_columns if c not in {n.name for n in self.numeric if n.optional}
        )

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Column names of the feature matrix, in order."""
        return (
            *GEO_FEATURES,
            *self.time_columns,
            *(c.name for c in self.categorical),
            *(n.name for n in self.numeric),
        )

    @property
    def categorical_feature_indices(self) -> tuple[int, ...]:
        base = len(GEO_FEATURES) + len(self.time_columns)
        return tuple(range(base, base + len(self.categorical)))

    # -- identity -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data; column tables are ordered lists (order is meaning)."""
        g = self.goal
        return {
            "name": self.name,
            "key": self.key,
            "target": {
                "name": g.name,
                "unit": g.unit,
                "min": g.min,
                "max": g.max,
                "max_speed_kmh": g.max_speed_kmh,
                "tolerance": g.tolerance,
                "huber_delta": g.huber_delta,
            },
            "event_time": self.event_time,
            "timezone": self.timezone,
            "time_features": list(self.time_features),
            "categorical_case": self.categorical_case,
            "pickup": {"lat": self.pickup_lat, "lon": self.pickup_lon},
            "dropoff": {"lat": self.dropoff_lat, "lon": self.dropoff_lon},
            "categorical": [
                {
                    "name": c.name,
                    "levels": list(c.levels),
                    "unknown": "reject" if c.reject_unknown else "map",
                }
                for c in self.categorical
            ],
            "numeric": [
                {"name": n.name, "min": n.min, "max": n.max, "optional": n.optional}
                for n in self.numeric
            ],
        }

    @property
    def hash(self) -> str:
        """sha256 over the canonical JSON of the spec (first 16 hex digits).

        Keys are sorted, lists are not: reordering columns changes the hash."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    # -- the request struct ---------------------------------------------------------------
    @property
    def request_struct(self) -> type[msgspec.Struct]:
        """The msgspec struct of one delivery: typed, bounded, unknown fields rejected.

        Built once per spec and cached on it.
        """
        if self._struct is None:
            object.__setattr__(self, "_struct", _build_struct(self))
        return self._struct


def _build_struct(spec: FeatureSpec) -> type[msgspec.Struct]:
    lat = Annotated[float, Meta(ge=-90.0, le=90.0)]
    lon = Annotated[float, Meta(ge=-180.0, le=180.0)]
    # a float: JSON Schema's "integer" includes 3.0, and a fraction of a second is harmless
    epoch = Annotated[
        float, Meta(ge=EPOCH_MIN, le=EPOCH_MAX, description="epoch seconds (UTC), 1970 to 2100")
    ]
    text_time = Annotated[
        datetime,
        Meta(
            description=(
                "ISO 8601 date and time: with an offset (Z, +02:00, +0200) an instant; "
                f"without one, wall-clock time of {spec.timezone}"
            ),
            extra_json_schema={"pattern": EVENT_TIME_PATTERN},
        ),
    ]
    # at least one non-space character: values are trimmed (normalize_level), blank is missing
    level = Annotated[str, Meta(min_length=1, max_length=_MAX_LEVEL_LEN, pattern=r"\S")]
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (spec.key, Annotated[str, Meta(min_length=1, max_length=128)]),
        (spec.pickup_lat, lat),
        (spec.pickup_lon, lon),
        (spec.dropoff_lat, lat),
        (spec.dropoff_lon, lon),
        (spec.event_time, text_time | epoch),
    ]
    for c in spec.categorical:
        # unknown = "reject": only the declared levels; otherwise any text (unknown -> 'unknown')
        fields.append((c.name, Literal[c.levels] if c.reject_unknown else level))
    for n in spec.numeric:
        t = Annotated[float, Meta(ge=n.min, le=n.max)]
        fields.append((n.name, t | None, None) if n.optional else (n.name, t))
    # required fields first: msgspec wants defaults last unless kw_only
    name = re.sub(r"\W", "_", spec.name.title()) + "Delivery"
    return msgspec.defstruct(
        name, fields, kw_only=True, frozen=True, forbid_unknown_fields=True, omit_defaults=True
    )


def parse_spec(text: str, source: str = "<spec>") -> FeatureSpec:
    """Parse a spec from TOML text; errors name the source and the field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: not valid TOML: {exc}") from None
    try:
        decl = msgspec.convert(raw, _SpecDecl)
    except msgspec.ValidationError as exc:
        raise SpecError(f"{source}: {exc}") from None
    return _resolve(decl, source)


def spec_from_dict(data: dict[str, Any], source: str = "<manifest>") -> FeatureSpec:
    """Rebuild a spec from :meth:`FeatureSpec.to_dict` output (e.g. a model manifest)."""
    try:
        decl = msgspec.convert(data, _SpecDecl)
    except msgspec.ValidationError as exc:
        raise SpecError(f"{source}: {exc}") from None
    return _resolve(decl, source)


def load_spec(path: str | Path | None = None) -> FeatureSpec:
    """Load a spec file, or the default delivery spec when ``path`` is None.

    A bare name of a spec bundled with the product (``deliveries``, ``trips``) loads it."""
    if path is None:
        return default_spec()
    p = Path(path)
    if not p.exists() and p.name == str(path) and not p.suffix:
        bundled = resources.files("kernels").joinpath(f"{p.name}.toml")
        if bundled.is_file():
            return parse_spec(bundled.read_text(encoding="utf-8"), f"kernels/{p.name}.toml")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec file {p}: {exc.strerror or exc}") from None
    return parse_spec(text, str(p))


def default_spec() -> FeatureSpec:
    text = resources.files("kernels").joinpath("deliveries.toml").read_text(encoding="utf-8")
    return parse_spec(text, "kernels/deliveries.toml")


def _normalize_level(value: str, case: str) -> str:
    """:meth:`FeatureSpec.normalize_level` for ``categorical_case = case``."""
    v = value.strip()
    return v.lower() if case == "lower" else v


def _target(t: str | _TargetDecl, bad: Any) -> Target:
    if isinstance(t, str):
        return Target(t)
    if t.unit not in UNITS:
        raise bad("target.unit", f"unknown unit {t.unit!r} (use {', '.join(UNITS)})")
    if not (math.isfinite(t.min) and math.isfinite(t.max) and 0 <= t.min < t.max):
        raise bad("target", f"needs finite 0 <= min < max, got min={t.min}, max={t.max}")
    if t.max_speed_kmh is not None and not (math.isfinite(t.max_speed_kmh) and t.max_speed_kmh > 0):
        raise bad("target.max_speed_kmh", f"must be > 0 km/h, got {t.max_speed_kmh}")
    if not (math.isfinite(t.tolerance) and t.tolerance > 0):
        raise bad("target.tolerance", f"must be > 0, got {t.tolerance}")
    if t.huber_delta is not None and not (math.isfinite(t.huber_delta) and t.huber_delta > 0):
        raise bad("target.huber_delta", f"must be > 0, got {t.huber_delta}")
    return Target(
        t.name,
        t.unit,
        float(t.min),
        float(t.max),
        None if t.max_speed_kmh is None else float(t.max_speed_kmh),
        float(t.tolerance),
        None if t.huber_delta is None else float(t.huber_delta),
    )


def _resolve(d: _SpecDecl, source: str) -> FeatureSpec:
    def bad(where: str, msg: str) -> SpecError:
        return SpecError(f"{source}: {msg} - at `$.{where}`")

    try:
        ZoneInfo(d.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad(
            "timezone",
            f"unknown time zone {d.timezone!r} (use an IANA name such as 'Europe/Berlin')",
        ) from None
    if d.categorical_case not in ("keep", "lower"):
        raise bad("categorical_case", "must be 'keep' or 'lower'")
    unknown_tf = [f for f in d.time_features if f not in TIME_FEATURE_COLUMNS]
    if unknown_tf or len(set(d.time_features)) != len(d.time_features):
        raise bad(
            "time_features",
            f"unknown or repeated time feature(s) {unknown_tf or d.time_features} "
            f"(choose from {', '.join(TIME_FEATURE_COLUMNS)})",
        )
    time_features = tuple(f for f in TIME_FEATURE_COLUMNS if f in d.time_features)
    goal = _target(d.target, bad)
    cat_items = (
        [(c.name, _CategoricalDecl(c.levels, c.unknown)) for c in d.categorical]
        if isinstance(d.categorical, list)
        else list(d.categorical.items())
    )
    num_items = (
        [(n.name, _NumericDecl(n.min, n.max, n.optional)) for n in d.numeric]
        if isinstance(d.numeric, list)
        else list(d.numeric.items())
    )
    cats: list[Categorical] = []
    for name, decl in cat_items:
        if isinstance(decl, list):
            decl = _CategoricalDecl(levels=decl)
        if decl.unknown not in ("map", "reject"):
            raise bad(f"categorical.{name}.unknown", "must be 'map' or 'reject'")
        levels = tuple(_normalize_level(lv, d.categorical_case) for lv in decl.levels)
        if len(set(levels)) != len(levels):
            raise bad(f"categorical.{name}", "levels must be unique")
        if any(not lv or len(lv) > _MAX_LEVEL_LEN for lv in levels):
            raise bad(f"categorical.{name}", f"levels must be 1..{_MAX_LEVEL_LEN} characters")
        if decl.unknown == "reject" and not levels:
            raise bad(f"categorical.{name}.unknown", "'reject' needs declared levels")
        cats.append(Categorical(name, levels, decl.unknown == "reject"))
    nums: list[Numeric] = []
    for name, n in num_items:
        if not (math.isfinite(n.min) and math.isfinite(n.max)) or n.min > n.max:
            raise bad(f"numeric.{name}", f"needs finite min <= max, got min={n.min}, max={n.max}")
        nums.append(Numeric(name, float(n.min), float(n.max), n.optional))
    spec = FeatureSpec(
        name=d.name,
        key=d.key,
        target=goal.name,
        event_time=d.event_time,
        timezone=d.timezone,
        pickup_lat=d.pickup.lat,
        pickup_lon=d.pickup.lon,
        dropoff_lat=d.dropoff.lat,
        dropoff_lon=d.dropoff.lon,
        categorical=tuple(cats),
        numeric=tuple(nums),
        domain=goal,
        time_features=time_features,
        categorical_case=d.categorical_case,
    )
    names = [c.name for c in cats] + [n.name for n in nums]
    if len(set(names)) != len(names):
        raise SpecError(f"{source}: a column is listed twice in [categorical]/[numeric]")
    cols = [spec.key, spec.target, *spec.input_columns]
    for col in cols:
        if not _NAME.match(col):
            raise SpecError(
                f"{source}: column name {col!r} must be an identifier (letters, digits, _; max 64)"
            )
    dupes = sorted({c for c in cols if cols.count(c) > 1})
    clash = sorted({c.name for c in cats} | {n.name for n in nums})
    clash = [c for c in clash if c in GEO_FEATURES or c in TIME_FEATURES]
    if clash:
        raise SpecError(
            f"{source}: {', '.join(clash)} clash with computed feature names; rename the column(s)"
        )
    if dupes:
        raise SpecError(f"{source}: column names used for more than one role: {', '.join(dupes)}")
    return spec
