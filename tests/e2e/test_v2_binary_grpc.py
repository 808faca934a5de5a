"""KServe V2 as clients use it, against a real ``intellilog serve --grpc-port``.

``tritonclient.http`` at its defaults (binary tensors in and out) and ``tritonclient.grpc``
(raw contents), plus typed gRPC contents through the generated stub: every answer equals
the JSON route's bit for bit, every logged input equals the JSON route's text, and bad
requests get a clear 400 or gRPC status code naming what was wrong, never a 500.
"""

from __future__ import annotations

import json
import struct
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from server.experiments.assign import assign
from tests.e2e import servekit as kit
from tests.server.store.storekit import raw_sql

pytestmark = pytest.mark.slow

th = pytest.importorskip("tritonclient.http", reason="tritonclient[http] belongs in the dev extra")
tg = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] belongs in the dev extra")
grpc = pytest.importorskip("grpc", reason="grpcio belongs in the grpc extra")

from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

NUMBERS = ("pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon", "prep_minutes")
TEXTS = ("vehicle_type", "weather", "zone", "order_id")
OUTPUTS = ("eta_minutes", "eta_p10", "eta_p90")


class GrpcServer(kit.ServerProcess):
    """:class:`kit.ServerProcess` started with ``--grpc-port`` (a free port of its own)."""

    def __init__(self, registry: Path, workdir: Path, workers: int = 1, **env: str) -> None:
        self.grpc_port = kit.free_port()
        self.port = kit.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = workdir / "intellilog.db"
        self.log_path = workdir / f"serve-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        args = [str(kit.INTELLILOG), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--workers", str(workers), "--registry", str(registry)]
        args += ["--grpc-port", str(self.grpc_port)]
        self.proc = subprocess.Popen(
            args,
            cwd=workdir,
            env=kit.clean_env(DATABASE_URL=f"sqlite:///{self.db}", **env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def registry(models: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the v1/v2 registry (the hot-swap test moves its alias)."""
    return kit.copy_registry(models.registry, tmp_path_factory.mktemp("v2") / "registry")


@pytest.fixture(scope="module")
def server(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = GrpcServer(registry, tmp_path_factory.mktemp("serve-v2"), RELOAD_INTERVAL_S="0.2")
    try:
        s.wait_ready(60)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def http(server: Any) -> Any:
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="module")
def hclient(server: Any) -> Any:
    c = th.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=60.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def gclient(server: Any) -> Any:
    c = tg.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server: Any) -> Any:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def rows_of(n: int, seed: int, prefix: str) -> list[dict[str, Any]]:
    """Generated rows with epoch-second times and a known ``prep_minutes`` (JSON tensors
    of FP64 cannot carry a missing value), order ids ``prefix-i``."""
    rows = kit.sample_rows(n, seed)
    for i, r in enumerate(rows):
        r["created_at"] = int(datetime.fromisoformat(r["created_at"]).timestamp())
        r["prep_minutes"] = r["prep_minutes"] if r["prep_minutes"] is not None else 7.25
        r["order_id"] = f"{prefix}-{i}"
    return rows


def columns(rows: list[dict[str, Any]], fp: Any = np.float64) -> dict[str, tuple[np.ndarray, str]]:
    """name -> (values, V2 datatype) of ``rows``."""
    dt = "FP32" if fp is np.float32 else "FP64"
    cols: dict[str, tuple[np.ndarray, str]] = {
        f: (np.array([r[f] for r in rows], dtype=fp), dt) for f in NUMBERS
    }
    cols["created_at"] = (np.array([r["created_at"] for r in rows], dtype=np.int64), "INT64")
    cols["items_count"] = (np.array([r["items_count"] for r in rows], dtype=np.int64), "INT64")
    for f in TEXTS:
        cols[f] = (np.array([r[f].encode() for r in rows], dtype=np.object_), "BYTES")
    return cols


def http_inputs(cols: dict[str, tuple[np.ndarray, str]], binary: bool | None) -> list[Any]:
    """tritonclient.http inputs; ``binary=None``: the client's default (binary)."""
    out = []
    for name, (values, dt) in cols.items():
        t = th.InferInput(name, list(values.shape), dt)
        if binary is None:
            t.set_data_from_numpy(values)
        else:
            t.set_data_from_numpy(values, binary_data=binary)
        out.append(t)
    return out


def json_infer(hclient: Any, cols: Any, rid: str) -> dict[str, np.ndarray]:
    outputs = [th.InferRequestedOutput(n, binary_data=False) for n in OUTPUTS]
    res = hclient.infer(
        "eta", http_inputs(cols, False), outputs=outputs, headers={"x-request-id": rid}
    )
    assert res.get_response()["outputs"][0].get("data") is not None  # really JSON out
    return {n: res.as_numpy(n) for n in OUTPUTS}


def same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for n in OUTPUTS:
        assert a[n].dtype == b[n].dtype == np.float64, n
        assert a[n].tobytes() == b[n].tobytes(), n


def logged(server: Any, request_id: str, n: int) -> dict[str, str]:
    """order id -> logged input text of the rows of ``request_id`` (waits for ``n``)."""
    deadline = time.monotonic() + 30
    got: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline:
        got = raw_sql(
            f"sqlite:///{server.db}",
            "SELECT order_id, inputs FROM predictions WHERE request_id = $1",
            request_id,
        )
        if len(got) >= n:
            break
        time.sleep(0.2)
    assert len(got) == n, (request_id, len(got))
    return {o: bytes(i).decode() if isinstance(i, bytes | memoryview) else i for o, i in got}


# ---- the binary tensor data extension over HTTP ---------------------------------------------


@pytest.mark.parametrize("n", [1, 300])
def test_tritonclient_http_defaults_are_binary_and_equal_json(
    server: Any, hclient: Any, n: int
) -> None:
    rows = rows_of(n, seed=50 + n, prefix=f"b{n}")
    cols = columns(rows)
    expected = json_infer(hclient, cols, f"json-{n}")

    # defaults: binary inputs, no outputs named (request-level binary_data_output)
    res = hclient.infer("eta", http_inputs(cols, None), headers={"x-request-id": f"bin-{n}"})
    resp = res.get_response()
    assert resp["model_version"] == "v1" and resp["parameters"] == {"arm": "production"}
    assert all(o["parameters"]["binary_data_size"] == 8 * n for o in resp["outputs"])
    assert all("data" not in o for o in resp["outputs"])
    same_bits({o: res.as_numpy(o) for o in OUTPUTS}, expected)

    # outputs named at their default (binary_data=True), in another order, one of them
    outs = [th.InferRequestedOutput("eta_p90"), th.InferRequestedOutput("eta_minutes")]
    res = hclient.infer("eta", http_inputs(cols, None), outputs=outs)
    assert [o["name"] for o in res.get_response()["outputs"]] == ["eta_p90", "eta_minutes"]
    for o in ("eta_p90", "eta_minutes"):
        assert res.as_numpy(o).tobytes() == expected[o].tobytes()

    # the logged inputs are the same JSON texts as for JSON tensors, row by row
    assert logged(server, f"bin-{n}", n) == logged(server, f"json-{n}", n)


def test_mixed_binary_and_json_tensors_and_fp32(hclient: Any) -> None:
    rows = rows_of(40, seed=61, prefix="mix")
    cols = columns(rows, fp=np.float32)
    expected = json_infer(hclient, cols, "json-fp32")
    inputs = http_inputs(cols, None)
    for t in inputs[::2]:  # every other input as JSON data inside the binary request
        name = t.name()
        t.set_data_from_numpy(cols[name][0], binary_data=False)
    outs = [
        th.InferRequestedOutput("eta_minutes", binary_data=True),
        th.InferRequestedOutput("eta_p10", binary_data=False),
        th.InferRequestedOutput("eta_p90", binary_data=True),
    ]
    res = hclient.infer("eta", inputs, outputs=outs)
    kinds = {o["name"]: "data" in o for o in res.get_response()["outputs"]}
    assert kinds == {"eta_minutes": False, "eta_p10": True, "eta_p90": False}
    same_bits({o: res.as_numpy(o) for o in OUTPUTS}, expected)


def test_nan_in_a_binary_optional_number_is_missing(server: Any, http: Any) -> None:
    rows = rows_of(3, seed=62, prefix="nan")
    cols = columns(rows)
    cols["prep_minutes"][0][1] = np.nan
    blobs, inputs = [], []
    for name, (values, dt) in cols.items():
        t = th.InferInput(name, list(values.shape), dt)
        t.set_data_from_numpy(values)
        blob = t._get_binary_data()
        blobs.append(blob)
        inputs.append(
            {
                "name": name,
                "shape": [3],
                "datatype": dt,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
    head = json.dumps({"inputs": inputs}).encode()
    r = http.post(
        "/v2/models/eta/infer",
        content=head + b"".join(blobs),
        headers={"Inference-Header-Content-Length": str(len(head)), "x-request-id": "nan-bin"},
    )
    assert r.status_code == 200, r.text
    assert "inference-header-content-length" not in r.headers  # JSON out: none asked binary
    got = {o["name"]: o["data"] for o in r.json()["outputs"]}
    rows[1]["prep_minutes"] = None
    for i, row in enumerate(rows):
        one = http.post("/v1/predict", json=row).json()
        assert [got[o][i] for o in OUTPUTS] == [one[o] for o in OUTPUTS]
    texts = logged(server, "nan-bin", 3)
    assert json.loads(texts["nan-1"])["prep_minutes"] is None
    assert json.loads(texts["nan-0"])["prep_minutes"] == rows[0]["prep_minutes"]


def _binary_body(
    inputs: list[tuple[str, str, list[int], bytes]], extra: bytes = b"", **params: Any
) -> tuple[bytes, dict[str, str]]:
    head_inputs = [
        {"name": n, "datatype": dt, "shape": shape, "parameters": {"binary_data_size": len(b)}}
        for n, dt, shape, b in inputs
    ]
    head = json.dumps({"inputs": head_inputs, **params}).encode()
    body = head + b"".join(b for *_, b in inputs) + extra
    return body, {"Inference-Header-Content-Length": str(len(head))}


def _good_inputs(n: int = 2) -> list[tuple[str, str, list[int], bytes]]:
    rows = rows_of(n, seed=63, prefix="err")
    out = []
    for name, (values, dt) in columns(rows).items():
        t = th.InferInput(name, [n], dt)
        t.set_data_from_numpy(values)
        out.append((name, dt, [n], t._get_binary_data()))
    return out


def test_bad_binary_requests_are_400_naming_the_problem(http: Any) -> None:
    good = _good_inputs()

    def post(body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        r = http.post("/v2/models/eta/infer", content=body, headers=headers)
        assert r.status_code != 500, r.text
        return r.status_code, r.json()["error"] if r.status_code == 400 else r.text

    body, headers = _binary_body(good)
    assert post(body, headers)[0] == 200

    def swap(name: str, dt: str | None = None, raw: bytes | None = None) -> Any:
        return [
            (n, dt or d, s, raw if raw is not None and n == name else b)
            if n == name
            else (n, d, s, b)
            for n, d, s, b in good
        ]

    cases: list[tuple[bytes, dict[str, str], str]] = [
        (body, {"Inference-Header-Content-Length": "ten"}, "Inference-Header-Content-Length"),
        (body, {"Inference-Header-Content-Length": str(len(body) + 1)}, "Inference-Header"),
        (body, {"Inference-Header-Content-Length": "5"}, "JSON header"),
        (body[:-3], headers, "truncated"),  # the last tensor is cut short
        (*_binary_body(good, extra=b"\0\0"), "2 bytes after the last binary input"),
        (*_binary_body(swap("pickup_lat", dt="FP16")), "datatype FP16 not accepted"),
        (*_binary_body(swap("pickup_lat", raw=b"\0" * 12)), "whole number of 8-byte"),
        (*_binary_body(swap("zone", raw=struct.pack("<I", 50) + b"ab")), "BYTES element 0"),
        (*_binary_body(swap("zone", raw=struct.pack("<I", 2) + b"\xff\xfe" * 2)), "not UTF-8"),
        (*_binary_body(swap("zone", raw=b"\1\0")), "4-byte length"),
        (
            *_binary_body([*good, ("bogus", "FP64", [2], b"\0" * 16)]),
            "unknown input 'bogus'",
        ),
        (
            *_binary_body(swap("pickup_lat", raw=np.array([95.0, 1.0]).tobytes())),
            "pickup_lat",
        ),
        (*_binary_body(good, parameters={"binary_data_output": "yes"}), "binary_data_output"),
    ]
    for b, h, needle in cases:
        status, message = post(b, h)
        assert status == 400 and needle in message, (needle, status, message)

    # binary_data_size without the header, and data plus binary_data_size
    head = json.loads(_binary_body(good)[0][: int(headers["Inference-Header-Content-Length"])])
    status, message = post(json.dumps(head).encode(), {"content-type": "application/json"})
    assert status == 400 and "Inference-Header-Content-Length" in message
    head["inputs"][0]["data"] = [1.0, 2.0]
    text = json.dumps(head).encode()
    status, message = post(
        text + b"".join(b for *_, b in good), {"Inference-Header-Content-Length": str(len(text))}
    )
    assert status == 400 and "both data and binary_data_size" in message
    head["inputs"][0].pop("data")
    head["inputs"][0]["parameters"]["binary_data_size"] = -8
    text = json.dumps(head).encode()
    status, message = post(text, {"Inference-Header-Content-Length": str(len(text))})
    assert status == 400 and "binary_data_size" in message


def test_openapi_describes_the_binary_form(http: Any) -> None:
    doc = http.get("/schema/openapi.json").json()
    op = doc["paths"]["/v2/models/{name}/infer"]["post"]
    assert "Inference-Header-Content-Length" in op["description"]
    assert "binary_data_size" in op["description"]
    assert "application/json" in op["requestBody"]["content"]


# ---- the V2 gRPC protocol --------------------------------------------------------------------


def test_grpc_health_and_metadata(gclient: Any, http: Any) -> None:
    assert gclient.is_server_live()
    assert gclient.is_server_ready()
    assert gclient.is_model_ready("eta")
    meta = gclient.get_model_metadata("eta", as_json=True)
    rest = http.get("/v2/models/eta").json()
    assert meta["name"] == "eta" and meta["versions"] == ["v1"] and meta["platform"] == "lightgbm"
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        (i["name"], i["datatype"]) for i in rest["inputs"]
    ]
    assert [o["name"] for o in meta["outputs"]] == list(OUTPUTS)
    with pytest.raises(InferenceServerException) as exc:
        gclient.get_model_metadata("nope")
    assert exc.value.status() == "StatusCode.NOT_FOUND" and "nope" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        gclient.is_model_ready("eta", model_version="v9")
    assert exc.value.status() == "StatusCode.NOT_FOUND" and "v9" in exc.value.message()
    assert gclient.get_server_metadata(as_json=True)["name"] == "intellilog"


def grpc_inputs(cols: dict[str, tuple[np.ndarray, str]]) -> list[Any]:
    out = []
    for name, (values, dt) in cols.items():
        t = tg.InferInput(name, list(values.shape), dt)
        t.set_data_from_numpy(values)
        out.append(t)
    return out


@pytest.mark.parametrize("n", [1, 300])
def test_grpc_raw_contents_equal_http(server: Any, hclient: Any, gclient: Any, n: int) -> None:
    rows = rows_of(n, seed=70 + n, prefix=f"g{n}")
    cols = columns(rows)
    expected = json_infer(hclient, cols, f"gjson-{n}")
    res = gclient.infer(
        "eta", grpc_inputs(cols), request_id=f"req-{n}", headers={"x-request-id": f"grpc-{n}"}
    )
    resp = res.get_response()
    assert resp.model_name == "eta" and resp.model_version == "v1" and resp.id == f"req-{n}"
    assert resp.parameters["arm"].string_param == "production"
    assert [o.name for o in resp.outputs] == list(OUTPUTS)
    assert all(list(o.shape) == [n] and o.datatype == "FP64" for o in resp.outputs)
    same_bits({o: res.as_numpy(o) for o in OUTPUTS}, expected)
    assert logged(server, f"grpc-{n}", n) == logged(server, f"gjson-{n}", n)
    # some outputs only, in the order asked
    res = gclient.infer("eta", grpc_inputs(cols), outputs=[tg.InferRequestedOutput("eta_p10")])
    assert [o.name for o in res.get_response().outputs] == ["eta_p10"]
    assert res.as_numpy("eta_p10").tobytes() == expected["eta_p10"].tobytes()


def typed_request(cols: dict[str, tuple[np.ndarray, str]], model: str = "eta") -> Any:
    req = pb.ModelInferRequest(model_name=model, id="typed")
    for name, (values, dt) in cols.items():
        t = req.inputs.add(name=name, datatype=dt, shape=list(values.shape))
        if dt == "BYTES":
            t.contents.bytes_contents.extend(values.tolist())
        elif dt == "INT64":
            t.contents.int64_contents.extend(values.tolist())
        elif dt == "FP32":
            t.contents.fp32_contents.extend(values.tolist())
        else:
            t.contents.fp64_contents.extend(values.tolist())
    return req


@pytest.mark.parametrize("fp", [np.float64, np.float32])
def test_grpc_typed_contents_equal_http(hclient: Any, stub: Any, fp: Any) -> None:
    rows = rows_of(25, seed=80, prefix="typed")
    cols = columns(rows, fp=fp)
    expected = json_infer(hclient, cols, f"tjson-{fp.__name__}")
    resp = stub.ModelInfer(typed_request(cols), timeout=30)
    assert resp.id == "typed" and resp.model_version == "v1"
    got = {
        o.name: np.frombuffer(raw, dtype="<f8")
        for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
    }
    same_bits(got, expected)


def _status(stub: Any, req: Any) -> tuple[Any, str]:
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(req, timeout=30)
    return exc.value.code(), exc.value.details()


def test_grpc_errors_are_status_codes_with_messages(stub: Any, gclient: Any) -> None:
    cols = columns(rows_of(3, seed=81, prefix="gerr"))
    code, msg = _status(stub, typed_request(cols, model="nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in msg

    bad_shape = typed_request(cols)
    bad_shape.inputs[0].shape[:] = [4]
    code, msg = _status(stub, bad_shape)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "pickup_lat" in msg and "shape" in msg

    two_d = typed_request(cols)
    two_d.inputs[1].shape[:] = [1, 3]
    code, msg = _status(stub, two_d)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "pickup_lon" in msg

    wrong_field = typed_request(cols)
    vals = list(wrong_field.inputs[0].contents.fp64_contents)
    wrong_field.inputs[0].contents.ClearField("fp64_contents")
    wrong_field.inputs[0].contents.fp32_contents.extend(vals)
    code, msg = _status(stub, wrong_field)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "fp64_contents" in msg

    out_of_range = typed_request(cols)
    out_of_range.inputs[0].contents.fp64_contents[1] = 95.0
    code, msg = _status(stub, out_of_range)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'pickup_lat'[1]" in msg

    missing = typed_request({k: v for k, v in cols.items() if k != "zone"})
    code, msg = _status(stub, missing)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "zone" in msg

    raw_short = typed_request(cols)
    raw_short.raw_input_contents.append(b"\0" * 24)
    code, msg = _status(stub, raw_short)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents" in msg

    unknown_out = typed_request(cols)
    unknown_out.outputs.add(name="eta_p50")
    code, msg = _status(stub, unknown_out)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "eta_p50" in msg

    # tritonclient sees the same codes
    bogus = tg.InferInput("bogus", [3], "FP64")
    bogus.set_data_from_numpy(np.zeros(3))
    with pytest.raises(InferenceServerException) as exc:
        gclient.infer("eta", [*grpc_inputs(cols), bogus])
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT" and "bogus" in exc.value.message()
    truncated = tg.InferInput("zone", [3], "BYTES")
    truncated.set_data_from_numpy(cols["zone"][0])
    truncated._raw_content = truncated._raw_content[:-1]
    inputs = [t for t in grpc_inputs(cols) if t.name() != "zone"] + [truncated]
    with pytest.raises(InferenceServerException) as exc:
        gclient.infer("eta", inputs)
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT" and "zone" in exc.value.message()

    # a method of the protocol this server does not implement
    with pytest.raises(grpc.RpcError) as rpc:
        stub.ModelConfig(pb.ModelConfigRequest(name="eta"), timeout=30)
    assert rpc.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_calls_are_counted(http: Any, gclient: Any) -> None:
    before = kit.metric(
        http.get("/metrics").text, "intellilog_grpc_requests_total", method="ModelInfer", code="OK"
    )
    cols = columns(rows_of(2, seed=82, prefix="count"))
    for _ in range(3):
        gclient.infer("eta", grpc_inputs(cols))
    text = http.get("/metrics").text
    after = kit.metric(text, "intellilog_grpc_requests_total", method="ModelInfer", code="OK")
    assert after == before + 3
    assert kit.metric(text, "intellilog_grpc_requests_total", code="NOT_FOUND") >= 1


def test_grpc_follows_a_hot_swap(registry: Path, gclient: Any, hclient: Any) -> None:
    """Promoting v2 in the registry: the next gRPC request is answered by v2 (this
    module's last test: it moves the alias)."""
    from training.registry import Registry

    cols = columns(rows_of(5, seed=83, prefix="swap"))
    assert gclient.infer("eta", grpc_inputs(cols)).get_response().model_version == "v1"
    Registry(registry).promote("v2")
    deadline = time.monotonic() + 30
    version = "v1"
    while time.monotonic() < deadline and version != "v2":
        time.sleep(0.2)
        version = gclient.infer("eta", grpc_inputs(cols)).get_response().model_version
    assert version == "v2"
    res = gclient.infer("eta", grpc_inputs(cols))
    same_bits({o: res.as_numpy(o) for o in OUTPUTS}, json_infer(hclient, cols, "swap-json"))
    assert gclient.get_model_metadata("eta", as_json=True)["versions"] == ["v2"]


def test_grpc_in_every_worker(models: Any, tmp_path: Path) -> None:
    """Two workers share the gRPC port (SO_REUSEPORT): both start (a worker that could not
    bind it would fail its start-up, and the crash-loop guard would end the server), and
    fresh connections are all served."""
    s = GrpcServer(models.registry, tmp_path / "two", workers=2)
    try:
        s.wait_ready(90)
        # both workers up before the SIGTERM below: granian does not stop a worker whose
        # start-up is still running when the signal comes (it is killed after
        # workers_kill_timeout, 30 s), and this test is about both serving
        deadline = time.monotonic() + 60
        while not all(f"Started worker-{k}" in s.log for k in (1, 2)):
            assert time.monotonic() < deadline, s.log
            time.sleep(0.1)
        cols = columns(rows_of(2, seed=84, prefix="w"))
        deadline = time.monotonic() + 60
        while True:  # the second worker may still be warming up
            try:
                for _ in range(12):
                    c = tg.InferenceServerClient(url=f"127.0.0.1:{s.grpc_port}")
                    try:
                        assert c.infer("eta", grpc_inputs(cols)).get_response().model_version
                    finally:
                        c.close()
                break
            except InferenceServerException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        text = httpx.get(f"{s.url}/metrics", timeout=10).text
        assert kit.metric(text, "intellilog_grpc_requests_total", method="ModelInfer") >= 12
        assert s.proc.poll() is None, s.log
        assert "Traceback" not in s.log, s.log
    finally:
        s.stop()
    assert s.proc.returncode == 0, s.log


def test_grpc_routes_experiments_like_http(models: Any, tmp_path: Path) -> None:
    """In an A/B test gRPC rows go to the arm HTTP gives them (the same answers, the same
    ``candidate_rows``); in a shadow test production answers a gRPC request (one row, the
    micro-batched path, and many) and the candidate's answers are logged as ``shadow``."""
    reg = kit.copy_registry(models.registry, tmp_path / "registry")
    s = GrpcServer(
        reg,
        tmp_path / "ab",
        ENABLE_AB_TESTING="true",
        ADMIN_TOKEN="t",
        RELOAD_INTERVAL_S="0.1",
    )
    auth = {"Authorization": "Bearer t"}
    try:
        s.wait_ready(60)
        hc = th.InferenceServerClient(url=f"127.0.0.1:{s.port}")
        gc = tg.InferenceServerClient(url=f"127.0.0.1:{s.grpc_port}")
        web = httpx.Client(base_url=s.url, timeout=30)

        def wait_arm(arm: str) -> None:
            deadline = time.monotonic() + 20
            while True:
                got = gc.infer("eta", grpc_inputs(one)).get_response().parameters["arm"]
                if got.string_param == arm:
                    return
                assert time.monotonic() < deadline, f"routing did not reach {arm!r}"
                time.sleep(0.05)

        res = web.post(
            "/v1/admin/experiments", headers=auth, json={"candidate": "v2", "mode": "ab"}
        )
        assert res.status_code == 201, res.text
        exp = res.json()
        # a probe order the A/B test gives the candidate: "candidate" in the A/B test,
        # "baseline" in the shadow test, so the probe tells which test a worker follows
        probe_rows = rows_of(1, seed=90, prefix="probe")
        probe_rows[0]["order_id"] = next(
            o
            for o in (f"probe-{i}" for i in range(1000))
            if assign(exp["experiment_id"], o, exp["split"])
        )
        one = columns(probe_rows)
        wait_arm("candidate")
        cols = columns(rows_of(40, seed=91, prefix="ab"))
        outs = [th.InferRequestedOutput(n, binary_data=False) for n in OUTPUTS]
        h = hc.infer("eta", http_inputs(cols, False), outputs=outs).get_response()
        g = gc.infer("eta", grpc_inputs(cols))
        gp = {k: v.string_param for k, v in g.get_response().parameters.items()}
        assert gp == h["parameters"] and gp["arm"] == "mixed" and gp["candidate_version"] == "v2"
        assert 0 < len(gp["candidate_rows"].split(",")) < 40
        for o in h["outputs"]:
            assert g.as_numpy(o["name"]).tolist() == o["data"]

        assert web.post(f"/v1/admin/experiments/{res.json()['experiment_id']}/stop", headers=auth)
        res = web.post(
            "/v1/admin/experiments", headers=auth, json={"candidate": "v2", "mode": "shadow"}
        )
        assert res.status_code == 201, res.text
        wait_arm("baseline")
        for n in (1, 30):
            cols = columns(rows_of(n, seed=92 + n, prefix=f"sh{n}"))
            r = gc.infer("eta", grpc_inputs(cols), headers={"x-request-id": f"shadow-{n}"})
            resp = r.get_response()
            assert resp.model_version == "v1" and resp.parameters["arm"].string_param == "baseline"
            deadline = time.monotonic() + 20
            while True:
                arms = raw_sql(
                    f"sqlite:///{s.db}",
                    "SELECT arm, model_version, COUNT(*) FROM predictions WHERE request_id = $1 "
                    "GROUP BY arm, model_version ORDER BY arm",
                    f"shadow-{n}",
                )
                if len(arms) == 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert arms == [("baseline", "v1", n), ("shadow", "v2", n)]
        hc.close()
        gc.close()
        web.close()
    finally:
        s.stop()


def test_serve_refuses_a_grpc_port_it_cannot_have(models: Any, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for grpc_port, needle in ((str(port), "not free"), ("8123", "other than the HTTP port")):
            args = ["serve", "--port", "8123", "--grpc-port", grpc_port]
            res = subprocess.run(
                [str(kit.INTELLILOG), *args, "--registry", str(models.registry)],
                cwd=tmp_path,
                env=kit.clean_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert res.returncode != 0 and needle in res.stderr, res.stderr
            assert "Traceback" not in res.stderr and res.stderr.startswith("error:"), res.stderr


def test_without_grpcio_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from kernels.errors import ConfigError
    from server.grpc import require_grpc

    monkeypatch.setitem(sys.modules, "grpc", None)  # as if grpcio were not installed
    with pytest.raises(ConfigError, match=r"grpc is missing\): install `intellilog\[grpc\]`"):
        require_grpc()
