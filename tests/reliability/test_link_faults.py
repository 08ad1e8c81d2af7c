"""Link faults on loopback through the userspace link emulator (tests/netlab/linkemu.py),
in the style of the QUIC interop runner's cases: handshake under 30 % loss both ways,
transfers under 2 % loss and under 2 % corruption, a 5 s blackhole then recovery, and
port rebinding mid-transfer. Every transfer is sequence-numbered and verified byte for
byte, in both directions. (Network namespaces are not used here; see RELIABILITY.md.)"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from quic_rpc.quic import QUICConfig, QUICConnection, ca_verifier, connect
from quic_rpc.rpc import RPCClient, ServerCallContext, client_streaming, server_streaming
from tests.netlab.linkemu import Impairment, LinkEmulator
from tests.quic.helpers import wait_for_condition

from .conftest import Counters, QUICRig, RigFactory, assert_healthy, make_manifest

CHUNK = 16 * 1024
EmuFactory = Callable[..., Awaitable[LinkEmulator]]


def chunk(index: int) -> bytes:
    """Sequence number + content derived from it: loss, duplication, reordering and
    corruption all show up as a mismatch."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return index.to_bytes(8, "big") + (seed * (CHUNK // 32 + 1))[: CHUNK - 8]


def manifest(counters: Counters) -> dict[str, object]:
    async def blob(request: bytes, ctx: ServerCallContext) -> AsyncIterator[bytes]:
        for index in range(int(request)):
            yield chunk(index)

    async def digest(requests: AsyncIterator[bytes], ctx: ServerCallContext) -> bytes:
        h = hashlib.sha256()
        expected = 0
        async for item in requests:
            if item != chunk(expected):
                return b"mismatch at %d" % expected
            expected += 1
            h.update(item)
        return b"%d:" % expected + h.digest()

    return make_manifest(counters) | {
        "/t.S/Blob": server_streaming(blob),
        "/t.S/Digest": client_streaming(digest),
    }


@pytest.fixture
async def linkemu_factory() -> AsyncIterator[EmuFactory]:
    emus: list[LinkEmulator] = []

    async def make(target: tuple[str, int], **kwargs: object) -> LinkEmulator:
        emu = LinkEmulator(("127.0.0.1", 0), target, **kwargs)  # type: ignore[arg-type]
        await emu.start()
        emus.append(emu)
        return emu

    yield make
    for emu in emus:
        await emu.close()


async def _setup(
    quic_rig: RigFactory, linkemu_factory: EmuFactory, client_config: QUICConfig, **emu: object
) -> tuple[QUICRig, LinkEmulator, QUICConnection]:
    counters = Counters()
    rig = await quic_rig(manifest=manifest(counters))
    rig.counters = counters
    emu.setdefault("seed", 1234)
    link = await linkemu_factory(("127.0.0.1", rig.port), **emu)
    sock = await rig.new_socket()
    creds = rig.pki.credentials(ca_verifier(rig.pki.root_pem), "client")
    conn = await connect(sock, "127.0.0.1", link.listen_address[1], creds, client_config)
    return rig, link, conn


async def download(
    client: RPCClient, count: int, on_chunk: Callable[[int], object] | None = None
) -> None:
    index = 0
    async for item in client.server_streaming("/t.S/Blob", b"%d" % count, timeout=120):
        assert item == chunk(index), f"chunk {index} lost, duplicated, reordered or corrupted"
        index += 1
        result = on_chunk(index) if on_chunk is not None else None
        if asyncio.iscoroutine(result):
            await result
    assert index == count


async def upload(client: RPCClient, count: int) -> None:
    result = await client.client_streaming(
        "/t.S/Digest", (chunk(i) for i in range(count)), timeout=120
    )
    h = hashlib.sha256(b"".join(chunk(i) for i in range(count))).digest()
    assert result == b"%d:" % count + h


async def test_handshake_under_30pct_loss(
    quic_rig: RigFactory, linkemu_factory: EmuFactory
) -> None:
    lossy = Impairment(loss_pct=30)
    for attempt in range(3):
        _, link, conn = await _setup(
            quic_rig,
            linkemu_factory,
            QUICConfig(handshake_timeout=60),
            c2s=Impairment(loss_pct=30),
            s2c=lossy,
            seed=attempt,
        )
        client = RPCClient(conn)
        await assert_healthy(client, b"attempt %d" % attempt)
        await upload(client, 8)
        snap = link.snapshot()
        assert snap["c2s"]["dropped_loss"] + snap["s2c"]["dropped_loss"] > 0, snap
        conn.abort()


@pytest.mark.parametrize("fault", ["loss_pct", "corrupt_pct"])
async def test_transfer_under_2pct_loss_or_corruption(
    quic_rig: RigFactory, linkemu_factory: EmuFactory, fault: str
) -> None:
    bad = {fault: 2.0}
    rig, link, conn = await _setup(
        quic_rig, linkemu_factory, QUICConfig(), c2s=Impairment(**bad), s2c=Impairment(**bad)
    )
    client = RPCClient(conn)
    await download(client, 96)  # 1.5 MiB down
    await upload(client, 96)  # 1.5 MiB up
    snap = link.snapshot()
    key = "dropped_loss" if fault == "loss_pct" else "corrupted"
    assert snap["c2s"][key] + snap["s2c"][key] > 0, snap
    assert len(rig.server.connections) == 1  # the same connection throughout


async def test_blackhole_5s_then_recovery(
    quic_rig: RigFactory, linkemu_factory: EmuFactory
) -> None:
    rig, link, conn = await _setup(quic_rig, linkemu_factory, QUICConfig())
    client = RPCClient(conn)
    await assert_healthy(client)
    server_conn = rig.server.connections[0]

    async def blackhole_at_10(index: int) -> None:
        if index == 10:
            link.blackhole(5.0)

    await download(client, 48, blackhole_at_10)
    snap = link.snapshot()
    assert snap["s2c"]["dropped_blackhole"] + snap["c2s"]["dropped_blackhole"] > 0, snap
    await upload(client, 16)
    assert rig.server.connections == [server_conn]  # recovered, not reconnected
    assert not conn.is_closed


async def test_port_rebinding_mid_transfer(
    quic_rig: RigFactory, linkemu_factory: EmuFactory
) -> None:
    rig, link, conn = await _setup(quic_rig, linkemu_factory, QUICConfig())
    client = RPCClient(conn)
    await assert_healthy(client)
    server_conn = rig.server.connections[0]
    before = server_conn.remote_address

    async def rebind_at_20(index: int) -> None:
        if index == 20:
            await link.rebind()

    await download(client, 64, rebind_at_20)
    await upload(client, 32)
    await wait_for_condition(lambda: server_conn.remote_address != before, 10)
    assert rig.server.connections == [server_conn]
