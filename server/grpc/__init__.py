"""The Open Inference Protocol (KServe V2) over gRPC, beside the HTTP routes.

``intellilog serve --grpc-port N`` (or ``GRPC_PORT=N``) starts a ``grpc.aio`` server in
every granian worker, on that worker's own event loop, from the app's lifespan: it
serves the worker's :class:`~server.kserve.V2Model` (the same model holder, so hot swaps
apply to gRPC on the next request; the same prediction log, experiment routing and
micro-batcher as HTTP). With ``--workers N`` every worker binds the port with
``SO_REUSEPORT`` (grpc's default on Linux) and the kernel spreads connections over the
workers, as granian does for HTTP. One process per worker keeps one copy of the model
and one log queue; a separate gRPC process would need its own of each.

The message classes and the service stubs are the ones ``tritonclient[grpc]`` ships,
generated from the protocol's ``grpc_service.proto``: nothing is generated or fetched at
run time. Both come with ``pip install 'intellilog[grpc]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kernels.errors import ConfigError

if TYPE_CHECKING:
    from server.kserve import V2Model

__all__ = ["check_port", "require_grpc", "start_grpc"]


def require_grpc() -> None:
    """Raise ConfigError saying what to install when grpcio or the stubs are missing."""
    try:
        import grpc  # noqa: F401
        from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"the gRPC service (GRPC_PORT, --grpc-port) needs grpcio and the V2 protocol "
            f"stubs ({exc.name} is missing): install `intellilog[grpc]`"
        ) from None


def check_port(host: str, port: int) -> None:
    """Raise ConfigError when ``host:port`` cannot be bound by this process alone: the
    workers bind it with ``SO_REUSEPORT``, which would silently share a port another
    server holds with the same option, so the CLI checks it once without."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"gRPC address {host}:{port}: {exc}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        try:
            s.bind(addr)
        except OSError as exc:
            raise ConfigError(
                f"gRPC port {port} on {host} is not free ({exc.strerror}): choose another "
                "with --grpc-port or GRPC_PORT"
            ) from None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_grpc(v2: V2Model, host: str, port: int, max_message_bytes: int) -> Any:
    """A started ``grpc.aio`` server of the V2 service on ``host:port``; stop it with
    ``await server.stop(grace_seconds)``. Messages up to ``max_message_bytes`` each way
    (``MAX_BODY_MB``, as for HTTP bodies)."""
    require_grpc()
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from tritonclient.grpc import service_pb2_grpc

    from server.grpc.service import InferenceService

    server = grpc.aio.server(
        # the protocol's methods this server does not implement are the generated
        # servicer's synchronous UNIMPLEMENTED answers; grpc.aio runs those in this pool
        migration_thread_pool=ThreadPoolExecutor(1, thread_name_prefix="grpc-unimplemented"),
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(v2), server)
    address = _address(host, port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"gRPC cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise ConfigError(f"gRPC cannot listen on {address} (address in use, or not local)")
    await server.start()
    return server
