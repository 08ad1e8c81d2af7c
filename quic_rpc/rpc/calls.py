"""The client call objects, one per kind (grpc.aio-like shapes)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterable, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from ..streams import (
    PeerInfo,
    StreamError,
    StreamStoppedError,
)
from .call_base import ClientCall, _Channel
from .errors import LocalProtocolError, RemoteProtocolError, RPCError
from .events import RawDataReceived, ResponseHeaderReceived, TrailerReceived
from .frames import CallKind
from .metadata import Metadata
from .status import ResetCode, Status, status_for_reset_code

if TYPE_CHECKING:
    from .client import RPCClient

__all__ = [
    "ClientStreamingCall",
    "DuplexCall",
    "RawCall",
    "ServerStreamingCall",
    "UnaryCall",
]

_log = logging.getLogger("quic_rpc.rpc.client")

Resp = TypeVar("Resp")


class UnaryCall(ClientCall[Resp]):
    """A unary call: ``await call`` gives the response."""

    def __init__(self, client: RPCClient, method: str, request: Any, **kwargs: Any) -> None:
        super().__init__(client, method, CallKind.UNARY, **kwargs)
        self._request = request
        self._response: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        self._inline = False

    def _deliver(self, data: bytes) -> None:
        self._response = data

    async def _run(self) -> None:
        try:
            first = self._first_frames(self._to_bytes(self._request))
        except Exception as exc:
            self._fail(exc)
            return
        self._request = None
        await self._ensure_started(first)
        if self._stream is not None and self._final is None:
            await self._drive(self._deliver)
        elif self._final is not None:
            await self._close_stream()

    def _ensure_driven(self) -> None:
        if self._task is None and not self._inline:
            self._task = self._spawn(self._run)

    async def _result(self) -> Resp:
        if self._task is None and not self._inline:
            self._inline = True
            await self._run()
        elif self._final is None:
            await self._wait_final()
        assert self._final is not None
        if self._final[0] is not Status.OK:
            raise self._final_error()
        if self._response is None:
            raise RPCError(Status.INTERNAL, "the server sent no response message")
        result: Resp = self._decode(self._response)
        return result

    def __await__(self) -> Generator[Any, None, Resp]:
        return self._result().__await__()


class _StreamingResponse(ClientCall[Resp]):
    """Response side of server-streaming and duplex calls: async iteration."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel = _Channel(self._client.config.response_buffer_size)
        self._reader: asyncio.Task[None] | None = None

    def _start_reader(self) -> None:
        if self._reader is None and self._stream is not None:
            self._reader = self._spawn(self._read_responses)

    async def _read_responses(self) -> None:
        try:
            await self._drive(self._channel.put)
        finally:
            self._channel.close()

    def _on_final(self) -> None:
        # Messages that arrived before the server's trailer are still delivered; a local
        # cancel or deadline drops what was not read yet.
        self._channel.close(drop=self._terminated_locally)

    def __aiter__(self) -> _StreamingResponse[Resp]:
        return self

    async def __anext__(self) -> Resp:
        await self._ensure_started()
        self._start_reader()
        data = await self._channel.get()
        if data is None:
            await self._wait_final()
            assert self._final is not None
            if self._final[0] is Status.OK:
                raise StopAsyncIteration
            raise self._final_error()
        try:
            message: Resp = self._decode(data)
        except Exception as exc:
            self._fail(exc)
            raise self._final_error() from exc
        return message

    async def read(self) -> Resp | None:
        """The next response, or None at the end of the stream."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return None


class ServerStreamingCall(_StreamingResponse[Resp]):
    """A server-streaming call: ``async for response in call``."""

    def __init__(self, client: RPCClient, method: str, request: Any, **kwargs: Any) -> None:
        super().__init__(client, method, CallKind.SERVER_STREAMING, **kwargs)
        self._request = request

    async def _ensure_started(self, first: Callable[[], bytes] | None = None) -> None:
        if self._start_fut is None:
            try:
                first = self._first_frames(self._to_bytes(self._request))
            except Exception as exc:
                self._fail(exc)
                raise self._final_error() from exc
            self._request = None
        await super()._ensure_started(first)
        self._start_reader()

    def _ensure_driven(self) -> None:
        if self._reader is None:
            self._spawn(self._ensure_started)


class _RequestWriter:
    """write()/done_writing() for client-streaming and duplex calls."""

    _done_writing: bool
    _writer: asyncio.Task[None] | None

    async def _write(self, call: ClientCall[Any], message: Any) -> None:
        await call._ensure_started()
        if call._final is not None:
            raise self._ended_error(call)
        if self._done_writing:
            raise LocalProtocolError("write() after done_writing()")
        try:
            frame = call._encode(message)
        except Exception as exc:
            call._fail(exc)
            raise call._final_error() from exc
        await self._send(call, frame)

    async def _done(self, call: ClientCall[Any]) -> None:
        await call._ensure_started()
        if self._done_writing or call._final is not None:
            return
        self._done_writing = True
        await self._send(call, call._proto.send_request_end())

    async def _send(self, call: ClientCall[Any], frame: bytes) -> None:
        stream = call._stream
        assert stream is not None
        try:
            await call._io(stream.send(frame))
        except StreamStoppedError:
            await call._wait_final()
            raise self._ended_error(call) from None
        except (StreamError, OSError) as exc:
            call._fail(exc)
            raise call._final_error() from exc

    @staticmethod
    def _ended_error(call: ClientCall[Any]) -> BaseException:
        assert call._final is not None
        if call._final[0] is Status.OK and not call._user_cancelled:
            return LocalProtocolError("the call has already ended")
        return call._final_error()

    async def _write_all(
        self, call: ClientCall[Any], requests: AsyncIterable[Any] | Iterable[Any]
    ) -> None:
        try:
            if isinstance(requests, AsyncIterable):
                async for message in requests:
                    await self._write(call, message)
            else:
                for message in requests:
                    await self._write(call, message)
            await self._done(call)
        except (RPCError, LocalProtocolError, asyncio.CancelledError):
            pass
        except Exception as exc:
            _log.warning("request iterator of %s raised %r", call.method, exc)
            call._terminate(
                Status.CANCELLED, f"request iterator raised {type(exc).__name__}", ResetCode.CANCEL
            )


class ClientStreamingCall(ClientCall[Resp], _RequestWriter):
    """A client-streaming call: ``write``/``done_writing`` (or pass ``requests``), then
    ``await call`` gives the response."""

    def __init__(
        self,
        client: RPCClient,
        method: str,
        requests: AsyncIterable[Any] | Iterable[Any] | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(client, method, CallKind.CLIENT_STREAMING, **kwargs)
        self._done_writing = False
        self._writer = None
        self._requests = requests
        self._response: bytes | None = None
        self._reader: asyncio.Task[None] | None = None

    def _deliver(self, data: bytes) -> None:
        self._response = data

    async def _begin(self) -> None:
        await self._ensure_started()
        if self._reader is None and self._stream is not None:
            self._reader = self._spawn(functools.partial(self._drive, self._deliver))
        if self._requests is not None and self._writer is None:
            requests, self._requests = self._requests, None
            self._writer = self._spawn(functools.partial(self._write_all, self, requests))

    def _ensure_driven(self) -> None:
        if self._reader is None:
            self._spawn(self._begin)

    async def write(self, message: Any) -> None:
        await self._begin()
        await self._write(self, message)

    async def done_writing(self) -> None:
        await self._begin()
        await self._done(self)

    async def _result(self) -> Resp:
        await self._begin()
        await self._wait_final()
        assert self._final is not None
        if self._final[0] is not Status.OK:
            raise self._final_error()
        if self._response is None:
            raise RPCError(Status.INTERNAL, "the server sent no response message")
        result: Resp = self._decode(self._response)
        return result

    def __await__(self) -> Generator[Any, None, Resp]:
        return self._result().__await__()


class DuplexCall(_StreamingResponse[Resp], _RequestWriter):
    """A duplex call: ``write``/``done_writing`` (or pass ``requests``) and
    ``async for response in call``, concurrently."""

    def __init__(
        self,
        client: RPCClient,
        method: str,
        requests: AsyncIterable[Any] | Iterable[Any] | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(client, method, CallKind.DUPLEX, **kwargs)
        self._done_writing = False
        self._writer = None
        self._requests = requests

    async def _ensure_started(self, first: Callable[[], bytes] | None = None) -> None:
        await super()._ensure_started(first)
        self._start_reader()
        if self._requests is not None and self._writer is None:
            requests, self._requests = self._requests, None
            self._writer = self._spawn(functools.partial(self._write_all, self, requests))

    def _ensure_driven(self) -> None:
        if self._reader is None:
            self._spawn(self._ensure_started)

    async def write(self, message: Any) -> None:
        await self._write(self, message)

    async def done_writing(self) -> None:
        await self._done(self)


class RawCall(ClientCall[bytes]):
    """A raw call: after the header the stream carries raw bytes both ways.

    ``receive()`` first waits for the server to accept the call (raising RPCError if it
    rejected it); ``b""`` means the server half-closed, which ends the call OK. A reset
    by the server ends it with the status its code carries. Use as an async context
    manager, or call ``aclose()``.
    """

    def __init__(self, client: RPCClient, method: str, **kwargs: Any) -> None:
        super().__init__(client, method, CallKind.RAW, **kwargs)
        self._accepted = False
        self._leftover: list[bytes] = []

    async def __aenter__(self) -> RawCall:
        await self._ensure_started()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and self._final is None:
            self.cancel()
        await self.aclose()

    async def send(self, data: bytes) -> None:
        await self._ensure_started()
        if self._final is not None:
            raise _RequestWriter._ended_error(self)
        if not data:
            return
        stream = self._stream
        assert stream is not None
        try:
            await self._io(stream.send(data))
        except StreamStoppedError:
            await self._await_accept()
            raise RPCError(Status.CANCELLED, "the server stopped reading") from None

    async def send_eof(self) -> None:
        await self._ensure_started()
        if self._final is not None:
            return
        stream = self._stream
        assert stream is not None
        await self._io(stream.send_eof())

    async def _await_accept(self) -> None:
        stream = self._stream
        assert stream is not None
        proto = self._proto
        while not self._accepted and self._final is None:
            try:
                data = await self._io(stream.receive(self._client.config.receive_chunk_size))
                if not data:
                    proto.receive_eof()
                    raise RemoteProtocolError("the stream ended before the call was accepted")
                self._received = True
                for event in proto.receive_data(data):
                    if isinstance(event, ResponseHeaderReceived):
                        self._accepted = True
                        self._set_initial(event.metadata)
                    elif isinstance(event, TrailerReceived):
                        self._on_trailer(event)
                    elif isinstance(event, RawDataReceived):
                        self._leftover.append(event.data)
            except (RPCError, asyncio.CancelledError):
                raise
            except Exception as exc:
                self._fail(exc)
        if not self._accepted:
            assert self._final is not None
            raise self._final_error()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await self._ensure_started()
        await self._await_accept()
        if self._leftover:
            data = self._leftover.pop(0)
            if len(data) > max_bytes:
                self._leftover.insert(0, data[max_bytes:])
                data = data[:max_bytes]
            return data
        if self._final is not None:
            if self._final[0] is Status.OK:
                return b""
            raise self._final_error()
        stream = self._stream
        assert stream is not None
        try:
            data = await self._io(stream.receive(max_bytes))
        except (RPCError, asyncio.CancelledError):
            raise
        except Exception as exc:
            self._fail(exc)
            raise self._final_error() from exc
        if not data:
            self._set_final(Status.OK, "", Metadata(), None)
        return data

    def _ensure_driven(self) -> None:
        pass

    async def aclose(self) -> None:
        """Release the call. Closing before the server's end of data abandons the call
        (it ends CANCELLED and the stream is reset)."""
        if self._final is None:
            self._terminate(Status.CANCELLED, "closed before the call ended", ResetCode.CANCEL)
        await self._close_stream()

    @property
    def peer_info(self) -> PeerInfo:
        """The transport's view of the server (a placeholder until the call started)."""
        return self.context.peer_info or PeerInfo(transport="")

    def reset(self, code: int) -> None:
        """Abandon our sending side with ``code``; the call ends with its status."""
        self._terminate(status_for_reset_code(code), f"reset locally ({code:#x})", code)

    def stop_sending(self, code: int) -> None:
        """Ask the server to stop sending; the call ends with the status of ``code``."""
        self._terminate(status_for_reset_code(code), f"stopped locally ({code:#x})", code)

    def abort(self, code: int) -> None:
        self._terminate(status_for_reset_code(code), f"aborted locally ({code:#x})", code)
