"""One client call on the event loop: the engine under both the aio and the sync channel.

It opens the transport call, sends requests (one, an iterator, or ``write()`` calls),
reads and deserializes responses, enforces the deadline and the receive size limit, and
settles the final status exactly once: from the trailer, from a local cancel or deadline,
or from a transport failure (UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any

from ._compat import StatusCode
from ._metadata import MetadataTuple, normalize_metadata
from ._status import code_from_number, code_number
from ._transport import CallStatus, ClientCallIO, ClientTransport

__all__ = ["EOF", "CallCore", "CallEnded"]

_LOG = logging.getLogger("migration.quic_grpc")


RECONNECT_BACKOFF = 0.1
MAX_RECONNECT_BACKOFF = 2.0
"""Seconds between connection attempts of a ``wait_for_ready`` call (doubling)."""


class _Eof:
    def __repr__(self) -> str:
        return "<grpc.aio.EOF>"


EOF: Any = _Eof()


class CallEnded(Exception):
    """The call ended with a non-OK status (raised inside the core; wrapped by callers)."""

    def __init__(self, status: CallStatus) -> None:
        super().__init__(status.details)
        self.status = status


class CallCore:
    """Drives one call over a :class:`ClientTransport`; all methods run on one loop."""

    def __init__(
        self,
        transport: ClientTransport,
        method: str,
        metadata: MetadataTuple,
        timeout: float | None,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
        *,
        streaming: tuple[bool, bool],
        max_receive: int | None,
        max_send: int | None,
        wait_for_ready: bool = False,
        defer_open: bool = False,
    ) -> None:
        """``defer_open``: the call opens in :meth:`send_unary` (which must follow at
        once), so that a unary request can go out with the opening without a task."""
        self._streaming = streaming
        self._wait_for_ready = wait_for_ready
        self.loop = asyncio.get_running_loop()
        self.method = method
        self._serializer = request_serializer
        self._deserializer = response_deserializer
        self._max_receive = max_receive
        self._max_send = max_send
        self.deadline = None if timeout is None else self.loop.time() + max(0.0, timeout)
        self._io: ClientCallIO | None = None
        self._local: CallStatus | None = None
        self.status: CallStatus | None = None
        self._initial: MetadataTuple | None = None
        self._done_callbacks: list[Callable[[], None]] = []
        self._sender: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._settled = asyncio.Event()
        self._first: bytes | None = None
        self.cancelled_locally = False
        self._transport = transport
        self._metadata = metadata
        self._open_task: asyncio.Task[ClientCallIO] | None = None
        if self.deadline is not None:
            self._timer = self.loop.call_at(self.deadline, self._on_deadline)
        if not defer_open:
            self._start_open()

    def _start_open(self) -> None:
        self._open_task = self.loop.create_task(self._open(self._transport, self._metadata))
        self._open_task.add_done_callback(_retrieve)

    def _open_nowait(self, first: bytes) -> bool:
        """Open with ``first`` as the only request, without waiting; False if that
        would have to wait (then nothing was opened)."""
        opener = getattr(self._transport, "open_call_nowait", None)
        if opener is None or self._wait_for_ready:
            return False
        io: ClientCallIO | None = opener(
            self.method, self._metadata, self.deadline, self._streaming, first
        )
        if io is None:
            return False
        self._io = io
        return True

    # ---- opening

    async def _open(self, transport: ClientTransport, metadata: MetadataTuple) -> ClientCallIO:
        backoff = RECONNECT_BACKOFF
        while True:
            try:
                io = await transport.open_call(
                    self.method, metadata, self.deadline, self._streaming
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._wait_for_ready:
                    # grpc's wait_for_ready: keep trying to connect until the deadline
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_RECONNECT_BACKOFF)
                    continue
                self._end_locally(CallStatus(code_number(StatusCode.UNAVAILABLE), _describe(exc)))
                raise
        self._io = io
        if self._local is not None:
            io.cancel()
        elif self._first is not None:
            data, self._first = self._first, None
            with contextlib.suppress(Exception):
                await io.write(data, last=True)
        return io

    async def _get_io(self) -> ClientCallIO | None:
        if self._io is not None:
            return self._io
        if self._open_task is None:
            return None  # never opened: ended before its request went out
        try:
            return await asyncio.shield(self._open_task)
        except Exception:
            return None
        except asyncio.CancelledError:
            if self._local is not None:
                return None
            raise

    # ---- local endings

    def _end_locally(self, status: CallStatus) -> None:
        if self._local is not None or self.status is not None:
            return
        self._local = status
        if self._io is not None:
            self._io.cancel()
        elif self._open_task is not None and not self._open_task.done():
            self._open_task.cancel()
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
        self._settle(status)

    def _on_deadline(self) -> None:
        self._end_locally(
            CallStatus(code_number(StatusCode.DEADLINE_EXCEEDED), "Deadline Exceeded")
        )

    def cancel(self) -> bool:
        """Cancel the call locally (CANCELLED); False if it had already ended."""
        if self.status is not None:
            return False
        self.cancelled_locally = True
        self._end_locally(
            CallStatus(code_number(StatusCode.CANCELLED), "Locally cancelled by application!")
        )
        return True

    def _settle(self, status: CallStatus) -> None:
        if self.status is not None:
            return
        self.status = status
        if self._timer is not None:
            self._timer.cancel()
        self._settled.set()
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _LOG.exception("call done callback failed")

    def add_done_callback(self, callback: Callable[[], None]) -> bool:
        if self.status is not None:
            return False
        self._done_callbacks.append(callback)
        return True

    # ---- sending

    def _serialize(self, message: Any) -> bytes:
        try:
            if self._serializer is None:
                if not isinstance(message, bytes | bytearray | memoryview):
                    raise TypeError("without a request_serializer, requests must be bytes")
                data = bytes(message)
            else:
                data = self._serializer(message)
        except Exception as exc:
            self._end_locally(
                CallStatus(code_number(StatusCode.INTERNAL), "Exception serializing request!")
            )
            raise CallEnded(self._final()) from exc
        if self._max_send is not None and len(data) > self._max_send:
            self._end_locally(
                CallStatus(
                    code_number(StatusCode.RESOURCE_EXHAUSTED),
                    f"Sent message larger than max ({len(data)} vs. {self._max_send})",
                )
            )
            raise CallEnded(self._final())
        return data

    def _final(self) -> CallStatus:
        assert self.status is not None
        return self.status

    async def write(self, message: Any) -> None:
        """Send one request; raises CallEnded if the call is over."""
        data = self._serialize(message)
        io = await self._get_io()
        if io is None or self.status is not None:
            raise CallEnded(await self.wait_status())
        try:
            await io.write(data)
        except Exception:
            raise CallEnded(await self.wait_status()) from None

    async def done_writing(self) -> None:
        io = await self._get_io()
        if io is None or self.status is not None:
            return
        with contextlib.suppress(Exception):
            await io.done_writing()

    def send_unary(self, request: Any) -> None:
        """Send the one request of a unary-request call and half-close.

        Called right after construction, the request goes out with the call's opening
        (header, message and end of requests in one packet); otherwise from a task."""
        data = self._serialize(request)
        if self._io is None and self._open_task is None:  # deferred opening
            if self.status is not None or self._open_nowait(data):
                return
            self._first = data
            self._start_open()
            return
        if self._io is None and self._open_task is not None and not self._open_task.done():
            self._first = data
            return

        async def send() -> None:
            io = await self._get_io()
            if io is None:
                return
            with contextlib.suppress(Exception):
                await io.write(data, last=True)

        self._sender = self.loop.create_task(send())

    def send_async_iterator(self, requests: AsyncIterable[Any] | Iterable[Any]) -> None:
        """Consume a request iterator (async or plain) in a task, then half-close."""

        async def send() -> None:
            try:
                if hasattr(requests, "__aiter__"):
                    async for request in requests:
                        await self.write(request)
                else:
                    for request in requests:
                        await self.write(request)
                await self.done_writing()
            except CallEnded:
                pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _LOG.exception("request iterator raised")
                self._end_locally(
                    CallStatus(
                        code_number(StatusCode.UNKNOWN),
                        f"Exception iterating requests: {exc}",
                    )
                )

        self._sender = self.loop.create_task(send())

    # ---- receiving

    async def read(self) -> Any:
        """The next response, or EOF when the server finished with OK; raises CallEnded."""
        if self.status is not None:
            if self.status.code == 0:
                return EOF
            raise CallEnded(self.status)
        io = await self._get_io()
        if io is None:
            raise CallEnded(await self.wait_status())
        try:
            data = await io.read()
        except Exception:
            data = None
        if self.status is not None and self._local is not None:
            raise CallEnded(self.status)
        if data is None:
            status = await self.wait_status()
            if status.code == 0:
                return EOF
            raise CallEnded(status)
        if self._max_receive is not None and len(data) > self._max_receive:
            self._end_locally(
                CallStatus(
                    code_number(StatusCode.RESOURCE_EXHAUSTED),
                    f"Received message larger than max ({len(data)} vs. {self._max_receive})",
                )
            )
            raise CallEnded(self._final())
        if self._deserializer is None:
            return data
        try:
            return self._deserializer(data)
        except Exception:
            self._end_locally(
                CallStatus(code_number(StatusCode.INTERNAL), "Exception deserializing response!")
            )
            raise CallEnded(self._final()) from None

    async def initial_metadata(self) -> MetadataTuple:
        if self._initial is None:
            io = await self._get_io()
            if io is None:
                return ()
            # the transport resolves initial metadata on the first response, the trailer
            # or a cancel (which every local ending does)
            try:
                self._initial = normalize_metadata(await io.initial_metadata())
            except Exception:
                return ()
        return self._initial

    async def wait_status(self) -> CallStatus:
        """The final status (waiting for the trailer if needed)."""
        if self.status is not None:
            return self.status
        io = await self._get_io()
        if io is not None and self.status is None:
            # the transport settles its status on the trailer, a failure or a cancel
            # (which every local ending does), so this wait always ends
            try:
                status = await io.status()
            except Exception as exc:
                status = CallStatus(code_number(StatusCode.UNAVAILABLE), _describe(exc))
            if self.status is None:
                self._settle(
                    CallStatus(
                        status.code, status.details, normalize_metadata(status.trailing_metadata)
                    )
                )
        await self._settled.wait()
        return self._final()

    def done(self) -> bool:
        return self.status is not None

    @property
    def initial(self) -> MetadataTuple | None:
        """Initial metadata if it has been received already."""
        return self._initial

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.loop.time())

    def code(self) -> StatusCode | None:
        return None if self.status is None else code_from_number(self.status.code)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a task's exception as seen (the status already carries it)."""
    if not task.cancelled():
        task.exception()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"failed to connect to all addresses; last error: {text}"
