"""Fixtures for the QUIC transport tests: test PKI, sockets, and a leak check."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from quic_rpc.quic import QUICSocket, TLSCredentials, ca_verifier

from .certs import PKI


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


@pytest.fixture(autouse=True)
async def no_leaks() -> AsyncIterator[None]:
    """Every test must leave no task, timer or file descriptor behind."""
    before = open_fds()
    yield
    current = asyncio.current_task()
    for _ in range(20):
        leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not leftover:
            break
        await asyncio.sleep(0.01)
    assert not leftover, f"leaked tasks: {leftover}"
    loop = asyncio.get_running_loop()
    scheduled = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]
    assert not scheduled, f"leaked timers: {scheduled}"
    assert open_fds() <= before, "leaked file descriptors"


@pytest.fixture(scope="session")
def pki() -> PKI:
    return PKI("p256")


@pytest.fixture(scope="session")
def pki_ed() -> PKI:
    return PKI("ed25519")


@pytest.fixture
def server_creds(pki: PKI) -> TLSCredentials:
    return pki.credentials(ca_verifier(pki.root_pem), "server")


@pytest.fixture
def client_creds(pki: PKI) -> TLSCredentials:
    return pki.credentials(ca_verifier(pki.root_pem), "client")


SocketFactory = Callable[..., Awaitable[QUICSocket]]


@pytest.fixture
async def make_socket() -> AsyncIterator[SocketFactory]:
    sockets: list[QUICSocket] = []

    async def factory(host: str = "127.0.0.1", port: int = 0, **kwargs: object) -> QUICSocket:
        sock = await QUICSocket.bind(host, port, **kwargs)  # type: ignore[arg-type]
        sockets.append(sock)
        return sock

    yield factory
    for sock in sockets:
        await sock.close()
