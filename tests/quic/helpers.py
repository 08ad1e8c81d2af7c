"""Small helpers shared by the QUIC transport tests."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

from quic_rpc.quic import QUICStream
from quic_rpc.streams import ByteStream


async def echo_handler(stream: ByteStream) -> None:
    while data := await stream.receive():
        await stream.send(data)
    await stream.send_eof()


async def read_all(stream: ByteStream) -> bytes:
    parts = []
    while data := await stream.receive():
        parts.append(data)
    return b"".join(parts)


async def request(conn: object, payload: bytes) -> bytes:
    """Open a stream, send payload + EOF, return everything the peer sent back."""
    stream = await conn.open_stream()  # type: ignore[attr-defined]
    await stream.send(payload)
    await stream.send_eof()
    return await read_all(stream)


def chunk(index: int, size: int, block: bytes) -> bytes:
    """Deterministic, position-dependent data: detects loss, duplication and reordering."""
    return index.to_bytes(8, "big") + block[: size - 8]


async def hash_reader(stream: ByteStream) -> tuple[int, bytes]:
    digest = hashlib.sha256()
    total = 0
    while data := await stream.receive(1 << 20):
        digest.update(data)
        total += len(data)
    return total, digest.digest()


async def wait_for_condition(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll ``predicate`` (state owned by the transport, no event to wait on) until true."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def wait_until_stable(value: Callable[[], int], polls: int = 5, pause: float = 0.05) -> int:
    """Poll until ``value()`` stops changing for ``polls`` consecutive polls."""
    last = value()
    stable = 0
    while stable < polls:
        await asyncio.sleep(pause)
        now = value()
        stable = stable + 1 if now == last else 0
        last = now
    return last


Handler = Callable[[QUICStream], Awaitable[None]]
