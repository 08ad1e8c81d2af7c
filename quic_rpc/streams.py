"""The byte-stream interface between the RPC layer and the transports beneath it.

`quic_rpc.rpc` knows nothing about QUIC: it runs one call per bidirectional byte stream,
and any transport that hands it objects satisfying :class:`ByteStream` will do (QUIC
streams, multiplexed TCP/TLS streams, the in-memory pipe used in tests). Both layers
import this module; neither imports the other.

Semantics every transport must honour (checked by the stream conformance suite):

* ``receive()`` returns at least one byte, or ``b""`` once the peer has half-closed
  (sent its end of stream) and everything before it was read. It raises
  :class:`StreamResetError` when the peer reset its sending side, carrying the peer's
  application error code.
* ``send()`` waits while the peer's flow-control window or the local send buffer is
  full (backpressure; never unbounded buffering). It raises :class:`StreamStoppedError`
  when the peer asked us to stop sending, carrying the peer's code.
* ``send_eof()`` half-closes: the peer's ``receive()`` then returns ``b""``.
* ``reset(code)`` abandons our sending side with an application error code;
  ``stop_sending(code)`` asks the peer to abandon theirs; ``abort(code)`` does both.
* Every pending and later operation raises :class:`ConnectionLostError` once the
  connection under the stream is gone (idle timeout, peer closed, local stop) — except
  that bytes and the end of stream which arrived before the loss are still delivered.
* After our own ``stop_sending``, ``abort`` or ``aclose``, ``receive()`` raises
  :class:`StreamClosedError` (unless the end of stream was already returned).
* ``reset`` after ``send_eof`` does nothing; a second ``send_eof`` is harmless.
* ``reset``, ``stop_sending``, ``abort`` and ``aclose`` never raise once the connection
  is lost.

Optional: a stream may also offer ways of working without a task waiting in it, which
callers look up with ``getattr`` and use where present (QUIC streams have them all):

* ``receive_nowait(max_bytes)`` returns what ``receive()`` would return at once (and
  raises as it would), or ``None`` if ``receive()`` would have to wait;
* ``send_nowait(data)`` queues all of ``data`` if ``send()`` would not wait, else
  returns False and queues nothing; an opener may offer ``open_stream_nowait()``;
* ``listen(callback)`` calls ``callback()`` whenever something arrives for the reader;
* ``watch(callback)`` reports a peer reset or a lost connection to a reader that has
  all it wants, and ``release(linger)`` hands the wait for the peer's end of stream to
  the transport;
* ``send_eof_deferred()`` half-closes with the next packet that goes out anyway.

The RPC server and the gRPC adapter use them to serve and make a unary call with no
task besides the one running it.

``quic_rpc.testing.stream_conformance`` checks all of this for any transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ByteStream",
    "ConnectionLostError",
    "PeerInfo",
    "StreamClosedError",
    "StreamError",
    "StreamHandler",
    "StreamOpener",
    "StreamResetError",
    "StreamStoppedError",
]


class StreamError(Exception):
    """Base of every error a transport stream raises."""


class StreamResetError(StreamError):
    """The peer reset its sending side of the stream (RESET_STREAM)."""

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        super().__init__(message or f"stream reset by peer with code {code:#x}")


class StreamStoppedError(StreamError):
    """The peer asked us to stop sending on the stream (STOP_SENDING)."""

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        super().__init__(message or f"peer stopped the stream with code {code:#x}")


class StreamClosedError(StreamError):
    """Local misuse: sending after ``send_eof``/``reset``, or using a closed stream."""


class ConnectionLostError(StreamError):
    """The connection under the stream is gone; ``reason`` says why."""

    def __init__(self, reason: str, *, error_code: int | None = None) -> None:
        self.reason = reason
        self.error_code = error_code
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the transport knows about the other end of a stream.

    ``remote_chain`` is the peer's certificate chain as DER, leaf first, exactly as it was
    verified; ``identity`` is whatever the transport's verify callback returned (for the
    agent: a node id). ``stats`` returns live connection statistics where the transport
    has them (QUIC: rtt, cwnd, bytes, lost packets).
    """

    transport: str
    local_host: str = ""
    local_port: int = 0
    remote_host: str = ""
    remote_port: int = 0
    remote_chain: tuple[bytes, ...] = ()
    identity: Any = None
    alpn: str | None = None
    stats: Callable[[], Mapping[str, float]] | None = field(default=None, compare=False)


@runtime_checkable
class ByteStream(Protocol):
    """One bidirectional, reliable, ordered byte stream with half-close and reset."""

    @property
    def peer_info(self) -> PeerInfo: ...

    async def receive(self, max_bytes: int = 65536) -> bytes: ...

    async def send(self, data: bytes) -> None: ...

    async def send_eof(self) -> None: ...

    def reset(self, code: int) -> None: ...

    def stop_sending(self, code: int) -> None: ...

    def abort(self, code: int) -> None: ...

    async def aclose(self) -> None:
        """Release the stream: finish sending if still open, abort receiving if unread."""
        ...


@runtime_checkable
class StreamOpener(Protocol):
    """The client side of a transport connection: opens new outgoing streams."""

    async def open_stream(self) -> ByteStream: ...


StreamHandler = Callable[[ByteStream], Awaitable[None]]
"""The server side: a transport calls this once for every stream the peer opens."""
