"""The ``grpc.health.v1.Health`` service (Check, List, Watch) for every stack.

One :class:`HealthState` holds the serving status of each service name (``""`` is the
whole server) and notifies watchers of changes. Two servicers share it:
:class:`HealthServicer` for sync servers (grpcio's ``grpc.server`` or this adapter's
``server``) and :class:`AioHealthServicer` for ``grpc.aio`` servers, the adapter's
``aio.server`` and quic_rpc's native ``RPCServer`` (via :func:`health_manifest`). So a
dual-stack agent reports one health on both transports.

Semantics follow gRPC's reference implementation: ``Check`` of an unknown service is
NOT_FOUND; ``Watch`` of an unknown service sends SERVICE_UNKNOWN and keeps waiting;
``Watch`` sends the current status at once and then every change (not repeats);
:meth:`HealthState.enter_graceful_shutdown` marks everything NOT_SERVING for good.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from protos.grpc.health.v1 import health_pb2

from . import descriptor
from ._compat import StatusCode

__all__ = [
    "HEALTH_SERVICE",
    "NOT_SERVING",
    "SERVICE_UNKNOWN",
    "SERVING",
    "UNKNOWN",
    "AioHealthServicer",
    "HealthServicer",
    "HealthState",
    "add_health_servicer",
    "health_manifest",
    "health_stub",
]

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
UNKNOWN: int = health_pb2.HealthCheckResponse.UNKNOWN
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

WATCH_POLL = 0.5
"""Seconds a sync Watch waits for a change before re-checking that its call is active."""

Watcher = Callable[[str, int], None]


class HealthState:
    """Serving status per service name; thread-safe; notifies watchers on change."""

    def __init__(self, *, overall: int | None = SERVING) -> None:
        self._lock = threading.Lock()
        self._statuses: dict[str, int] = {} if overall is None else {"": overall}
        self._watchers: set[Watcher] = set()
        self._shut_down = False

    def set(self, service: str, status: int) -> None:
        """Set ``service``'s status (``""`` is the server as a whole)."""
        if status not in (UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN):
            raise ValueError(f"not a HealthCheckResponse.ServingStatus: {status!r}")
        with self._lock:
            if self._shut_down or self._statuses.get(service) == status:
                return
            self._statuses[service] = status
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher(service, status)

    def clear(self, service: str) -> None:
        """Forget ``service`` (Check answers NOT_FOUND, watchers see SERVICE_UNKNOWN)."""
        with self._lock:
            if self._shut_down or self._statuses.pop(service, None) is None:
                return
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher(service, SERVICE_UNKNOWN)

    def get(self, service: str) -> int | None:
        with self._lock:
            return self._statuses.get(service)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._statuses)

    def enter_graceful_shutdown(self) -> None:
        """Mark every service NOT_SERVING and ignore later changes."""
        with self._lock:
            if self._shut_down:
                return
            changed = [name for name, st in self._statuses.items() if st != NOT_SERVING]
            for name in changed:
                self._statuses[name] = NOT_SERVING
            self._shut_down = True
            watchers = list(self._watchers)
        for name in changed:
            for watcher in watchers:
                watcher(name, NOT_SERVING)

    def subscribe(self, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher(service, status)`` on every change; returns the unsubscriber."""
        with self._lock:
            self._watchers.add(watcher)

        def unsubscribe() -> None:
            with self._lock:
                self._watchers.discard(watcher)

        return unsubscribe


def _response(status: int | None) -> Any:
    value: Any = SERVICE_UNKNOWN if status is None else status
    return health_pb2.HealthCheckResponse(status=value)


def _list_response(statuses: dict[str, int]) -> Any:
    response = health_pb2.HealthListResponse()
    for name, status in statuses.items():
        value: Any = status
        response.statuses[name].status = value
    return response


class HealthServicer:
    """The Health service for sync servers (servicer methods run in the server's pool)."""

    def __init__(self, state: HealthState | None = None) -> None:
        self.state = state if state is not None else HealthState()

    def Check(self, request: Any, context: Any) -> Any:
        status = self.state.get(request.service)
        if status is None:
            context.abort(StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return _response(status)

    def List(self, request: Any, context: Any) -> Any:
        return _list_response(self.state.snapshot())

    def Watch(self, request: Any, context: Any) -> Iterator[Any]:
        changes: queue.SimpleQueue[int] = queue.SimpleQueue()
        service = request.service

        def on_change(name: str, status: int) -> None:
            if name == service:
                changes.put(status)

        unsubscribe = self.state.subscribe(on_change)
        try:
            current = self.state.get(service)
            last = SERVICE_UNKNOWN if current is None else current
            yield _response(last)
            while context.is_active():
                try:
                    status = changes.get(timeout=WATCH_POLL)
                except queue.Empty:
                    continue
                if status != last:
                    last = status
                    yield _response(status)
        finally:
            unsubscribe()


class AioHealthServicer:
    """The Health service for asyncio servers (grpc.aio, the adapter, native quic_rpc)."""

    def __init__(self, state: HealthState | None = None) -> None:
        self.state = state if state is not None else HealthState()

    async def Check(self, request: Any, context: Any) -> Any:
        status = self.state.get(request.service)
        if status is None:
            await context.abort(StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return _response(status)

    async def List(self, request: Any, context: Any) -> Any:
        return _list_response(self.state.snapshot())

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        changes: asyncio.Queue[int] = asyncio.Queue()
        service = request.service

        def on_change(name: str, status: int) -> None:
            if name == service:
                loop.call_soon_threadsafe(changes.put_nowait, status)

        unsubscribe = self.state.subscribe(on_change)
        try:
            current = self.state.get(service)
            last = SERVICE_UNKNOWN if current is None else current
            yield _response(last)
            while True:
                status = await changes.get()
                if status != last:
                    last = status
                    yield _response(status)
        finally:
            unsubscribe()


def add_health_servicer(servicer: HealthServicer | AioHealthServicer, server: Any) -> None:
    """Register the Health service on a grpcio server or an adapter server (sync or aio)."""
    descriptor.add_servicer_to_server(HEALTH_SERVICE, servicer, server)


def health_manifest(servicer: AioHealthServicer) -> dict[str, Any]:
    """The Health service as a quic_rpc-native ``RPCServer`` manifest."""
    return descriptor.native_manifest(HEALTH_SERVICE, servicer)


def health_stub(channel: Any) -> Any:
    """A Health client stub on a grpc-style channel or a quic_rpc ``RPCClient``."""
    return descriptor.stub_class(HEALTH_SERVICE)(channel)
