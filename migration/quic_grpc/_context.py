"""Servicer contexts: grpc's ``ServicerContext`` (sync) and ``grpc.aio.ServicerContext``.

Both share :class:`CallState`, which lives on the I/O loop side: the status the servicer
set, trailing metadata, whether initial metadata went out, termination callbacks. The sync
context runs in a pool thread and reaches the loop with blocking hand-offs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future as ConcurrentFuture
from typing import Any, NoReturn, Protocol

from quic_rpc.streams import PeerInfo

from . import _peer
from ._compat import ServicerContext as _GrpcServicerContext
from ._compat import StatusCode
from ._errors import AbortError
from ._metadata import MetadataTuple, normalize_metadata, validate_metadata
from ._status import to_status_code
from ._transport import CallCancelledError, ServerCallIO

__all__ = ["AioServicerContext", "CallState", "ServicerContext"]

_LOG = logging.getLogger("migration.quic_grpc")

Deserializer = Callable[[bytes], Any] | None


class _Cancellable(Protocol):
    def cancel(self) -> bool: ...

    def done(self) -> bool: ...


class MessageTooLargeError(Exception):
    """A message over the configured size limit; becomes RESOURCE_EXHAUSTED."""


class CallState:
    """Everything about one server-side call that outlives a single servicer method call."""

    def __init__(
        self,
        io: ServerCallIO,
        loop: asyncio.AbstractEventLoop,
        *,
        max_receive: int | None,
        max_send: int | None,
    ) -> None:
        self.io = io
        self.loop = loop
        self.info = io.info
        self.metadata = normalize_metadata(io.info.metadata)
        self.code: StatusCode | None = None
        self.details: str | None = None
        self.trailing: MetadataTuple = ()
        self.initial_sent = False
        self.terminated = False
        self.deadline_exceeded = False
        self.max_receive = max_receive
        self.max_send = max_send
        self._callbacks: list[Callable[[], None]] = []
        io.add_cancel_callback(self.terminate)

    # ---- lifecycle (loop thread)

    def terminate(self) -> None:
        """The call is over (finished, cancelled or timed out): run termination callbacks."""
        if self.terminated:
            return
        self.terminated = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _LOG.exception("RPC termination callback failed")

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self.terminated:
            return False
        self._callbacks.append(callback)
        return True

    def is_active(self) -> bool:
        return not self.terminated and not self.io.is_cancelled()

    def time_remaining(self) -> float | None:
        if self.info.deadline is None:
            return None
        return max(0.0, self.info.deadline - self.loop.time())

    # ---- status

    def set_code(self, code: Any) -> None:
        self.code = to_status_code(code)

    def set_details(self, details: Any) -> None:
        self.details = None if details is None else str(details)

    def abort(self, code: Any, details: Any) -> NoReturn:
        status = to_status_code(code)
        if status is StatusCode.OK:
            _LOG.error("abort() called with StatusCode.OK; returning UNKNOWN")
            status = StatusCode.UNKNOWN
        self.code = status
        self.details = "" if details is None else str(details)
        raise AbortError(status, self.details)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = validate_metadata(metadata)

    # ---- messages (coroutines run on the loop)

    async def read_message(self, deserializer: Deserializer) -> Any:
        """Next request, or ``_EOF`` when the client finished sending."""
        data = await self.io.read()
        if data is None:
            return EOF
        if self.max_receive is not None and len(data) > self.max_receive:
            raise MessageTooLargeError(
                f"Received message larger than max ({len(data)} vs. {self.max_receive})"
            )
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception as exc:
            raise _DeserializeError("Exception deserializing request!") from exc

    async def send_initial_metadata(self, metadata: MetadataTuple) -> None:
        if self.initial_sent:
            raise ValueError("initial metadata has already been sent")
        self.initial_sent = True
        await self.io.send_initial_metadata(metadata)

    async def write_bytes(self, data: bytes) -> None:
        if self.max_send is not None and len(data) > self.max_send:
            raise MessageTooLargeError(
                f"Sent message larger than max ({len(data)} vs. {self.max_send})"
            )
        self.initial_sent = True
        await self.io.write(data)

    # ---- peer

    @property
    def peer(self) -> PeerInfo:
        return self.info.peer


class _DeserializeError(Exception):
    """A request could not be deserialized; becomes INTERNAL."""


class _Eof:
    def __repr__(self) -> str:
        return "EOF"


EOF: Any = _Eof()
"""What ``aio`` ``context.read()`` returns after the last request (``grpc.aio.EOF``)."""


def serialize(serializer: Callable[[Any], bytes] | None, message: Any) -> bytes:
    if serializer is None:
        if not isinstance(message, bytes | bytearray | memoryview):
            raise TypeError("without a serializer, messages must be bytes")
        return bytes(message)
    return serializer(message)


class _PeerMixin:
    _state: CallState

    def invocation_metadata(self) -> MetadataTuple:
        return self._state.metadata

    def peer(self) -> str:
        return _peer.format_peer(self._state.peer)

    def peer_identities(self) -> Sequence[bytes] | None:
        return _peer.peer_identities(self._state.peer)

    def peer_identity_key(self) -> str | None:
        return _peer.peer_identity_key(self._state.peer)

    def auth_context(self) -> dict[str, list[bytes]]:
        return _peer.auth_context(self._state.peer)

    def peer_info(self) -> PeerInfo:
        """quicshift extension: the transport's full peer description (chain, identity)."""
        return self._state.peer

    def set_code(self, code: Any) -> None:
        self._state.set_code(code)

    def set_details(self, details: Any) -> None:
        self._state.set_details(details)

    def code(self) -> StatusCode | None:
        return self._state.code

    def details(self) -> str | None:
        return self._state.details

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._state.set_trailing_metadata(trailing_metadata)

    def trailing_metadata(self) -> MetadataTuple:
        return self._state.trailing

    def time_remaining(self) -> float | None:
        return self._state.time_remaining()

    def set_compression(self, compression: Any) -> None:
        """Accepted for compatibility; QUIC calls are not compressed."""

    def disable_next_message_compression(self) -> None:
        """Accepted for compatibility; QUIC calls are not compressed."""


