"""The feature spec: the issue's TOML format, the strict request struct, clear errors."""

import math

import msgspec
import pytest

from kernels.errors import SpecError
from kernels.spec import default_spec, load_spec, parse_spec, spec_from_dict

ISSUE_SPEC = """
name = "deliveries"
target = "actual_minutes"        # duration to predict, in minutes
event_time = "created_at"        # ISO 8601 with offset, or epoch seconds
timezone = "UTC"                 # zone for time-of-day features when times carry no offset
[pickup]
lat = "pickup_lat"
lon = "pickup_lon"
[dropoff]
lat = "dropoff_lat"
lon = "dropoff_lon"
[categorical]
vehicle_type = ["bike", "scooter", "car", "van"]   # known levels; anything else is 'unknown'
weather = ["clear", "rain", "snow", "fog"]
zone = []                                           # empty: levels learned from the training data
[numeric]
items_count = { min = 1, max = 500 }
prep_minutes = { min = 0, max = 240, optional = true }
"""

MINIMAL = """
name = "trips"
target = "minutes"
event_time = "ts"
[pickup]
lat = "a_lat"
lon = "a_lon"
[dropoff]
lat = "b_lat"
lon = "b_lon"
"""

GOOD = {
    "order_id": "o1",
    "pickup_lat": 52.5,
    "pickup_lon": 13.4,
    "dropoff_lat": 52.52,
    "dropoff_lon": 13.45,
    "created_at": "2026-01-03T10:00:00+01:00",
    "vehicle_type": "bike",
    "weather": "rain",
    "zone": "Mitte",
    "items_count": 3,
}


def decode(obj: dict) -> object:
    spec = default_spec()
    return msgspec.json.decode(msgspec.json.encode(obj), type=spec.request_struct)


def test_issue_format_parses_and_matches_default() -> None:
    spec = parse_spec(ISSUE_SPEC)
    assert [c.name for c in spec.categorical] == ["vehicle_type", "weather", "zone"]
    assert spec.categorical[2].learned and not spec.categorical[0].learned
    assert [(n.name, n.optional) for n in spec.numeric] == [
        ("items_count", False),
        ("prep_minutes", True),
    ]
    # key defaults to order_id; `target = "..."` takes the delivery defaults of [target];
    # the default spec's clock is the generated city's zone
    assert parse_spec(ISSUE_SPEC.replace('"UTC"', '"Europe/Berlin"')).hash == default_spec().hash
    assert spec.required_columns[-1] == "items_count"
    assert "prep_minutes" not in spec.required_columns
    assert len(spec.feature_names) == 19


def test_optional_tables_may_be_omitted() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.categorical == () and spec.numeric == ()
    assert spec.timezone == "UTC"
    assert len(spec.feature_names) == 14


def test_hash_changes_with_content_and_roundtrips() -> None:
    a = parse_spec(ISSUE_SPEC)
    b = parse_spec(ISSUE_SPEC.replace('"UTC"', '"Europe/Berlin"'))
    assert a.hash != b.hash
    assert spec_from_dict(a.to_dict()).hash == a.hash
    assert spec_from_dict(b.to_dict()) == b


NO_TARGET = MINIMAL.replace('target = "minutes"\n', "")

REVERSED = (
    MINIMAL
    + """
[categorical]
zone = []
vehicle = ["bike", "van"]
[numeric]
weight = { min = 0, max = 9 }
items = { min = 1, max = 5, optional = true }
"""
)


def test_column_order_survives_json_with_sorted_keys_and_is_in_the_hash() -> None:
    import json

    spec = parse_spec(REVERSED)
    assert [c.name for c in spec.categorical] == ["zone", "vehicle"]
    assert spec.feature_names[-4:] == ("zone", "vehicle", "weight", "items")
    # the manifest is written with sort_keys=True: order must come back unchanged
    back = spec_from_dict(json.loads(json.dumps(spec.to_dict(), sort_keys=True)))
    assert back.feature_names == spec.feature_names
    assert back.hash == spec.hash
    swapped = parse_spec(
        REVERSED.replace(
            'zone = []\nvehicle = ["bike", "van"]', 'vehicle = ["bike", "van"]\nzone = []'
        )
    )
    assert swapped.feature_names[-4:-2] == ("vehicle", "zone")
    assert swapped.hash != spec.hash


