"""What the adapter needs from a transport, per call, on each side.

The grpc-shaped server and channel are written against these two small interfaces; the
QUIC binding (``_quic``) implements them on quic_rpc, and :mod:`.testing`
runs them over quic_rpc's in-memory connection for users' unit tests.

Messages cross these interfaces already serialized (``bytes``): grpc's serializers run in
the adapter, exactly where grpcio runs them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from quic_rpc.streams import PeerInfo

from ._metadata import MetadataTuple

__all__ = [
    "CallCancelledError",
    "CallStatus",
    "ClientCallIO",
    "ClientTransport",
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

    async def write(self, data: bytes, *, last: bool = False) -> None:
        """Send one request; ``last`` also ends the requests (in the same packet)."""
        ...

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
