"""The OpenAPI document is the contract: schemathesis fuzzes a real server against it.

A real ``intellilog serve`` (granian, one worker, its own SQLite store and a private copy
of the session registry, ``ADMIN_TOKEN`` set so the admin routes are in the document) is
fuzzed over every operation of its own ``/schema/openapi.json`` with every phase
schemathesis has (explicit examples, coverage, fuzzing, stateful) and every check
(server errors, status codes, content types, response schemas and headers, positive data
accepted, negative data refused, undeclared methods answered 405 with ``Allow``, missing
auth refused ...). The run is derandomized, so a failure reproduces on every run.

One rule of the V2 infer body cannot be written in JSON Schema: every tensor carries the
same number of values, and its ``shape`` multiplies out to that number. The document says
it in words; :func:`_consistent_tensors` makes the fuzzer's *valid* bodies keep it (bodies
meant to be invalid are sent as drawn).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.e2e import servekit as kit
from training.registry import Registry

pytestmark = pytest.mark.slow

schemathesis = pytest.importorskip("schemathesis", reason="install the dev extra (schemathesis)")

TOKEN = "fuzz-admin-token"
MAX_BATCH = 8  # small batches: the fuzzer's biggest bodies stay cheap to score
EXAMPLES = 50  # per operation and phase


@pytest.fixture(scope="module")
def server(models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[kit.ServerProcess]:
    """A real server over a private registry copy (the fuzzer promotes and rolls back)."""
    work = tmp_path_factory.mktemp("schema-fuzz")
    registry = Path(shutil.copytree(models.registry, work / "registry"))
    # production: v1 -> v2 -> v1, so a rollback has an earlier version to go back to (a
    # rollback without one is answered 409)
    reg = Registry(registry)
    reg.promote("v2", "production")
    reg.promote("v1", "production")
    srv = kit.ServerProcess(
        registry,
        work,
        env={
            "ADMIN_TOKEN": TOKEN,
            "MAX_BATCH_SIZE": str(MAX_BATCH),
            "DATABASE_URL": f"sqlite:///{work / 'db' / 'intellilog.db'}",
            "LOG_LEVEL": "WARNING",
        },
    )
    try:
        srv.wait_ready()
        _wait_for_quality(srv.url)
        yield srv
    finally:
        srv.stop()


def _wait_for_quality(url: str, timeout: float = 30.0) -> None:
    """Live quality answers 503 ("pending") until its first refresh; fuzz after it."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=5.0) as c:
        while c.get("/v1/monitoring/quality").status_code != 200:
            assert time.monotonic() < deadline, "live quality never refreshed"
            time.sleep(0.2)


def _config() -> Any:
    return schemathesis.Config.from_dict(
        {
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "workers": 1,
            "continue-on-failure": True,
            "generation": {
                "mode": "all",  # valid bodies must be accepted, invalid ones refused
                "max-examples": EXAMPLES,
                "deterministic": True,
            },
            "checks": {"enabled": True},
            "operations": [
                {
                    # Valid by the schema and still refused, by the state of the registry
                    # and the store: an unknown experiment id (404), a candidate that is
                    # no registered version (422), a second running experiment or a
                    # rollback with no earlier version (409). The fuzzer's random ids,
                    # names and aliases meet them on most draws; only these routes admit
                    # them, and none may answer 5xx.
                    "include-path-regex": "^/v1/admin/(experiments|rollback)",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "400", "401", "404", "409", "422"]
                        },
                    },
                }
            ],
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True, "max-steps": 4},
            },
        }
    )


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list) and data and all(isinstance(r, list) for r in data):
        return [x for row in data for x in _flat(row)]
    return data if isinstance(data, list) else []


def _consistent_tensors(ctx: Any, case: Any) -> Any:
    """A valid infer body keeps the rule JSON Schema cannot say: the tensors share one
    row count n, each shaped [n] (or [n, 1] for row-wise data)."""
    meta = case.meta
    body = case.body
    if (
        case.operation.path != "/v2/models/{name}/infer"
        or meta is None
        or not meta.generation.mode.is_positive
        or not isinstance(body, dict)
        or not isinstance(body.get("inputs"), list)
    ):
        return case
    tensors = [t for t in body["inputs"] if isinstance(t, dict) and isinstance(t.get("data"), list)]
    if not tensors:
        return case
    n = max(1, min(len(_flat(t["data"])) for t in tensors))
    for t in tensors:
        rows = isinstance(t["data"][0], list) if t["data"] else False
        t["data"] = t["data"][:n]
        t["shape"] = [n, 1] if rows else [n]
    return case


