"""The feature spec: one declaration of the raw input fields and their roles.

From it come the request struct (msgspec, strictly typed and bounded), the
column set for training files, the feature names of the kernel pipeline and
the spec hash stored in every model artifact.

A spec is a TOML file (see ``deliveries.toml`` beside this module)::

    name = "deliveries"
    target = "actual_minutes"
    event_time = "created_at"
    timezone = "UTC"
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
    "Categorical",
    "FeatureSpec",
    "Numeric",
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
#: Features computed from the event time (local time of day / day of week).
TIME_FEATURES: tuple[str, ...] = (
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "weekend",
)

#: Epoch bounds accepted for event times (1970-01-01 .. 2100-01-01).
EPOCH_MIN = 0
EPOCH_MAX = 4_102_444_800
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
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


class _SpecDecl(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    target: str
    event_time: str
    pickup: _Point
    dropoff: _Point
    timezone: str = "UTC"
    key: str = "order_id"
    categorical: dict[str, list[str] | _CategoricalDecl] = {}
    numeric: dict[str, _NumericDecl] = {}


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
    _struct: Any = field(default=None, compare=False, repr=False)

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
            *TIME_FEATURES,
            *(c.name for c in self.categorical),
            *(n.name for n in self.numeric),
        )

    @property
    def categorical_feature_indices(self) -> tuple[int, ...]:
        base = len(GEO_FEATURES) + len(TIME_FEATURES)
        return tuple(range(base, base + len(self.categorical)))

    # -- identity -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "target": self.target,
            "event_time": self.event_time,
            "timezone": self.timezone,
            "pickup": {"lat": self.pickup_lat, "lon": self.pickup_lon},
            "dropoff": {"lat": self.dropoff_lat, "lon": self.dropoff_lon},
            "categorical": {
                c.name: {
                    "levels": list(c.levels),
                    "unknown": "reject" if c.reject_unknown else "map",
                }
                for c in self.categorical
            },
            "numeric": {
                n.name: {"min": n.min, "max": n.max, "optional": n.optional} for n in self.numeric
            },
        }

    @property
    def hash(self) -> str:
        """sha256 over the canonical JSON of the spec (first 16 hex digits)."""
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
    epoch = Annotated[int, Meta(ge=EPOCH_MIN, le=EPOCH_MAX)]
    level = Annotated[str, Meta(min_length=1, max_length=_MAX_LEVEL_LEN)]
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (spec.key, Annotated[str, Meta(min_length=1, max_length=128)]),
        (spec.pickup_lat, lat),
        (spec.pickup_lon, lon),
        (spec.dropoff_lat, lat),
        (spec.dropoff_lon, lon),
        (spec.event_time, datetime | epoch),
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
    """Load a spec file, or the default delivery spec when ``path`` is None."""
    if path is None:
        return default_spec()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec file {p}: {exc.strerror or exc}") from None
    return parse_spec(text, str(p))


def default_spec() -> FeatureSpec:
    text = resources.files("kernels").joinpath("deliveries.toml").read_text(encoding="utf-8")
    return parse_spec(text, "kernels/deliveries.toml")


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
    cats: list[Categorical] = []
    for name, decl in d.categorical.items():
        if isinstance(decl, list):
            decl = _CategoricalDecl(levels=decl)
        if decl.unknown not in ("map", "reject"):
            raise bad(f"categorical.{name}.unknown", "must be 'map' or 'reject'")
        levels = tuple(decl.levels)
        if len(set(levels)) != len(levels):
            raise bad(f"categorical.{name}", "levels must be unique")
        if any(not lv or len(lv) > _MAX_LEVEL_LEN for lv in levels):
            raise bad(f"categorical.{name}", f"levels must be 1..{_MAX_LEVEL_LEN} characters")
        if decl.unknown == "reject" and not levels:
            raise bad(f"categorical.{name}.unknown", "'reject' needs declared levels")
        cats.append(Categorical(name, levels, decl.unknown == "reject"))
    nums: list[Numeric] = []
    for name, n in d.numeric.items():
        if not (math.isfinite(n.min) and math.isfinite(n.max)) or n.min > n.max:
            raise bad(f"numeric.{name}", f"needs finite min <= max, got min={n.min}, max={n.max}")
        nums.append(Numeric(name, float(n.min), float(n.max), n.optional))
    spec = FeatureSpec(
        name=d.name,
        key=d.key,
        target=d.target,
        event_time=d.event_time,
        timezone=d.timezone,
        pickup_lat=d.pickup.lat,
        pickup_lon=d.pickup.lon,
        dropoff_lat=d.dropoff.lat,
        dropoff_lon=d.dropoff.lon,
        categorical=tuple(cats),
        numeric=tuple(nums),
    )
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
