"""The agent's grpc.aio server on the legacy stack, and its health service.

The server listens in plaintext on loopback only; peers reach it through the
:class:`~legacy_grpc.reverse_proxy.ReverseProxy`, which terminates mutual TLS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import grpc

from legacy_grpc.errors import ProxyStateError
from protos.grpc.health.v1 import health_pb2, health_pb2_grpc

__all__ = [
    "DEFAULT_STOP_GRACE",
    "HEALTH_SERVICE_NAME",
    "AgentGRPCServer",
    "HealthService",
    "ServiceBinding",
]

logger = logging.getLogger(__name__)

HEALTH_SERVICE_NAME: Final = "grpc.health.v1.Health"
DEFAULT_STOP_GRACE: Final = 2.0

_Status: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus


class HealthService(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health``: per-service serving status, "" for the whole server."""

    def __init__(self) -> None:
        self._statuses: dict[str, _Status] = {"": health_pb2.HealthCheckResponse.NOT_SERVING}
        self._changed = asyncio.Event()
        self._closed = False

    def set_serving(self, service: str, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self._statuses[service] = status
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """Mark everything NOT_SERVING and end every Watch stream."""
        for service in self._statuses:
            self._statuses[service] = health_pb2.HealthCheckResponse.NOT_SERVING
        self._closed = True
        self._changed.set()

    def status(self, service: str = "") -> _Status | None:
        return self._statuses.get(service)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: _Status | None = None
        while True:
            changed = self._changed
            status = self._statuses.get(
                request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            )
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._closed:
                return
            await changed.wait()


@dataclass(frozen=True, slots=True)
class ServiceBinding:
    """A servicer and the generated ``add_XServicer_to_server`` function that adds it."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: object
    service_name: str


class AgentGRPCServer:
    """grpc.aio server on ``127.0.0.1`` (plaintext) with the health service always on."""

    def __init__(
        self,
        services: Sequence[ServiceBinding] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._services = tuple(services)
        self._address = (host, port)
        self._options = tuple(options)
        self.health = HealthService()
        self._server: grpc.aio.Server | None = None
        self._port: int | None = None
        self._stopped = False

    @property
    def host(self) -> str:
        return self._address[0]

    @property
    def port(self) -> int:
        if self._port is None:
            raise ProxyStateError("gRPC server is not started")
        return self._port

    async def start(self) -> int:
        """Start serving; returns the bound port."""
        if self._server is not None or self._stopped:
            raise ProxyStateError("gRPC server already started or stopped")
        server = grpc.aio.server(options=self._options)
        _add_health: Callable[[Any, grpc.aio.Server], None] = (
            health_pb2_grpc.add_HealthServicer_to_server
        )
        _add_health(self.health, server)
        for binding in self._services:
            binding.add_to_server(binding.servicer, server)
        host, port = self._address
        bound = server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise ProxyStateError(f"gRPC server cannot bind {host}:{port}")
        await server.start()
        self._server, self._port = server, bound
        self.health.set_serving("", True)
        for binding in self._services:
            self.health.set_serving(binding.service_name, True)
        logger.info("gRPC server on %s:%d", host, bound)
        return bound

    async def stop(self, grace: float | None = DEFAULT_STOP_GRACE) -> None:
        """Refuse new calls, let running ones finish for ``grace`` seconds; idempotent."""
        self._stopped = True
        self.health.close()
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)

    async def __aenter__(self) -> AgentGRPCServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
