"""Tests for training.registry: publish, checksums, aliases, rollback, concurrency."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from kernels.errors import ConfigError, ModelLoadError
from training.registry import Registry


def _publish(reg: Registry, payload: bytes, **meta: object) -> str:
    stage = reg.stage()
    (stage / "eta.onnx").write_bytes(payload)
    (stage / "sub").mkdir()
    (stage / "sub" / "levels.json").write_text('{"zone": ["a"]}')
    return reg.publish(stage, {"metrics": {"mae": 3.5}, **meta})


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "models")


def test_publish_two_versions_with_checksums(reg: Registry) -> None:
    assert reg.versions() == []
    v1 = _publish(reg, b"model one")
    v2 = _publish(reg, b"model two", note="second")
    assert (v1, v2) == ("v1", "v2")
    assert reg.versions() == ["v1", "v2"]
    m = reg.manifest("v2")
    assert m["version"] == "v2"
    assert m["note"] == "second"
    assert m["metrics"] == {"mae": 3.5}
    assert m["created_at"].endswith("Z")
    assert m["files"] == {
        "eta.onnx": hashlib.sha256(b"model two").hexdigest(),
        "sub/levels.json": hashlib.sha256(b'{"zone": ["a"]}').hexdigest(),
    }
    assert reg.verify("v2") == m
    assert reg.path("v1") == reg.root / "versions" / "v1"
    assert (reg.path("v1") / "eta.onnx").read_bytes() == b"model one"
    assert list((reg.root / ".staging").iterdir()) == []  # staging folders moved away


def test_versions_sort_numerically_and_are_never_reused(reg: Registry) -> None:
    for i in range(11):
        _publish(reg, f"m{i}".encode())
    assert reg.versions()[-3:] == ["v9", "v10", "v11"]
    reg.delete("v11")
    assert "v11" not in reg.versions()
    assert _publish(reg, b"next") == "v12"
    with pytest.raises(ModelLoadError, match="v11 was deleted"):
        reg.resolve("v11")


def test_concurrent_publishers_get_distinct_versions(reg: Registry) -> None:
    stages = [reg.stage() for _ in range(8)]
    for i, s in enumerate(stages):
        (s / "eta.onnx").write_bytes(bytes([i]))
    out: list[str] = []
    threads = [threading.Thread(target=lambda s=s: out.append(reg.publish(s, {}))) for s in stages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 9)]
    for v in out:
        reg.verify(v)


def test_promote_rollback_history(reg: Registry) -> None:
    for i in range(3):
        _publish(reg, f"m{i}".encode())
    assert reg.promote("v1") is None
    assert reg.promote("v2") == "v1"
    assert reg.promote("v3") == "v2"
    assert reg.promote("v3") == "v3"  # no change, no history entry
    assert reg.promote("v1", alias="candidate") is None
    assert reg.aliases() == {"production": "v3", "candidate": "v1"}
    assert reg.resolve("production") == "v3"
    assert reg.manifest("candidate")["version"] == "v1"

    assert reg.rollback() == "v2"
    assert reg.aliases()["production"] == "v2"
    hist = reg.history("production")
    assert [(h["action"], h["version"], h["previous"]) for h in hist] == [
        ("promote", "v1", None),
        ("promote", "v2", "v1"),
        ("promote", "v3", "v2"),
        ("rollback", "v2", "v3"),
    ]
    assert all(h["at"].endswith("Z") for h in hist)
    assert reg.rollback() == "v3"  # undoing the rollback
    assert reg.history("candidate")[0]["version"] == "v1"

    on_disk = json.loads((reg.root / "aliases.json").read_text())
    assert on_disk["aliases"] == {"production": "v3", "candidate": "v1"}
    assert len(on_disk["history"]["production"]) == 5


def test_rollback_without_earlier_version(reg: Registry) -> None:
    _publish(reg, b"m")
    with pytest.raises(ModelLoadError, match="no earlier version"):
        reg.rollback()
    reg.promote("v1")
    with pytest.raises(ModelLoadError, match="no earlier version"):
        reg.rollback()


def test_alias_file_is_never_partial_while_promoting(reg: Registry) -> None:
    _publish(reg, b"a")
    _publish(reg, b"b")
    reg.promote("v1")
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[BaseException] = []
    file = reg.root / "aliases.json"

    def hammer() -> None:
        try:
            while not stop.is_set():
                data = json.loads(file.read_text())  # raises on a half-written file
                seen.add(data["aliases"]["production"])
                seen.add(reg.resolve("production"))
        except BaseException as e:
            errors.append(e)

    readers = [threading.Thread(target=hammer) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(150):
            reg.promote("v2" if i % 2 == 0 else "v1")
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert errors == []
    assert seen == {"v1", "v2"}
    assert len(reg.history()) == 151
    assert [p.name for p in reg.root.iterdir() if p.name.endswith(".tmp")] == []


def test_tampered_file_is_named(reg: Registry) -> None:
    _publish(reg, b"good")
    (reg.path("v1") / "eta.onnx").write_bytes(b"evil")
    with pytest.raises(ModelLoadError) as exc:
        reg.verify("v1")
    msg = str(exc.value)
    assert "model v1 is corrupted: file eta.onnx checksum mismatch" in msg
    assert hashlib.sha256(b"good").hexdigest() in msg
    assert hashlib.sha256(b"evil").hexdigest() in msg
    with pytest.raises(ModelLoadError, match=r"eta\.onnx"):
        reg.promote("v1")  # promote verifies first
    assert reg.aliases() == {}


def test_missing_and_unlisted_files(reg: Registry) -> None:
    _publish(reg, b"m")
    (reg.path("v1") / "sub" / "levels.json").unlink()
    with pytest.raises(ModelLoadError, match=r"file sub/levels\.json is missing"):
        reg.verify("v1")
    _publish(reg, b"m2")
    (reg.path("v2") / "extra.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"file extra\.bin is not listed"):
        reg.verify("v2")


def test_missing_or_broken_manifest(reg: Registry) -> None:
    _publish(reg, b"m")
    _publish(reg, b"m2")
    (reg.path("v1") / "manifest.json").unlink()
    with pytest.raises(ModelLoadError, match=r"v1 has no manifest\.json"):
        reg.manifest("v1")
    with pytest.raises(ModelLoadError, match="no manifest"):
        reg.verify("v1")
    (reg.path("v2") / "manifest.json").write_text('{"version": "v2", "files": {')
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        reg.verify("v2")


def test_bad_alias_names(reg: Registry) -> None:
    _publish(reg, b"m")
    for bad in ("Production", "", "1st", "a" * 33, "prod/../x", "v2", "has space"):
        with pytest.raises(ConfigError, match="bad alias name"):
            reg.promote("v1", alias=bad)
    reg.promote("v1", alias="canary-2_b")
    assert reg.aliases() == {"canary-2_b": "v1"}


def test_unknown_ref_lists_what_exists(reg: Registry) -> None:
    with pytest.raises(ModelLoadError, match=r"no model registered in .*intellilog train"):
        reg.resolve("production")
    _publish(reg, b"m")
    _publish(reg, b"m2")
    reg.promote("v2")
    with pytest.raises(ModelLoadError) as exc:
        reg.resolve("v9")
    assert "versions: v1, v2" in str(exc.value)
    assert "production -> v2" in str(exc.value)
    with pytest.raises(ModelLoadError, match="versions: v1, v2"):
        reg.path("staging")


def test_delete_refuses_aliased_version(reg: Registry) -> None:
    _publish(reg, b"m")
    _publish(reg, b"m2")
    reg.promote("v1")
    with pytest.raises(ConfigError, match="production"):
        reg.delete("v1")
    with pytest.raises(ConfigError, match="refusing"):
        reg.delete("production")
    assert reg.versions() == ["v1", "v2"]
    reg.delete("v2")
    assert reg.versions() == ["v1"]
    reg.verify("v1")


def test_staging_misuse(reg: Registry, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(ConfigError, match=r"Registry\.stage\(\)"):
        reg.publish(elsewhere, {})
    empty = reg.stage()
    with pytest.raises(ConfigError, match="holds no files"):
        reg.publish(empty, {})
    (empty / "eta.onnx").write_bytes(b"m")
    with pytest.raises(ConfigError, match="JSON"):
        reg.publish(empty, {"mae": float("nan")})
    assert reg.publish(empty, {"mae": None}) == "v1"
    with pytest.raises(ConfigError, match="does not exist"):
        reg.publish(empty, {})
    other = reg.stage()
    reg.discard(other)
    assert not other.exists()


def test_from_env(tmp_path: Path) -> None:
    assert Registry.from_env({}).root == Path("./models")
    assert Registry.from_env({"MODEL_ARTIFACT_PATH": str(tmp_path)}).root == tmp_path
    with pytest.raises(ConfigError, match="MODEL_ARTIFACT_PATH"):
        Registry.from_env({"MODEL_ARTIFACT_PATH": " "})
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        Registry(f)


def test_corrupt_aliases_file(reg: Registry) -> None:
    _publish(reg, b"m")
    (reg.root / "aliases.json").write_text("{")
    with pytest.raises(ModelLoadError, match=r"aliases\.json is not valid JSON"):
        reg.aliases()
