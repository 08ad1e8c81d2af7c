"""Per-call context: deadline, cancellation signal, metadata, peer info.

:class:`CallContext` is what both sides share (a client call exposes one as
``call.context``); :class:`ServerCallContext` is what every handler receives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from ..streams import PeerInfo
from .errors import LocalProtocolError, RPCError
from .frames import CallKind
from .metadata import Metadata, MetadataLike, MetadataValue
from .status import Status

__all__ = ["CallContext", "CancellationSignal", "ServerCallContext"]

SignalCallback = Callable[["CancellationSignal"], None]


class CancellationSignal:
    """Fires once when the call is cancelled: peer reset, deadline, client cancel, shutdown.

    Event-like (``is_set()``, ``await wait()``) plus ``add_done_callback``; ``cause`` holds
    the exception that describes why.
    """

    __slots__ = ("_callbacks", "_cause", "_event", "_fired")

    def __init__(self) -> None:
        self._fired = False
        self._cause: BaseException | None = None
        self._callbacks: list[SignalCallback] = []
        self._event: asyncio.Event | None = None

    def is_set(self) -> bool:
        return self._fired

    def __bool__(self) -> bool:
        return self._fired

    @property
    def cause(self) -> BaseException | None:
        """Why the call was cancelled (an RPCError or a stream error), once set."""
        return self._cause

    async def wait(self) -> None:
        """Return once the signal fired."""
        if self._fired:
            return
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()

    def add_done_callback(self, callback: SignalCallback) -> None:
        """Call ``callback(signal)`` when the signal fires (at once if it has)."""
        if self._fired:
            callback(self)
        else:
            self._callbacks.append(callback)

    def remove_done_callback(self, callback: SignalCallback) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def _fire(self, cause: BaseException) -> bool:
        if self._fired:
            return False
        self._fired = True
        self._cause = cause
        if self._event is not None:
            self._event.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)
        return True

    def __repr__(self) -> str:
        return f"<CancellationSignal fired={self._fired} cause={self._cause!r}>"


class CallContext:
    """What both sides know about a call."""

    __slots__ = ("cancelled", "deadline", "invocation_metadata", "kind", "method", "peer_info")

    def __init__(
        self,
        *,
        method: str,
        kind: CallKind,
        invocation_metadata: Metadata,
        deadline: float | None,
        peer_info: PeerInfo | None,
    ) -> None:
        self.method = method
        self.kind = kind
        self.invocation_metadata = invocation_metadata
        self.deadline = deadline
        """Absolute, in the event loop's clock (``loop.time()``); None for no deadline."""
        self.peer_info = peer_info
        self.cancelled = CancellationSignal()

    def time_remaining(self) -> float | None:
        """Seconds until the deadline (never negative), or None without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - asyncio.get_running_loop().time())


class _ServerCallOps(Protocol):
    async def send_initial_metadata(self, metadata: Metadata) -> None: ...

    async def write(self, message: Any) -> None: ...


class ServerCallContext(CallContext):
    """The context every handler gets (the second argument)."""

    __slots__ = ("_call", "_status", "_trailing")

    def __init__(
        self,
        call: _ServerCallOps,
        *,
        method: str,
        kind: CallKind,
        invocation_metadata: Metadata,
        deadline: float | None,
        peer_info: PeerInfo | None,
    ) -> None:
        super().__init__(
            method=method,
            kind=kind,
            invocation_metadata=invocation_metadata,
            deadline=deadline,
            peer_info=peer_info,
        )
        self._call = call
        self._trailing: Metadata | None = None
        self._status: tuple[Status, str] | None = None

    async def send_initial_metadata(self, metadata: MetadataLike) -> None:
        """Send the response header now; at most once, before any response message."""
        await self._call.send_initial_metadata(Metadata.coerce(metadata))

    def set_trailing_metadata(self, metadata: MetadataLike) -> None:
        """Metadata to send with the trailer (replaces what was set before)."""
        self._trailing = Metadata.coerce(metadata).copy()

    def add_trailing_metadata(self, key: str, value: MetadataValue) -> None:
        if self._trailing is None:
            self._trailing = Metadata()
        self._trailing.add(key, value)

    @property
    def trailing_metadata(self) -> Metadata:
        return self._trailing if self._trailing is not None else Metadata()

    def set_status(self, status: Status, details: str = "") -> None:
        """End the call with this status when the handler returns normally."""
        self._status = (Status(status), details)

    @property
    def status(self) -> tuple[Status, str] | None:
        return self._status

    def abort(
        self,
        status: Status,
        details: str = "",
        trailing_metadata: MetadataLike = None,
        rich_details: bytes | None = None,
    ) -> NoReturn:
        """End the call now with ``status`` (raises :class:`RPCError`)."""
        if status == Status.OK:
            raise LocalProtocolError("abort() needs a non-OK status")
        raise RPCError(status, details, Metadata.coerce(trailing_metadata), rich_details)

    async def write(self, message: Any) -> None:
        """Send one response message (server-streaming and duplex handlers)."""
        if self.kind.single_response or self.kind is CallKind.RAW:
            raise LocalProtocolError(f"write() is for streaming responses, not {self.kind.name}")
        await self._call.write(message)
