"""Small UDP helpers shared by the lab tests."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

Addr = tuple[str, int]


class Collector(asyncio.DatagramProtocol):
    """Collects (data, addr) datagrams; optionally echoes each one back."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received: list[tuple[bytes, Addr]] = []
        self.arrival: list[float] = []  # loop.time() of each datagram in ``received``
        self.transport: asyncio.DatagramTransport | None = None
        self._event = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (asyncio's selector datagram transport does not subclass DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.append((data, (addr[0], addr[1])))
        self.arrival.append(asyncio.get_running_loop().time())
        self._event.set()
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass

    @property
    def address(self) -> Addr:
        assert self.transport is not None
        a = self.transport.get_extra_info("sockname")
        return (a[0], a[1])

    async def wait_for_count(self, n: int, timeout: float = 10.0) -> bool:  # noqa: ASYNC109
        """Wait until ``n`` datagrams arrived; False if that did not happen in ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.received) < n:
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            return False
        return True

    async def settle(self, quiet: float = 0.3, limit: float = 10.0) -> None:
        """Wait until nothing arrived for ``quiet`` seconds (at most ``limit``)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while loop.time() < end:
            before = len(self.received)
            await asyncio.sleep(quiet)
            if len(self.received) == before:
                return


async def udp_endpoint(
    local: Addr = ("127.0.0.1", 0), echo: bool = False, sock: socket.socket | None = None
) -> Collector:
    loop = asyncio.get_running_loop()
    if sock is not None:
        sock.setblocking(False)
        _, proto = await loop.create_datagram_endpoint(lambda: Collector(echo), sock=sock)
    else:
        _, proto = await loop.create_datagram_endpoint(lambda: Collector(echo), local_addr=local)
    return proto


def close(*cols: Collector) -> None:
    for c in cols:
        if c.transport is not None:
            c.transport.close()