class ServicerContext(_PeerMixin, _GrpcServicerContext):
    """The sync servicer context (``grpc.ServicerContext``); used from a pool thread."""

    def __init__(self, state: CallState) -> None:
        self._state = state

    def _blocking(self, coro: Any) -> Any:
        future: ConcurrentFuture[Any] = asyncio.run_coroutine_threadsafe(coro, self._state.loop)
        return future.result()

    def _on_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()

        return self._blocking(call())

    def is_active(self) -> bool:
        return self._state.is_active()

    def cancel(self) -> None:
        self._blocking(self._cancel())

    async def _cancel(self) -> None:
        from ._transport import CallStatus

        await self._state.io.finish(CallStatus(StatusCode.CANCELLED.value[0], "Cancelled"))
        self._state.terminate()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        result: bool = self._on_loop(lambda: self._state.add_callback(callback))
        return result

    def send_initial_metadata(self, initial_metadata: Any) -> None:
        metadata = validate_metadata(initial_metadata)
        try:
            self._blocking(self._state.send_initial_metadata(metadata))
        except CallCancelledError:
            pass

    def abort(self, code: Any, details: Any) -> NoReturn:
        self._state.abort(code, details)

    def abort_with_status(self, status: Any) -> NoReturn:
        self._state.set_trailing_metadata(getattr(status, "trailing_metadata", None) or ())
        self._state.abort(status.code, status.details)

    # request iteration for request-streaming methods
    def _requests(self, deserializer: Deserializer) -> Iterator[Any]:
        while True:
            message = self._blocking(self._state.read_message(deserializer))
            if message is EOF:
                return
            yield message


class _AioRequestIterator:
    def __init__(self, context: AioServicerContext) -> None:
        self._context = context

    def __aiter__(self) -> _AioRequestIterator:
        return self

    async def __anext__(self) -> Any:
        message = await self._context.read()
        if message is EOF:
            raise StopAsyncIteration
        return message


class AioServicerContext(_PeerMixin):
    """The ``grpc.aio.ServicerContext`` of one call, used on the I/O loop."""

    def __init__(
        self,
        state: CallState,
        request_deserializer: Deserializer,
        response_serializer: Callable[[Any], bytes] | None,
    ) -> None:
        self._state = state
        self._deserializer = request_deserializer
        self._serializer = response_serializer
        self._done_callbacks: list[Callable[[Any], None]] = []
        self._task: _Cancellable | None = None
        """The servicer's run (set by the dispatcher)."""
        self._cancelled = False
        state.add_callback(self._run_done_callbacks)

    def _run_done_callbacks(self) -> None:
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                _LOG.exception("RPC done callback failed")

    async def read(self) -> Any:
        return await self._state.read_message(self._deserializer)

    def request_iterator(self) -> AsyncIterator[Any]:
        return _AioRequestIterator(self)

    async def write(self, message: Any) -> None:
        await self._state.write_bytes(self._serialize(message))

    def _serialize(self, message: Any) -> bytes:
        try:
            return serialize(self._serializer, message)
        except Exception as exc:
            raise _SerializeError("Failed to serialize response!") from exc

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        await self._state.send_initial_metadata(validate_metadata(initial_metadata))

    async def abort(
        self, code: Any, details: str = "", trailing_metadata: Iterable[Any] = ()
    ) -> NoReturn:
        if trailing_metadata:
            self._state.set_trailing_metadata(trailing_metadata)
        self._state.abort(code, details)

    def is_active(self) -> bool:
        return self._state.is_active()

    def cancel(self) -> bool:
        if self._task is None or self._task.done():
            return False
        self._cancelled = True
        self._task.cancel()
        return True

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._state.add_callback(callback)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._state.terminated:
            callback(self)
        else:
            self._done_callbacks.append(callback)

    def cancelled(self) -> bool:
        return self._cancelled or self._state.io.is_cancelled()

    def done(self) -> bool:
        return self._state.terminated


class _SerializeError(Exception):
    """A response could not be serialized; becomes INTERNAL."""


SerializeError = _SerializeError
DeserializeError = _DeserializeError
