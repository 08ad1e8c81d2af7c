"""The conformance suite itself: it must catch transports that break the contract."""

from __future__ import annotations

import pytest

from quic_rpc.streams import ByteStream, PeerInfo, StreamResetError, StreamStoppedError
from quic_rpc.testing import ConformanceError, ConformanceOptions, iter_checks, run_all
from quic_rpc.testing.stream_conformance import (
    Check,
    Cleanup,
    PairFactory,
    check_backpressure,
    check_integrity_a_to_b,
    check_receive_after_eof_forever,
    check_reset,
    check_send_after_eof,
    check_stop_sending,
)
from quic_rpc.transports.memory import MemoryStream, memory_stream_pair

pytestmark = pytest.mark.timeout(60)

OPTIONS = ConformanceOptions(max_buffered=65536)


class Mutant:
    """A MemoryStream with one deliberate bug (subclasses override one method)."""

    def __init__(self, inner: MemoryStream) -> None:
        self.inner = inner
        self.eof_sent = False

    @property
    def peer_info(self) -> PeerInfo:
        return self.inner.peer_info

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.receive(max_bytes)

    async def send(self, data: bytes) -> None:
        await self.inner.send(data)

    async def send_eof(self) -> None:
        self.eof_sent = True
        await self.inner.send_eof()

    def reset(self, code: int) -> None:
        self.inner.reset(code)

    def stop_sending(self, code: int) -> None:
        self.inner.stop_sending(code)

    def abort(self, code: int) -> None:
        self.inner.abort(code)

    async def aclose(self) -> None:
        await self.inner.aclose()


class WrongResetCode(Mutant):
    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self.inner.receive(max_bytes)
        except StreamResetError as exc:
            raise StreamResetError(exc.code ^ 1) from None


class ResetLooksLikeEof(Mutant):
    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self.inner.receive(max_bytes)
        except StreamResetError:
            return b""


class SendAfterEofIgnored(Mutant):
    async def send(self, data: bytes) -> None:
        if not self.eof_sent:
            await self.inner.send(data)


class StopCodeLost(Mutant):
    async def send(self, data: bytes) -> None:
        try:
            await self.inner.send(data)
        except StreamStoppedError:
            raise StreamStoppedError(0) from None


class FlipsBytes(Mutant):
    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.inner.receive(max_bytes)
        return data[::-1]


class EofOnlyOnce(Mutant):
    seen_eof = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.seen_eof:
            raise RuntimeError("already at EOF")
        data = await self.inner.receive(max_bytes)
        self.seen_eof = data == b""
        return data


def mutant_factory(kind: type[Mutant], buffer_size: int = 65536) -> PairFactory:
    async def make_pair() -> tuple[ByteStream, ByteStream, Cleanup]:
        a, b = memory_stream_pair(buffer_size=buffer_size)

        async def cleanup() -> None:
            a.close_connection()

        return kind(a), kind(b), cleanup

    return make_pair


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        (WrongResetCode, check_reset),
        (ResetLooksLikeEof, check_reset),
        (SendAfterEofIgnored, check_send_after_eof),
        (StopCodeLost, check_stop_sending),
        (FlipsBytes, check_integrity_a_to_b),
        (EofOnlyOnce, check_receive_after_eof_forever),
    ],
)
async def test_suite_catches_a_broken_transport(kind: type[Mutant], check: Check) -> None:
    await check(mutant_factory(Mutant), OPTIONS)  # the unbroken wrapper passes
    with pytest.raises(ConformanceError):
        await check(mutant_factory(kind), OPTIONS)


async def test_suite_catches_missing_backpressure() -> None:
    unbounded = mutant_factory(Mutant, buffer_size=1 << 30)
    with pytest.raises(ConformanceError, match="no backpressure"):
        await check_backpressure(unbounded, OPTIONS)


async def test_run_all_and_names() -> None:
    names = [name for name, _ in iter_checks()]
    assert len(names) == len(set(names)) >= 20
    assert "backpressure" in names and "connection_lost" in names
    await run_all(mutant_factory(Mutant), OPTIONS)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        ConformanceOptions(max_buffered=0)