def test_every_operation_keeps_the_documented_contract(server: kit.ServerProcess) -> None:
    """Zero failures and zero 5xx over every operation and phase; the run is timed."""
    from schemathesis.engine import events, from_schema

    schema = schemathesis.openapi.from_url(f"{server.url}/schema/openapi.json", config=_config())
    schema.hook("map_case")(_consistent_tensors)
    operations = {
        f"{m.upper()} {p}" for p, item in schema.raw_schema["paths"].items() for m in item
    }
    # every route the server has: predictions, feedback, V2, monitoring, health and admin
    assert {
        "POST /v1/predict",
        "POST /v1/predict/batch",
        "POST /v1/feedback",
        "POST /v2/models/{name}/infer",
        "POST /v1/admin/promote",
        "POST /v1/admin/rollback",
    } <= operations

    t0 = time.perf_counter()
    failures: list[str] = []
    tested: set[str] = set()
    statuses: dict[int, int] = {}
    server_errors: list[str] = []
    errors: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            tested.add(event.recorder.label)
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    code = interaction.response.status_code
                    statuses[code] = statuses.get(code, 0) + 1
                    path = interaction.request.uri.split("?")[0]
                    if code >= 500:
                        server_errors.append(f"{interaction.request.method} {path} -> {code}")
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        f = check.failure_info
                        failures.append(
                            f"{f.failure.title}: {f.failure.message}\n  {f.code_sample}"
                        )
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            errors.append(repr(getattr(event, "value", None) or getattr(event, "exception", None)))
    elapsed = time.perf_counter() - t0
    print(
        f"schemathesis: {len(tested)} operations, statuses {sorted(statuses.items())}, {elapsed:.1f} s"
    )
    assert not errors, "\n".join(errors)
    assert not failures, f"{len(failures)} contract failures:\n" + "\n".join(failures[:20])
    assert not server_errors, server_errors[:10]
    untested = {op for op in operations if not any(op in label for label in tested)}
    assert not untested, f"operations never fuzzed: {sorted(untested)}"
    # the fuzzer reached both sides of the contract
    assert statuses.get(200, 0) > 0 and statuses.get(422, 0) > 0, statuses


# ---- the parts of the contract the fuzzer relies on ------------------------------------------


def test_event_time_pattern_is_what_the_decoder_accepts() -> None:
    """The documented event-time pattern and msgspec's datetime decoder agree on every
    string near the grammar (mutations of real encodings) and on Feb 29 of every year."""
    import calendar
    import random

    from kernels.spec import EVENT_TIME_PATTERN

    pattern = re.compile(EVENT_TIME_PATTERN)
    dec = msgspec.json.Decoder(datetime)

    def decodes(text: str) -> bool:
        try:
            dec.decode(msgspec.json.encode(text))
        except msgspec.ValidationError:
            return False
        return True

    seeds = [
        "2024-02-29T23:59:59.5+0200",
        "2000-02-29 00:00:00z",
        "0001-01-01t00:00:00",
        "9999-12-31T23:59:59-23:59",
        "2025-04-30T12:30:00.123456789Z",
    ]
    rnd = random.Random(7)
    alphabet = "0123456789-:Tt .Zz+_,"
    disagree = []
    for _ in range(20_000):
        chars = list(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 3)):
            j = rnd.randrange(len(chars))
            op = rnd.random()
            if op < 0.4:
                chars[j] = rnd.choice(alphabet)
            elif op < 0.7:
                chars.insert(j, rnd.choice(alphabet))
            else:
                del chars[j]
        text = "".join(chars)
        if bool(pattern.match(text)) != decodes(text):
            disagree.append(text)
    assert not disagree, disagree[:10]
    assert all(pattern.match(s) and decodes(s) for s in seeds)
    leap = [y for y in range(1, 10_000) if pattern.match(f"{y:04d}-02-29T00:00:00")]
    assert leap == [y for y in range(1, 10_000) if calendar.isleap(y)]


def test_405_names_the_allowed_methods(models: Any, make_client: Any) -> None:
    """Litestar's routes, the raw POST routes and paths with two handlers all answer a
    wrong method 405 with an Allow header (RFC 9110), and OPTIONS lists every method."""
    c = make_client(models.registry, admin_token=TOKEN)
    for method, path, allow in (
        ("DELETE", "/v1/predict", "POST"),
        ("GET", "/v1/predict/batch", "POST"),
        ("PUT", "/v2/health/live", "GET, OPTIONS"),
        ("PATCH", "/v2/models/eta/infer", "OPTIONS, POST"),
        ("DELETE", "/v1/admin/experiments", "GET, OPTIONS, POST"),
    ):
        r = c.request(method, path, headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 405, (method, path, r.text)
        got = {m.strip() for m in r.headers["allow"].split(",")}
        assert got == set(allow.split(", ")), (method, path, r.headers)
        err = r.json()["error"]
        assert err["code"] == "method_not_allowed" and method in err["message"]
    r = c.options("/v1/admin/experiments")
    assert r.status_code == 204 and r.headers["allow"] == "GET, OPTIONS, POST"


def test_rate_limit_is_in_the_document(models: Any, make_client: Any) -> None:
    """With RATE_LIMIT_PER_MINUTE every limited operation declares 429 with Retry-After,
    the health routes do not, and a real 429 matches the declared body."""
    import jsonschema

    c = make_client(models.registry, rate_limit_per_minute=6)  # burst of 1
    doc = c.get("/schema/openapi.json").json()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            limited = not path.startswith(("/health/", "/v2/health/"))
            assert ("429" in operation["responses"]) == limited, (method, path)
    declared = doc["paths"]["/v1/models"]["get"]["responses"]["429"]
    assert declared["headers"]["retry-after"]["required"] is True
    codes = [c.get("/v1/models").status_code for _ in range(3)]
    assert 429 in codes, codes
    r = c.get("/v1/models")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    jsonschema.validate(r.json(), declared["content"]["application/json"]["schema"])
    # without the limit, no operation declares 429
    plain = make_client(models.registry).get("/schema/openapi.json").json()
    assert not any("429" in o["responses"] for i in plain["paths"].values() for o in i.values())
