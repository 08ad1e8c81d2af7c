"""Copy bytes both ways between two stream pairs until either side ends."""

from __future__ import annotations

import asyncio
import contextlib

from legacy_grpc.tls import close_writer

__all__ = ["splice"]

_CHUNK = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                return
            writer.write(data)
            await writer.drain()


async def splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    """Splice ``a`` and ``b``; when one direction ends (or fails) both are closed.

    HTTP/2 has no use for half-closed connections, and TLS transports cannot half-close.
    Cancelling this closes both sides too.
    """
    tasks = [
        asyncio.create_task(_pump(a_reader, b_writer)),
        asyncio.create_task(_pump(b_reader, a_writer)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(close_writer(a_writer), close_writer(b_writer))
