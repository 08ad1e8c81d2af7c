"""The byte stream a raw handler gets: the call's stream after its header."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..streams import ByteStream, PeerInfo, StreamError, StreamResetError

__all__ = ["RawStream"]


class RawStream:
    """Bytes in both directions after the request header.

    The first ``send`` (or ``send_eof``) accepts the call (the server sends its response
    header first). The call ends OK when the handler returns; the client sees our
    half-close. Raising from the handler resets the stream with the status's reset code.
    """

    __slots__ = ("_accept", "_leftover", "_on_reset", "_stream")

    def __init__(
        self,
        stream: ByteStream,
        leftover: list[bytes],
        accept: Callable[[], Awaitable[None]],
        on_reset: Callable[[BaseException], None],
    ) -> None:
        self._stream = stream
        self._leftover = leftover
        self._accept = accept
        self._on_reset = on_reset

    @property
    def peer_info(self) -> PeerInfo:
        return self._stream.peer_info

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """At least one byte, or ``b""`` once the client half-closed."""
        if self._leftover:
            data = self._leftover.pop(0)
            if len(data) > max_bytes:
                self._leftover.insert(0, data[max_bytes:])
                data = data[:max_bytes]
            return data
        try:
            return await self._stream.receive(max_bytes)
        except StreamResetError as exc:
            self._on_reset(exc)
            raise

    async def send(self, data: bytes) -> None:
        await self._accept()
        if data:
            await self._stream.send(data)

    async def send_eof(self) -> None:
        await self._accept()
        await self._stream.send_eof()

    def reset(self, code: int) -> None:
        """Abandon the response (the caller sees the status ``code`` carries)."""
        self._stream.reset(code)

    def stop_sending(self, code: int) -> None:
        self._stream.stop_sending(code)

    def abort(self, code: int) -> None:
        self._stream.abort(code)

    async def aclose(self) -> None:
        """Half-close our side; the server releases the stream when the handler returns."""
        try:
            await self.send_eof()
        except StreamError:
            pass
