"""The model registry on an object store: a real S3 server (moto in server mode, reached
over HTTP by s3fs) and fsspec's ``memory://``.

Each test gets its own bucket and its own cache folders; two ``Registry`` objects with
separate caches stand for two replicas. Skipped when moto/s3fs are missing, except with
``CI=true``, where that is a failure.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kernels.errors import ConfigError, ModelLoadError
from training.registry import MANIFEST, Registry
from training.registry_remote import RemoteStore

_CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _missing(reason: str) -> None:
    """Skip, or fail with ``CI=true`` (CI must run the S3 tests)."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} (CI=true: the S3 registry tests may not be skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, with the AWS variables pointing at it."""
    try:
        import boto3  # noqa: F401
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        _missing(f"moto[server] and s3fs are needed ({exc}): pip install -e '.[dev]'")
        raise  # unreachable: _missing skips or fails
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in _CREDS.items():
            mp.setenv(k, v)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(k, raising=False)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture
def url(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<new bucket>/models`` on the moto server; default caches under tmp_path."""
    import boto3

    bucket = f"reg-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    monkeypatch.setenv("INTELLILOG_REGISTRY_CACHE", str(tmp_path / "default-cache"))
    return f"s3://{bucket}/models"


def _replica(url: str, tmp_path: Path, name: str) -> Registry:
    return Registry(url, cache=tmp_path / f"cache-{name}")


def _publish(reg: Registry, payload: bytes, **meta: object) -> str:
    stage = reg.stage()
    (stage / "eta.onnx").write_bytes(payload)
    (stage / "sub").mkdir()
    (stage / "sub" / "levels.json").write_text('{"zone": ["a"]}')
    return reg.publish(stage, {"metrics": {"mae": 3.5}, **meta})


def _s3(url: str) -> Any:
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def _key(url: str, rel: str) -> str:
    return f"{url.removeprefix('s3://')}/{rel}"


# ---------------------------------------------------------------- life cycle on S3


def test_publish_promote_rollback_archive_history_on_s3(url: str, tmp_path: Path) -> None:
    reg = _replica(url, tmp_path, "a")
    assert reg.is_remote and reg.location == url
    assert reg.versions() == [] and reg.aliases() == {}
    with pytest.raises(ModelLoadError, match=f"no model registered in {url}"):
        reg.resolve("production")
    v1, v2 = _publish(reg, b"model one"), _publish(reg, b"model two", note="second")
    assert (v1, v2) == ("v1", "v2")
    assert reg.versions() == ["v1", "v2"]
    m = reg.manifest("v2")
    assert m["note"] == "second" and m["version"] == "v2"
    assert m["files"]["eta.onnx"] == hashlib.sha256(b"model two").hexdigest()

    # the objects in the bucket: files, manifest, a claim per number, one alias generation
    fs = _s3(url)
    keys = sorted(k.split("/models/", 1)[1] for k in fs.find(_key(url, "")))
    assert "versions/v1/eta.onnx" in keys and "versions/v2/manifest.json" in keys
    assert [k for k in keys if k.startswith("claims/")] == ["claims/v1", "claims/v2"]
    assert json.loads(fs.cat_file(_key(url, "versions/v1/manifest.json")))["version"] == "v1"

    assert reg.promote("v1", by="ci", reason="first") is None
    assert reg.promote("v2") == "v1"
    assert reg.promote("v2") == "v2"  # no change, nothing recorded
    assert reg.aliases() == {"production": "v2"}
    assert reg.rollback(by="oncall", reason="bad p90") == "v1"
    assert reg.rollback() == "v2"  # toggles
    hist = reg.history()
    assert [(h["action"], h["version"], h["previous"]) for h in hist] == [
        ("promote", "v1", None),
        ("promote", "v2", "v1"),
        ("rollback", "v1", "v2"),
        ("rollback", "v2", "v1"),
    ]
    assert (hist[0]["by"], hist[0]["reason"]) == ("ci", "first")
    assert (hist[2]["by"], hist[2]["reason"]) == ("oncall", "bad p90")

    with pytest.raises(ConfigError, match="refusing to archive v2: alias"):
        reg.archive("v2", "lost")
    assert reg.archive("v1", "replaced", by="ci") == "v1"
    assert reg.archived()["v1"]["reason"] == "replaced"
    assert reg.promote("v1") == "v2"  # promoting clears the mark
    assert reg.archived() == {}

    assert reg.promote("v2", alias="candidate") is None
    assert reg.unset("candidate", by="ci") == "v2"
    assert reg.aliases() == {"production": "v1"}
    assert reg.history("candidate")[-1]["action"] == "unset"

    # delete: refused while aliased; the number is never handed out again
    with pytest.raises(ConfigError, match="refusing to delete v1"):
        reg.delete("v1")
    reg.delete("v2")
    assert reg.versions() == ["v1"]
    assert not fs.exists(_key(url, "versions/v2/manifest.json"))
    assert not (reg.root / "versions" / "v2").exists()
    with pytest.raises(ModelLoadError, match="v2 was deleted"):
        reg.resolve("v2")
    assert _publish(reg, b"three") == "v3"


def test_version_without_manifest_is_absent_and_the_manifest_is_written_last(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = _replica(url, tmp_path, "a")
    fs = _s3(url)
    # a publisher that died mid-upload: its claim and some files, no manifest
    fs.pipe_file(_key(url, "claims/v7"), b"")
    fs.pipe_file(_key(url, "versions/v7/eta.onnx"), b"half-published")
    assert reg.versions() == []
    with pytest.raises(ModelLoadError, match="no model registered"):
        reg.resolve("v7")

    writes: list[str] = []
    upload, write = RemoteStore.upload, RemoteStore.write

    def spy_upload(self: RemoteStore, local: Path, rel: str) -> None:
        writes.append(rel)
        upload(self, local, rel)

    def spy_write(self: RemoteStore, rel: str, data: bytes, *, create: bool = False) -> None:
        writes.append(rel)
        write(self, rel, data, create=create)

    monkeypatch.setattr(RemoteStore, "upload", spy_upload)
    monkeypatch.setattr(RemoteStore, "write", spy_write)
    version = _publish(reg, b"model")
    assert version == "v8"  # the dead publisher's number stays spent
    ours = [w for w in writes if w.startswith(f"versions/{version}/")]
    assert ours[-1] == f"versions/{version}/{MANIFEST}"
    assert sorted(ours[:-1]) == [
        f"versions/{version}/eta.onnx",
        f"versions/{version}/sub/levels.json",
    ]
    assert writes.index(f"claims/{version}") < writes.index(ours[0])


def test_failed_upload_leaves_no_version_and_spends_the_number(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = _replica(url, tmp_path, "a")
    assert _publish(reg, b"one") == "v1"
    upload = RemoteStore.upload

    def flaky(self: RemoteStore, local: Path, rel: str) -> None:
        if rel.endswith("sub/levels.json"):
            raise ConfigError(f"cannot write {self.where(rel)} (network down)")
        upload(self, local, rel)

    monkeypatch.setattr(RemoteStore, "upload", flaky)
    stage = reg.stage()
    (stage / "eta.onnx").write_bytes(b"two")
    (stage / "sub").mkdir()
    (stage / "sub" / "levels.json").write_text("{}")
    with pytest.raises(ConfigError, match="network down"):
        reg.publish(stage, {})
    assert reg.versions() == ["v1"]
    assert _s3(url).find(_key(url, "versions/v2")) == []  # uploaded files removed again
    monkeypatch.setattr(RemoteStore, "upload", upload)
    assert reg.publish(stage, {}) == "v3"  # the claim on v2 stays spent


# ---------------------------------------------------------------- replicas


def test_two_replicas_see_each_others_promotions(url: str, tmp_path: Path) -> None:
    a, b = _replica(url, tmp_path, "a"), _replica(url, tmp_path, "b")
    assert a.root != b.root
    assert _publish(a, b"one") == "v1"
    assert b.alias_token() is None
    a.promote("v1")
    token = b.alias_token()
    assert token is not None
    assert b.aliases() == {"production": "v1"}
    # b loads from its own cache, downloaded and verified on first use
    assert not (b.root / "versions" / "v1").exists()
    assert b.verify("production")["version"] == "v1"
    assert (b.path("production") / "eta.onnx").read_bytes() == b"one"
    assert b.path("production") == b.root / "versions" / "v1"

    assert _publish(b, b"two") == "v2"  # numbers are shared through the bucket
    b.promote("v2", by="b")
    assert a.alias_token() != token
    assert a.aliases() == {"production": "v2"}
    assert a.rollback() == "v1"
    assert b.resolve("production") == "v1"
    assert [h["version"] for h in b.history()] == ["v1", "v2", "v1"]


def test_concurrent_promotes_never_lose_a_history_entry(url: str, tmp_path: Path) -> None:
    a, b = _replica(url, tmp_path, "a"), _replica(url, tmp_path, "b")
    versions = [_publish(a, f"m{i}".encode()) for i in range(4)]
    for v in versions:  # download once, so the race is about the aliases
        a.verify(v)
        b.verify(v)
    calls: list[tuple[str, str | None]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def worker(reg: Registry, offset: int) -> None:
        start.wait()
        for i in range(5):
            target = versions[(offset + i) % len(versions)]
            try:
                prev = reg.promote(target, by=f"w{offset}")
            except BaseException as exc:  # recorded, asserted below
                with lock:
                    errors.append(exc)
                return
            with lock:
                calls.append((target, prev))

    threads = [threading.Thread(target=worker, args=(r, i)) for i, r in enumerate((a, b, a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(calls) == 20
    hist = a.history()
    changed = [c for c in calls if c[0] != c[1]]  # a promote to the current version records nothing
    assert len(hist) == len(changed)
    for before, after in itertools.pairwise(hist):
        assert after["previous"] == before["version"]  # a lost update would break the chain
    assert a.aliases()["production"] == hist[-1]["version"]


def test_a_writer_that_keeps_losing_gives_up_with_a_retry_message(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = _replica(url, tmp_path, "a")
    _publish(reg, b"one")
    reg.promote("v1")

    def always_taken(self: RemoteStore, gen: int, data: bytes) -> None:
        raise FileExistsError(self.generation_path(gen))

    monkeypatch.setattr(RemoteStore, "write_aliases", always_taken)
    monkeypatch.setattr("training.registry.time.sleep", lambda s: None)
    with pytest.raises(ConfigError, match=r"promote gave up: .* retry the command"):
        reg.promote("v1", alias="candidate")
    monkeypatch.undo()
    assert reg.aliases() == {"production": "v1"}
    assert len(reg.history()) == 1


# ---------------------------------------------------------------- corruption


def test_a_corrupted_object_in_the_bucket_is_refused(url: str, tmp_path: Path) -> None:
    a = _replica(url, tmp_path, "a")
    _publish(a, b"good model")
    a.promote("v1")
    fs = _s3(url)
    fs.pipe_file(_key(url, "versions/v1/eta.onnx"), b"evil model")

    b = _replica(url, tmp_path, "b")
    with pytest.raises(ModelLoadError) as err:
        b.verify("production")
    msg = str(err.value)
    assert "model v1 in " + url + " is corrupted" in msg
    assert "file eta.onnx checksum mismatch" in msg and "two downloads" in msg
    assert "\n" not in msg
    assert not (b.root / "versions" / "v1").exists()  # nothing cached
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        b.path("v1")

    fs.pipe_file(_key(url, "versions/v1/eta.onnx"), b"good model")  # restored
    assert b.verify("v1")["version"] == "v1"
    assert (b.path("v1") / "eta.onnx").read_bytes() == b"good model"

    fs.pipe_file(_key(url, "versions/v1/stray.bin"), b"x")
    c = _replica(url, tmp_path, "c")
    with pytest.raises(ModelLoadError, match=r"object stray\.bin is not listed"):
        c.verify("v1")


def test_a_corrupted_download_is_refused_and_fetched_again(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _replica(url, tmp_path, "a")
    _publish(a, b"good model")
    download = RemoteStore.download
    calls: list[str] = []

    def once_bad(self: RemoteStore, rel: str, local: Path) -> None:
        download(self, rel, local)
        calls.append(rel)
        if len(calls) == 1:
            local.write_bytes(b"flipped in transit")

    monkeypatch.setattr(RemoteStore, "download", once_bad)
    b = _replica(url, tmp_path, "b")
    assert b.verify("v1")["version"] == "v1"
    assert calls[0] == calls[1]  # the bad file was downloaded again
    assert (b.path("v1") / calls[0].rsplit("/", 1)[-1]).read_bytes() != b"flipped in transit"
    assert list((b.root / ".staging").iterdir()) == []


def test_a_damaged_cached_copy_is_fetched_again(url: str, tmp_path: Path) -> None:
    reg = _replica(url, tmp_path, "a")
    _publish(reg, b"good model")
    cached = reg.path("v1") / "eta.onnx"
    cached.write_bytes(b"edited on this machine")
    assert reg.verify("v1")["version"] == "v1"
    assert cached.read_bytes() == b"good model"


# ---------------------------------------------------------------- memory:// and bad URLs


def test_memory_backend_shares_a_registry_between_replicas(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    root = f"memory://reg-{uuid.uuid4().hex[:8]}/models"
    a, b = Registry(root, cache=tmp_path / "a"), Registry(root, cache=tmp_path / "b")
    assert (_publish(a, b"one"), _publish(b, b"two")) == ("v1", "v2")
    a.promote("v1")
    b.promote("v2")
    assert a.rollback() == "v1"
    assert b.aliases() == {"production": "v1"}
    assert (b.path("production") / "eta.onnx").read_bytes() == b"one"
    assert [h["action"] for h in b.history()] == ["promote", "promote", "rollback"]


def test_the_alias_watcher_polls_the_generation_and_survives_a_failed_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fsspec")
    from server.holder import ModelHolder

    root = f"memory://reg-{uuid.uuid4().hex[:8]}/models"
    ops = Registry(root, cache=tmp_path / "ops")
    holder = ModelHolder(Registry(root, cache=tmp_path / "srv"), "production", "compiled")
    assert holder._mtime() is None  # no alias state yet
    _publish(ops, b"one")
    ops.promote("v1")
    first = holder._mtime()
    assert first is not None
    ops.promote("v1", alias="candidate")
    second = holder._mtime()
    assert second is not None and second > first
    holder._aliases_mtime = second

    def down(self: RemoteStore) -> list[int]:
        raise ModelLoadError(f"cannot read {self.where('aliases')} (store down)")

    monkeypatch.setattr(RemoteStore, "generations", down)
    assert holder._mtime() == second  # unchanged: the watcher does not reload


def test_a_store_without_create_only_writes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fsspec")
    from fsspec.implementations.memory import MemoryFileSystem

    def overwrite_always(
        self: Any, path: str, value: bytes, mode: str = "overwrite", **kw: Any
    ) -> None:
        self.open(path, "wb", data=value)  # a backend that ignores mode="create"

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", overwrite_always)
    reg = Registry(f"memory://reg-{uuid.uuid4().hex[:8]}/models", cache=tmp_path / "a")
    stage = reg.stage()
    (stage / "f").write_bytes(b"x")
    with pytest.raises(ConfigError, match="does not support create-only writes"):
        reg.publish(stage, {})


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("zzz://bucket/models", "is not a usable registry URL"),
        ("memory://", "names no bucket or folder"),
    ],
)
def test_bad_registry_urls_are_one_line_errors(root: str, message: str) -> None:
    pytest.importorskip("fsspec")
    with pytest.raises(ConfigError, match=message) as err:
        Registry(root)
    assert "\n" not in str(err.value)


def test_a_missing_bucket_is_a_one_line_error(s3_endpoint: str, tmp_path: Path) -> None:
    reg = Registry(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/models", cache=tmp_path / "c")
    assert reg.versions() == []  # nothing there yet: reads see an empty registry
    stage = reg.stage()
    (stage / "f").write_bytes(b"x")
    with pytest.raises(
        ConfigError, match=r"cannot write s3://no-such-bucket-.* bucket exists"
    ) as err:
        reg.publish(stage, {})
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- the product on S3


def _copy_in(reg: Registry, src: Path) -> str:
    """Publish a local version folder into ``reg`` (same files, same manifest)."""
    stage = reg.stage()
    for f in src.rglob("*"):
        if f.is_file() and f.name != MANIFEST:
            dst = stage / f.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
    meta = json.loads((src / MANIFEST).read_text())
    for k in ("files", "version", "created_at"):
        meta.pop(k)
    return reg.publish(stage, meta)


def test_the_server_serves_from_s3_and_follows_a_promotion_by_another_process(
    url: str, tmp_path: Path, trained: Any, s3_endpoint: str
) -> None:
    from litestar.testing import TestClient

    from server.app import create_app
    from server.config import Settings
    from tests.e2e import servekit as kit

    ops = _replica(url, tmp_path, "ops")
    src = trained.registry / "versions" / "v1"
    assert (_copy_in(ops, src), _copy_in(ops, src)) == ("v1", "v2")
    ops.promote("v1")

    settings = Settings(
        model_artifact_path=url,
        reload_interval_s=0.1,
        log_level="WARNING",
        database_url=f"sqlite:///{tmp_path / 'db' / 'intellilog.db'}",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        r = client.post("/v1/predict", json=kit.ROW)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "v1"
        served_from = Path(os.environ["INTELLILOG_REGISTRY_CACHE"])
        assert list(served_from.glob("*/versions/v1/manifest.json"))  # the server's cache

        env = {k: v for k, v in os.environ.items() if k != "MODEL_ARTIFACT_PATH"}
        env["INTELLILOG_REGISTRY_CACHE"] = str(tmp_path / "cli-cache")
        done = subprocess.run(
            [sys.executable, "-m", "server.cli", "models", "promote", "v2", "--registry", url],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr

        deadline = time.monotonic() + 30
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            info = client.get("/v1/models").json()
            if info["serving"]["version"] == "v2":
                break
            time.sleep(0.1)
        assert info["serving"]["version"] == "v2", info
        assert info["last_reload_error"] is None
        r = client.post("/v1/predict", json=kit.ROW)
        assert r.status_code == 200 and r.json()["model_version"] == "v2"


def test_train_and_score_with_an_s3_registry(
    url: str, cli: Callable[..., Any], train_data: Path, tmp_path: Path
) -> None:
    res = cli(
        "train",
        "--data",
        train_data,
        "--registry",
        url,
        "--promote",
        "--max-rounds",
        "20",
        "--num-leaves",
        "7",
        "--seed",
        "0",
    )
    assert res.code == 0, res.err
    assert Registry(url, cache=tmp_path / "check").aliases() == {"production": "v1"}
    res = cli("models", "list", "--registry", url)
    assert res.code == 0, res.err
    assert "v1" in res.out and "production" in res.out
    out = tmp_path / "etas.parquet"
    res = cli("score", train_data, "--out", out, "--registry", url, "--quiet")
    assert res.code == 0, res.err
    assert out.is_file() and out.stat().st_size > 0
