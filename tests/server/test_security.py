"""Security basics of the HTTP server: the admin token, names that could leave the
registry, JSON depth and string limits, the rate limit behind proxies, and the
production start-up check of ADMIN_TOKEN."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from kernels.errors import ConfigError, ModelLoadError
from server.config import Settings, load_settings
from tests.conftest import CliResult
from tests.e2e import servekit as kit
from training.registry import MAX_REF_LEN, Registry

ROW: dict[str, Any] = kit.ROW
TOKEN = "a-long-admin-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}

#: names that must never reach a file path: traversal, encoded traversal, absolute
#: paths, NUL bytes, very long names, look-alike letters and digits, trailing newline
BAD_NAMES = [
    "../v1",
    "..%2fv1",
    "../../../etc/passwd",
    "versions/../v1",
    "/etc/passwd",
    "v1/..",
    "v1\x00",
    "production\x00.json",
    "x" * 10_000,
    "v" + "1" * 5_000,  # past Python's int() digit limit
    "\uff561",  # fullwidth v
    "v\uff11",  # fullwidth 1
    "pr\u043eduction",  # Cyrillic o
    "production\n",
    "C:\\models\\v1",
]


def _post(client: Any, url: str, body: bytes | Any, **headers: str) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(url, content=raw, headers={"content-type": "application/json", **headers})


def _refused(r: Any) -> dict[str, Any]:
    """A 4xx answer: one short line, no traceback (the error table's body, or the V2
    protocol's ``{"error": message}``)."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    err = r.json()["error"]
    if isinstance(err, str):
        err = {"message": err, "code": "v2"}
    assert "\n" not in err["message"] and "Traceback" not in err["message"]
    assert len(err["message"]) < 2_000, len(err["message"])
    return dict(err)


# ---- 1. the admin token ---------------------------------------------------------------------


def test_admin_token_is_compared_in_constant_time(
    registry: Path, make_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every admin route (alias changes and experiments) checks the bearer token with
    hmac.compare_digest, never ``==`` (which returns at the first differing byte)."""
    import hmac

    import server.app as app_module

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(app_module.hmac, "compare_digest", spy)
    c = make_client(registry, admin_token=TOKEN)
    assert c.post("/v1/admin/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert calls and calls[-1] == (b"Bearer wrong", f"Bearer {TOKEN}".encode())
    n = len(calls)
    assert c.get("/v1/admin/experiments", headers={"authorization": "Bearer x"}).status_code == 401
    assert len(calls) == n + 1
    assert c.get("/v1/admin/experiments", headers=AUTH).status_code == 200
    assert len(calls) == n + 2


# ---- 2. names that could leave the registry -------------------------------------------------


@pytest.fixture
def outside(registry: Path) -> Path:
    """A readable manifest outside the registry: any path a bad name builds that would
    read it proves a traversal."""
    secret = registry.parent / "secret"
    secret.mkdir()
    (secret / "manifest.json").write_text('{"version": "stolen"}', encoding="utf-8")
    return secret


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_registry_refuses_bad_names_in_one_line(registry: Path, outside: Path, name: str) -> None:
    reg = Registry(registry)
    for call in (reg.resolve, reg.path, reg.manifest, reg.verify, reg.promote):
        with pytest.raises(ModelLoadError, match="bad model reference") as info:
            call(name)
        msg = str(info.value)
        assert "\n" not in msg and len(msg) < 400 and "stolen" not in msg
    with pytest.raises(ModelLoadError, match="bad model reference"):
        reg.archive(name, "reason")
    with pytest.raises(ModelLoadError, match="bad model reference"):
        reg.delete(name)
    for alias_call in (
        lambda: reg.promote("v2", name),
        lambda: reg.rollback(name),
        lambda: reg.unset(name),
        lambda: reg.history(name),
    ):
        with pytest.raises(ConfigError, match="bad alias name") as err:
            alias_call()
        assert "\n" not in str(err.value) and len(str(err.value)) < 400
    assert reg.aliases() == {"production": "v1"}  # nothing changed


def test_good_names_still_resolve(registry: Path) -> None:
    reg = Registry(registry)
    assert reg.resolve("v2") == "v2" and reg.resolve("production") == "v1"
    assert reg.manifest("v2")["version"] == "v2"
    with pytest.raises(ModelLoadError, match="unknown model 'v9'"):
        reg.resolve("v9")
    with pytest.raises(ModelLoadError, match="unknown model 'canary'"):
        reg.resolve("canary")
    assert len("v" + "9" * (MAX_REF_LEN - 1)) == MAX_REF_LEN


def test_remote_store_refuses_keys_outside_its_prefix() -> None:
    pytest.importorskip("fsspec")
    from training.registry_remote import RemoteStore

    store = RemoteStore("memory://intellilog-security/reg")
    store.write("versions/v1/a.txt", b"ok")
    assert store.read("versions/v1/a.txt") == b"ok"
    for rel in ("../other/x", "/abs/x", "versions/../../x", "versions//x", "a\x00b", "a\\b"):
        with pytest.raises(ModelLoadError, match="refusing object path"):
            store.read(rel)
        with pytest.raises(ModelLoadError, match="refusing object path"):
            store.write(rel, b"x")


@pytest.fixture
def admin(registry: Path, make_client: Callable[..., Any]) -> Any:
    return make_client(registry, admin_token=TOKEN)


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_admin_routes_refuse_bad_names(admin: Any, outside: Path, name: str) -> None:
    for body in ({"version": name}, {"version": "v2", "alias": name}):
        err = _refused(_post(admin, "/v1/admin/promote", body, **AUTH))
        assert "stolen" not in err["message"]
    _refused(_post(admin, "/v1/admin/rollback", {"alias": name}, **AUTH))
    err = _refused(_post(admin, "/v1/admin/experiments", {"candidate": name}, **AUTH))
    assert err["code"] == "validation_error" and "candidate" in err["message"]
    assert admin.get("/v1/models").json()["aliases"] == {"production": "v1"}


def test_admin_paths_with_encoded_traversal_are_404(admin: Any) -> None:
    for path in ("..%2f..%2fetc%2fpasswd", "%2e%2e", "..%00"):
        r = admin.get(f"/v1/admin/experiments/{path}", headers=AUTH)
        assert r.status_code == 404, (path, r.status_code, r.text[:200])


@pytest.mark.parametrize("name", ["../v1", "/etc/passwd", "v1\x00", "x" * 10_000, "\uff561"])
def test_cli_refuses_bad_names_in_one_line(
    cli: Callable[..., CliResult], registry: Path, outside: Path, name: str, tmp_path: Path
) -> None:
    reg = ("--registry", registry)
    data = tmp_path / "in.csv"
    data.write_text(",".join(ROW) + "\n" + ",".join(str(v) for v in ROW.values()) + "\n")
    runs = [
        cli("models", "show", name, *reg),
        cli("models", "promote", name, *reg),
        cli("models", "archive", name, "--reason", "x", *reg),
        cli("models", "promote", "v2", "--alias", name, *reg),
        cli("score", data, "--out", tmp_path / "out.csv", "--model", name, *reg),
    ]
    for res in runs:
        assert res.code == 2, res.err
        assert len(res.err_lines) == 1 and res.err.startswith("error: "), res.err
        assert "bad model reference" in res.err or "bad alias name" in res.err
        assert len(res.err) < 400 and "stolen" not in res.out
    assert Registry(registry).aliases() == {"production": "v1"}


# ---- 3. JSON depth and string lengths -------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_msgspec_depth_limit_is_a_recursion_error() -> None:
    """What the server relies on: msgspec decodes 100 levels, and refuses about 1000
    (the interpreter's recursion limit) with RecursionError, which the error table
    answers as 400."""
    value: Any = msgspec.json.decode(_nested(100))
    for _ in range(99):
        value = value[0]
    assert value == []
    with pytest.raises(RecursionError):
        msgspec.json.decode(_nested(100_000))


def _bodies(payload: bytes) -> list[tuple[str, bytes]]:
    """``payload`` (raw JSON) in a string-typed or free field of every JSON route."""
    row = json.dumps({k: v for k, v in ROW.items() if k != "order_id"}).encode()[1:-1]
    tensor = b'{"inputs": [{"name": "order_id", "shape": [1], "datatype": "BYTES", "data": [%s]}]}'
    return [
        ("/v1/predict", b'{"order_id": %s, %s}' % (payload, row)),
        ("/v1/predict/batch", b'{"deliveries": [{"order_id": %s, %s}]}' % (payload, row)),
        (
            "/v1/feedback",
            b'{"order_id": %s, "actual_minutes": 30, "completed_at": 1795692600}' % payload,
        ),
        ("/v2/models/eta/infer", tensor % payload),
        ("/v1/admin/promote", b'{"version": %s}' % payload),
        ("/v1/admin/rollback", b'{"alias": %s}' % payload),
        ("/v1/admin/experiments", b'{"candidate": "v2", "reason": %s}' % payload),
    ]


@pytest.mark.parametrize("depth", [100, 5_000, 100_000])
def test_deeply_nested_bodies_are_refused_with_4xx(admin: Any, depth: int) -> None:
    for url, body in _bodies(_nested(depth)):
        r = _post(admin, url, body, **AUTH)
        assert 400 <= r.status_code < 500, (url, depth, r.status_code, r.text[:300])
    # the whole body nested, too
    for url, _ in _bodies(b"0"):
        r = _post(admin, url, _nested(depth), **AUTH)
        assert 400 <= r.status_code < 500, (url, depth, r.status_code, r.text[:300])
    assert admin.get("/health/live").status_code == 200


def test_ten_megabyte_strings_are_refused_with_4xx(admin: Any) -> None:
    huge = json.dumps("x" * 10_000_000).encode()
    for url, body in _bodies(huge):
        r = _post(admin, url, body, **AUTH)
        err = _refused(r)
        assert "x" * 200 not in err["message"], url  # the value is not echoed back
    assert admin.get("/v1/models").json()["aliases"] == {"production": "v1"}


def _strings(js: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every string-typed property of a struct's JSON schema (its own and $defs')."""
    out: list[tuple[str, dict[str, Any]]] = []
    for struct in [js, *js.get("$defs", {}).values()]:
        for name, prop in struct.get("properties", {}).items():
            for alt in prop.get("anyOf", [prop]):
                if alt.get("type") == "string" and "enum" not in alt and "format" not in alt:
                    out.append((name, alt))
    return out


def test_every_free_text_field_of_a_request_has_a_max_length(models: Any) -> None:
    """The schema is the bound: every plain string a client sends declares maxLength."""
    from server.experiments.routes import ConcludeBody, StopBody
    from server.experiments.service import StartOptions
    from server.feedback import Feedback
    from server.models import load_model

    spec = load_model(Registry(models.registry), "production", "numba").pipe.spec
    structs = [spec.request_struct, Feedback, StartOptions, StopBody, ConcludeBody]
    checked = 0
    for s in structs:
        for name, prop in _strings(msgspec.json.schema(s)):
            if name == spec.event_time:  # a datetime: parsed, never kept as text
                continue
            assert "maxLength" in prop, (getattr(s, "__name__", s), name, prop)
            checked += 1
    assert checked >= 5


# ---- 4. the rate limit behind proxies ------------------------------------------------------


def _from(app: Any, peer: str) -> Any:
    """``app`` as seen from the TCP peer ``peer`` (the test client has no real address)."""

    async def shim(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "client": (peer, 40_000)}
        await app(scope, receive, send)

    return shim


@pytest.fixture
def limited(models: Any, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``limited(peer, trusted)``: a client of an app with a burst of one request per
    client, whose requests come from ``peer`` behind TRUSTED_PROXIES=``trusted``."""
    from litestar.testing import TestClient

    from server.app import create_app

    opened: list[Any] = []

    def make(peer: str, trusted: str = "") -> Any:
        settings = Settings(
            model_artifact_path=str(models.registry),
            reload_interval_s=3600.0,
            log_level="WARNING",
            database_url=f"sqlite:///{tmp_path / f'db{len(opened)}' / 'intellilog.db'}",
            rate_limit_per_minute=6,  # burst 1, then one per 10 s
            trusted_proxies=trusted,
        )
        c = TestClient(_from(create_app(settings), peer), raise_server_exceptions=False)
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def _get(c: Any, xff: str | None = None) -> int:
    return int(c.get("/v1/models", headers={"x-forwarded-for": xff} if xff else {}).status_code)


def test_forwarded_for_is_ignored_without_trusted_proxies(limited: Callable[..., Any]) -> None:
    c = limited("10.0.0.1")
    assert _get(c, "198.51.100.1") == 200
    assert _get(c, "198.51.100.2") == 429  # same peer, same bucket, whatever the header says


def test_trusted_proxy_gives_each_forwarded_client_its_own_bucket(
    limited: Callable[..., Any],
) -> None:
    c = limited("10.0.0.1", trusted="10.0.0.0/8, fd00::/8")
    assert _get(c, "198.51.100.1") == 200
    assert _get(c, "198.51.100.2") == 200
    assert _get(c, "198.51.100.1") == 429
    # a client that prepends a fake address is still counted by what the proxy saw
    assert _get(c, "203.0.113.9, 198.51.100.2") == 429
    # two trusted hops: the right-most untrusted address is the client
    assert _get(c, "198.51.100.3, 10.1.2.3") == 200
    assert _get(c, "198.51.100.3") == 429


def test_forwarded_for_from_an_untrusted_peer_is_ignored(limited: Callable[..., Any]) -> None:
    c = limited("203.0.113.50", trusted="10.0.0.0/8")
    assert _get(c, "198.51.100.1") == 200
    assert _get(c, "198.51.100.2") == 429


def test_client_address_rules() -> None:
    from server.app import _client_of
    from server.config import parse_networks

    trusted = parse_networks("10.0.0.0/8,192.0.2.7")

    def scope(peer: str, *xff: str) -> dict[str, Any]:
        return {"client": (peer, 1), "headers": [(b"x-forwarded-for", v.encode()) for v in xff]}

    assert _client_of(scope("10.0.0.1", "1.1.1.1"), ()) == "10.0.0.1"
    assert _client_of(scope("8.8.8.8", "1.1.1.1"), trusted) == "8.8.8.8"
    assert _client_of(scope("10.0.0.1", "1.1.1.1, 2.2.2.2"), trusted) == "2.2.2.2"
    assert _client_of(scope("10.0.0.1", "1.1.1.1", "2.2.2.2, 192.0.2.7"), trusted) == "2.2.2.2"
    assert _client_of(scope("10.0.0.1", "10.0.0.9, 10.0.0.8"), trusted) == "10.0.0.9"
    assert _client_of(scope("10.0.0.1"), trusted) == "10.0.0.1"


def test_trusted_proxies_setting_is_validated() -> None:
    s = load_settings({"TRUSTED_PROXIES": " 10.0.0.0/8 , ::1,192.0.2.7"}, dotenv=None)
    assert [str(n) for n in s.trusted_networks] == ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]
    assert load_settings({}, dotenv=None).trusted_networks == ()
    with pytest.raises(ConfigError, match=r"TRUSTED_PROXIES: 'proxy\.local' is not an IP"):
        load_settings({"TRUSTED_PROXIES": "10.0.0.1,proxy.local"}, dotenv=None)


# ---- 5. ADMIN_TOKEN in production -----------------------------------------------------------


def test_production_refuses_a_short_admin_token_without_printing_it() -> None:
    short = "hunter2-secret!"  # 15 characters
    with pytest.raises(ConfigError, match="ADMIN_TOKEN is 15 characters") as info:
        load_settings({"ENVIRONMENT": "production", "ADMIN_TOKEN": short}, dotenv=None)
    assert short not in str(info.value) and "hunter2" not in str(info.value)
    ok = load_settings({"ENVIRONMENT": "production", "ADMIN_TOKEN": short + "x"}, dotenv=None)
    assert ok.admin_token == short + "x"
    # outside production a short token is allowed; in production no token = no admin API
    assert load_settings({"ADMIN_TOKEN": "t"}, dotenv=None).admin_token == "t"
    assert load_settings({"ENVIRONMENT": "production"}, dotenv=None).admin_token == ""
