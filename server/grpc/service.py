"""``inference.GRPCInferenceService`` over a :class:`~server.kserve.V2Model`.

``ModelInfer`` takes each input either as typed ``contents`` (``fp32_contents``,
``fp64_contents``, ``int_contents``, ``int64_contents`` or ``bytes_contents``, by its
datatype) or as ``raw_input_contents`` (one entry per input, in input order, the bytes
the HTTP binary extension carries: what ``tritonclient.grpc`` sends). Both are turned
into the values a JSON tensor carries and take the HTTP route's path from there, so the
answers and logged inputs are the same as over HTTP, bit for bit. Outputs come back as
``raw_output_contents`` (little-endian FP64, in output order), as Triton answers.

Errors are status codes with the HTTP route's messages: NOT_FOUND for another model
name or version, INVALID_ARGUMENT for bad tensors, UNAVAILABLE while not ready, INTERNAL
(logged with its traceback) for anything else. Every call is counted by method and
code (``intellilog_grpc_requests_total``, ``intellilog_grpc_request_duration_seconds``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from server import metrics
from server.kserve import MODEL_NAME, Tensor, V2InputError, V2Model, decode_raw
from server.recorder import new_request_id

__all__ = ["GRPC_LATENCY", "GRPC_REQUESTS", "InferenceService"]

log = logging.getLogger("intellilog.server")

GRPC_REQUESTS = Counter(
    "intellilog_grpc_requests_total", "gRPC calls of the V2 service", ["method", "code"]
)
GRPC_LATENCY = Histogram(
    "intellilog_grpc_request_duration_seconds",
    "gRPC call latency of the V2 service",
    ["method", "code"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

#: datatype -> the typed contents field that carries its values
_CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)


class _Refused(Exception):
    """An answer with a status code other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _typed(t: Any) -> list[Any]:
    """The values of a typed-contents input, as JSON would carry them."""
    field = _CONTENTS[t.datatype]
    c = t.contents
    stray = [f for f in _ALL_CONTENTS if f != field and len(getattr(c, f))]
    if stray:
        raise V2InputError(
            f"input {t.name!r}: datatype {t.datatype} carries its values in contents.{field}, "
            f"not contents.{stray[0]}"
        )
    values = list(getattr(c, field))
    if t.datatype != "BYTES":
        return values
    out = []
    for i, b in enumerate(values):
        try:
            out.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            raise V2InputError(f"input {t.name!r}: BYTES element {i} is not UTF-8") from None
    return out


def _has_contents(t: Any) -> bool:
    return t.HasField("contents") and any(len(getattr(t.contents, f)) for f in _ALL_CONTENTS)


def tensors(v2: V2Model, request: Any) -> list[Tensor]:
    """The inputs of a ModelInferRequest as :class:`Tensor` s with their values."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise V2InputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "send one per input, in input order, or typed contents for every input"
        )
    out = []
    for i, t in enumerate(request.inputs):
        tensor = Tensor(t.name, list(t.shape), t.datatype)
        v2.check_datatype(tensor)
        if raw:
            if _has_contents(t):
                raise V2InputError(
                    f"input {t.name!r}: has both contents and raw_input_contents; send one"
                )
            tensor.data = decode_raw(t.name, t.datatype, raw[i])
        else:
            tensor.data = _typed(t)
        out.append(tensor)
    return out


def _ids(context: Any) -> tuple[str, str]:
    """``(request id, unique id)`` as HTTP makes them from ``x-request-id``."""
    given = ""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            given = value
    if 0 < len(given) <= 128 and given.isprintable():
        return given, new_request_id()
    rid = new_request_id()
    return rid, rid


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Health, metadata and inference of the served model over gRPC."""

    def __init__(self, v2: V2Model) -> None:
        self.v2 = v2
        self._background: set[asyncio.Task[None]] = set()

    async def _call(self, method: str, context: Any, answer: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``answer``; a refusal or an unexpected error becomes a status code."""
        t0 = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        try:
            return await answer()
        except _Refused as exc:
            code, message = exc.code, str(exc)
        except V2InputError as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except Exception as exc:
            log.exception("gRPC %s failed", method)
            metrics.ERRORS.labels("grpc_internal").inc()
            code = grpc.StatusCode.INTERNAL
            message = f"internal error ({type(exc).__name__}); the server log has the details"
        finally:
            GRPC_REQUESTS.labels(method, code.name).inc()
            GRPC_LATENCY.labels(method, code.name).observe(time.perf_counter() - t0)
        await context.abort(code, message)

    def _model(self, name: str, version: str = "") -> None:
        if name != MODEL_NAME:
            raise _Refused(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {name!r}; this server serves {MODEL_NAME!r}",
            )
        m = self.v2.holder.model
        if version and (m is None or version != m.version):
            raise _Refused(
                grpc.StatusCode.NOT_FOUND,
                f"model {name!r} version {version!r} is not served (serving "
                f"{m.version if m else 'none yet'}); leave the version empty",
            )

    async def ServerLive(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            return pb.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, answer)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            return pb.ServerReadyResponse(ready=self.v2.is_ready())

        return await self._call("ServerReady", context, answer)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            self._model(request.name, request.version)
            return pb.ModelReadyResponse(ready=self.v2.is_ready())

        return await self._call("ModelReady", context, answer)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            from training import __version__

            return pb.ServerMetadataResponse(name="intellilog", version=__version__)

        return await self._call("ServerMetadata", context, answer)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            self._model(request.name, request.version)
            meta = self.v2.metadata()
            T = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[
                    T(name=i["name"], datatype=i["datatype"], shape=i["shape"])
                    for i in meta["inputs"]
                ],
                outputs=[
                    T(name=o["name"], datatype=o["datatype"], shape=o["shape"])
                    for o in meta["outputs"]
                ],
            )

        return await self._call("ModelMetadata", context, answer)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            self._model(request.model_name, request.model_version)
            if not self.v2.is_ready():
                raise _Refused(
                    grpc.StatusCode.UNAVAILABLE,
                    "not ready: the model is loading or the store is not open; retry",
                )
            batch = self.v2.rows(tensors(self.v2, request))
            wanted = V2Model.outputs(
                [(o.name, "classification" in o.parameters) for o in request.outputs]
            )
            rid, uid = _ids(context)
            ans = await self.v2.score(batch, rid, uid)
            n = len(batch.items)
            resp = pb.ModelInferResponse(
                model_name=MODEL_NAME, model_version=ans.version, id=request.id
            )
            for w in wanted:
                resp.outputs.add(name=w, datatype="FP64", shape=[n])
                resp.raw_output_contents.append(ans.outputs[w].astype("<f8", copy=False).tobytes())
            for k, v in ans.parameters.items():
                resp.parameters[k].string_param = v
            if ans.shadow is not None:  # after the answer, as HTTP's background task
                task: asyncio.Task[None] = asyncio.get_running_loop().create_task(ans.shadow())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return resp

        return await self._call("ModelInfer", context, answer)