def test_target_table_and_time_features() -> None:
    text = MINIMAL.replace('target = "minutes"', "").replace(
        'event_time = "ts"',
        'event_time = "ts"\ntime_features = ["day_of_year", "hour"]\n'
        'categorical_case = "lower"\n'
        '[target]\nname = "hours_taken"\nunit = "hours"\nmin = 0.5\nmax = 200\n'
        "max_speed_kmh = 900\ntolerance = 0.5\n",
    )
    spec = parse_spec(text)
    g = spec.goal
    assert (g.name, g.unit, g.min, g.max, g.max_speed_kmh, g.tolerance) == (
        "hours_taken",
        "hours",
        0.5,
        200.0,
        900.0,
        0.5,
    )
    assert g.delta == 1.0 and g.minutes == 60.0 and spec.target == "hours_taken"
    # chosen time features, always in the canonical order
    assert spec.time_columns == ("hour_sin", "hour_cos", "doy_sin", "doy_cos")
    assert spec.normalize_level("  Bike ") == "bike"
    assert spec_from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name = ", "not valid TOML"),
        (NO_TARGET + '[target]\nname = "m"\nunit = "days"\n', "$.target.unit"),
        (NO_TARGET + '[target]\nname = "m"\nmax_speed_kmh = 0\n', "$.target.max_speed_kmh"),
        (NO_TARGET + '[target]\nname = "m"\nmin = 9\nmax = 2\n', "min < max"),
        (NO_TARGET + '[target]\nname = "m"\ntolerance = -1\n', "$.target.tolerance"),
        (
            MINIMAL.replace(
                'event_time = "ts"', 'event_time = "ts"\ntime_features = ["hour", "moon"]'
            ),
            "$.time_features",
        ),
        (
            MINIMAL.replace('event_time = "ts"', 'event_time = "ts"\ncategorical_case = "upper"'),
            "$.categorical_case",
        ),
        (MINIMAL + "\nextra = 1\n", "extra"),
        (MINIMAL.replace('event_time = "ts"', ""), "event_time"),
        (MINIMAL.replace('lat = "a_lat"', "lat = 5"), "$.pickup.lat"),
        (MINIMAL.replace('name = "trips"', 'name = "trips"\ntimezone = "Mars/Base"'), "$.timezone"),
        (MINIMAL + "\n[numeric]\nx = { min = 5, max = 1 }\n", "$.numeric.x"),
        (MINIMAL + '\n[categorical]\nc = ["a", "a"]\n', "$.categorical.c"),
        (MINIMAL.replace('"b_lat"', '"a_lat"'), "more than one role"),
        (MINIMAL + "\n[numeric]\ndistance_km = { min = 0, max = 1 }\n", "clash"),
        (MINIMAL.replace('"ts"', '"bad name"'), "identifier"),
        (MINIMAL + '\n[categorical]\nc = { levels = [], unknown = "reject" }\n', "reject"),
    ],
)
def test_bad_specs_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_spec(text, "my.toml")
    assert needle in str(exc.value)
    assert "my.toml" in str(exc.value)


def test_load_spec_missing_file(tmp_path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "nope.toml")
    p = tmp_path / "s.toml"
    p.write_text(MINIMAL)
    assert load_spec(p).name == "trips"


def test_request_struct_accepts_good_input() -> None:
    item = decode(GOOD)
    assert item.prep_minutes is None  # type: ignore[attr-defined]
    assert decode({**GOOD, "created_at": 1767225600}).created_at == 1767225600  # type: ignore[attr-defined]
    assert decode({**GOOD, "prep_minutes": 12.5}).prep_minutes == 12.5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"pickup_lat": 90.5}, "$.pickup_lat"),
        ({"dropoff_lon": -180.01}, "$.dropoff_lon"),
        ({"pickup_lat": "52.5"}, "$.pickup_lat"),
        ({"items_count": 0}, "$.items_count"),
        ({"items_count": 501}, "$.items_count"),
        ({"prep_minutes": -1}, "$.prep_minutes"),
        ({"vehicle_type": ""}, "$.vehicle_type"),
        ({"vehicle_type": 3}, "$.vehicle_type"),
        ({"created_at": "yesterday"}, "$.created_at"),
        ({"created_at": -5}, "$.created_at"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_request_struct_rejects_bad_input(change: dict, path: str) -> None:
    with pytest.raises(msgspec.ValidationError) as exc:
        decode({**GOOD, **change})
    assert path in str(exc.value)


def test_request_struct_rejects_nan_and_inf_and_missing() -> None:
    spec = default_spec()
    for raw in (b"NaN", b"Infinity", b"1e999"):
        body = msgspec.json.encode(GOOD).replace(b'"pickup_lat":52.5', b'"pickup_lat":' + raw)
        with pytest.raises(msgspec.DecodeError):
            msgspec.json.decode(body, type=spec.request_struct)
    bad = dict(GOOD)
    del bad["zone"]
    with pytest.raises(msgspec.ValidationError, match="zone"):
        decode(bad)
    assert math.isfinite(decode(GOOD).pickup_lat)  # type: ignore[attr-defined]
