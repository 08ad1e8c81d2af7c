"""What the adapter needs from a transport, per call, on each side.

The grpc-shaped server and channel are written against these two small interfaces; the
QUIC binding (``_quic``) implements them on quic_rpc, and :class:`MemoryTransport`
implements them in memory (same event loop) for users' unit tests.

Messages cross these interfaces already serialized (``bytes``): grpc's serializers run in
the adapter, exactly where grpcio runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from quic_rpc.streams import PeerInfo

from ._metadata import MetadataTuple

__all__ = [
    "CallCancelledError",
    "CallStatus",
    "ClientCallIO",
    "ClientTransport",
    "MemoryTransport",
    "ServerCallIO",
    "ServerCallInfo",
    "ServerDispatch",
]


class CallCancelledError(Exception):
    """The call was cancelled (by the peer, a deadline or shutdown) while we used it."""


@dataclass(frozen=True, slots=True)
class CallStatus:
    """A call's final status as it crosses the wire: number, details, trailing metadata."""

    code: int
    details: str = ""
    trailing_metadata: MetadataTuple = ()


@dataclass(frozen=True, slots=True)
class ServerCallInfo:
    """The request header of an incoming call. ``deadline`` is absolute, loop time."""

    method: str
    metadata: MetadataTuple
    deadline: float | None
    peer: PeerInfo
    streaming: tuple[bool, bool] | None = None
    """(request_streaming, response_streaming) of the call as the client made it."""


class ServerCallIO(Protocol):
    """One incoming call as the server side of the adapter drives it."""

    @property
    def info(self) -> ServerCallInfo: ...

    async def read(self) -> bytes | None:
        """The next request message, None once the client finished sending.

        Raises CallCancelledError once the call is cancelled."""
        ...

    async def send_initial_metadata(self, metadata: MetadataTuple) -> None: ...

    async def write(self, data: bytes) -> None:
        """Send one response message (sends empty initial metadata first if not yet sent)."""
        ...

    async def finish(self, status: CallStatus) -> None:
        """Send the trailer; the call is over."""
        ...

    def is_cancelled(self) -> bool: ...

    def add_cancel_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (on the loop) when the call is cancelled; at once if it was."""
        ...


ServerDispatch = Callable[[ServerCallIO], Awaitable[None]]
"""The server side of the adapter: awaited once per incoming call, owns it to the end."""


class ClientCallIO(Protocol):
    """One outgoing call as the channel side of the adapter drives it."""

    async def write(self, data: bytes) -> None: ...

    async def done_writing(self) -> None: ...

    async def read(self) -> bytes | None:
        """The next response message, None at the end (then ``status()`` is ready)."""
        ...

    async def initial_metadata(self) -> MetadataTuple: ...

    async def status(self) -> CallStatus:
        """The final status; waits for the trailer. Transport failures become UNAVAILABLE."""
        ...

    def cancel(self) -> None:
        """Abandon the call: the server sees a cancellation. Idempotent."""
        ...


class ClientTransport(Protocol):
    """Opens calls to one target."""

    async def open_call(
        self,
        method: str,
        metadata: MetadataTuple,
        deadline: float | None,
        streaming: tuple[bool, bool],
    ) -> ClientCallIO:
        """Start a call; ``streaming`` is (request_streaming, response_streaming)."""
        ...

    async def wait_ready(self) -> None:
        """Connect (if not yet) and return once calls can be made; raise if it can't."""
        ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- in memory

@dataclass(eq=False)
class _MemoryCall:
    info: ServerCallInfo
    requests: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    responses: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    initial: asyncio.Future[MetadataTuple] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    final: asyncio.Future[CallStatus] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    cancelled: bool = False
    cancel_callbacks: list[Callable[[], None]] = field(default_factory=list)
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event)

    def do_cancel(self, status: CallStatus) -> None:
        if self.cancelled or self.final.done():
            return
        self.cancelled = True
        self.cancel_event.set()
        if not self.initial.done():
            self.initial.set_result(())
        self.final.set_result(status)
        self.responses.put_nowait(None)
        callbacks, self.cancel_callbacks = self.cancel_callbacks, []
        for callback in callbacks:
            callback()


class _MemoryServerCall:
    def __init__(self, call: _MemoryCall) -> None:
        self._call = call

    @property
    def info(self) -> ServerCallInfo:
        return self._call.info

    async def read(self) -> bytes | None:
        if self._call.cancelled:
            raise CallCancelledError("call cancelled")
        getter = asyncio.ensure_future(self._call.requests.get())
        waiter = asyncio.ensure_future(self._call.cancel_event.wait())
        try:
            await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not getter.done():
                getter.cancel()
        if not getter.done() or getter.cancelled():
            raise CallCancelledError("call cancelled")
        return getter.result()

    async def send_initial_metadata(self, metadata: MetadataTuple) -> None:
        if self._call.cancelled:
            raise CallCancelledError("call cancelled")
        if not self._call.initial.done():
            self._call.initial.set_result(metadata)

    async def write(self, data: bytes) -> None:
        if self._call.cancelled:
            raise CallCancelledError("call cancelled")
        if not self._call.initial.done():
            self._call.initial.set_result(())
        self._call.responses.put_nowait(data)

    async def finish(self, status: CallStatus) -> None:
        if self._call.cancelled or self._call.final.done():
            return
        if not self._call.initial.done():
            self._call.initial.set_result(())
        self._call.final.set_result(status)
        self._call.responses.put_nowait(None)

    def is_cancelled(self) -> bool:
        return self._call.cancelled

    def add_cancel_callback(self, callback: Callable[[], None]) -> None:
        if self._call.cancelled:
            callback()
        else:
            self._call.cancel_callbacks.append(callback)


class _MemoryClientCall:
    def __init__(self, call: _MemoryCall, task: asyncio.Task[None]) -> None:
        self._call = call
        self._task = task

    async def write(self, data: bytes) -> None:
        if not self._call.final.done():
            self._call.requests.put_nowait(data)

    async def done_writing(self) -> None:
        self._call.requests.put_nowait(None)

    async def read(self) -> bytes | None:
        if self._call.final.done() and self._call.responses.empty():
            return None
        return await self._call.responses.get()

    async def initial_metadata(self) -> MetadataTuple:
        return await asyncio.shield(self._call.initial)

    async def status(self) -> CallStatus:
        return await asyncio.shield(self._call.final)

    def cancel(self) -> None:
        self._call.do_cancel(CallStatus(1, "Cancelled"))


class MemoryTransport:
    """A client transport wired straight to a server's dispatch function (one event loop)."""

    def __init__(self, dispatch: ServerDispatch, peer: PeerInfo | None = None) -> None:
        self._dispatch = dispatch
        self._peer = peer or PeerInfo(transport="memory", remote_host="127.0.0.1")
        self._tasks: set[asyncio.Task[None]] = set()

    async def open_call(
        self,
        method: str,
        metadata: MetadataTuple,
        deadline: float | None,
        streaming: tuple[bool, bool],
    ) -> ClientCallIO:
        call = _MemoryCall(ServerCallInfo(method, metadata, deadline, self._peer, streaming))
        async def serve() -> None:
            await self._dispatch(_MemoryServerCall(call))

        task = asyncio.get_running_loop().create_task(serve())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _MemoryClientCall(call, task)

    async def wait_ready(self) -> None:
        return None

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

