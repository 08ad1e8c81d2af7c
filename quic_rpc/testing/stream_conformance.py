"""A conformance suite every :class:`~quic_rpc.streams.ByteStream` transport must pass.

In the spirit of trio's ``check_two_way_stream``: the suite is a set of plain async
check functions, each taking a *pair factory*::

    async def make_pair() -> tuple[ByteStream, ByteStream, Cleanup]:
        ...

``make_pair`` returns two connected, already established stream ends ``(a, b)`` (``a``
opened the stream, ``b`` is the end the peer accepted; a transport that only announces
a stream on its first bytes may send and consume a preamble inside the factory) and a
``cleanup`` coroutine function that tears down the connection(s) under both ends.
``cleanup`` must be idempotent: the suite calls it once to check connection loss (after
it, pending and later operations on both ends raise
:class:`~quic_rpc.streams.ConnectionLostError`) and again when the check finishes.

Use it from pytest like this::

    @pytest.mark.parametrize(("name", "check"), list(iter_checks()))
    async def test_conformance(name, check):
        await check(make_pair)

or run everything at once with :func:`run_all`. Each check raises
:class:`ConformanceError` (an ``AssertionError``) with a message saying what the
transport got wrong. Checks never measure time; bounded waits only turn a hang into a
readable failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from quic_rpc.streams import (
    ByteStream,
    ConnectionLostError,
    PeerInfo,
    StreamClosedError,
    StreamError,
    StreamResetError,
    StreamStoppedError,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "Check",
    "Cleanup",
    "ConformanceError",
    "ConformanceOptions",
    "PairFactory",
    "check_abort",
    "check_aclose",
    "check_aclose_wakes_pending_receive",
    "check_backpressure",
    "check_bidirectional_interleaved",
    "check_connection_lost",
    "check_eof_wakes_pending_receive",
    "check_half_close_a_to_b",
    "check_half_close_b_to_a",
    "check_integrity_a_to_b",
    "check_integrity_b_to_a",
    "check_many_small_sends",
    "check_peer_info",
    "check_receive_after_eof_forever",
    "check_receive_max_bytes",
    "check_reset",
    "check_reset_codes",
    "check_reset_wakes_pending_receive",
    "check_send_after_eof",
    "check_send_after_reset",
    "check_stop_sending",
    "check_stop_sending_unblocks_pending_send",
    "iter_checks",
    "run_all",
]

Cleanup = Callable[[], Awaitable[None]]
PairFactory = Callable[[], Awaitable[tuple[ByteStream, ByteStream, Cleanup]]]


@dataclass(frozen=True, slots=True)
class ConformanceOptions:
    """Knobs for transports with different buffer sizes.

    ``max_buffered`` is the most a writer may get accepted by ``send`` while its peer
    does not read at all (per-stream flow-control window + send buffers); the
    backpressure check writes more than that and fails if the writer never blocks.
    ``payload_size`` is the size of the hash-checked payloads. ``timeout`` bounds every
    wait so that a hang becomes a readable failure (it is never asserted on).
    """

    max_buffered: int = 8 * 1024 * 1024
    payload_size: int = 1024 * 1024
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.max_buffered < 1 or self.payload_size < 1 or self.timeout <= 0:
            raise ValueError("ConformanceOptions values must be positive")


DEFAULT_OPTIONS = ConformanceOptions()

Check = Callable[[PairFactory, ConformanceOptions], Awaitable[None]]


class ConformanceError(AssertionError):
    """A transport broke the byte-stream contract."""


_T = TypeVar("_T")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


@asynccontextmanager
async def _pair(
    make_pair: PairFactory, options: ConformanceOptions
) -> AsyncIterator[tuple[ByteStream, ByteStream, Cleanup]]:
    try:
        async with asyncio.timeout(options.timeout):
            a, b, cleanup = await make_pair()
    except TimeoutError:
        raise ConformanceError(f"make_pair did not finish within {options.timeout}s") from None
    try:
        async with asyncio.timeout(options.timeout):
            yield a, b, cleanup
    except ConformanceError:
        raise
    except TimeoutError:
        raise ConformanceError(
            f"the check hung for {options.timeout}s (an operation never completed)"
        ) from None
    except Exception as exc:
        raise ConformanceError(f"unexpected {type(exc).__name__}: {exc}") from exc
    finally:
        await cleanup()


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def _send_chunked(stream: ByteStream, data: bytes, seed: int) -> None:
    """Send ``data`` in randomly sized pieces (1 byte up to 64 KiB), then end of stream."""
    rng = random.Random(seed)
    offset = 0
    while offset < len(data):
        size = rng.choice((1, 7, 100, 1000, 4096, 16384, 65536))
        await stream.send(data[offset : offset + size])
        offset += size
    await stream.send_eof()


async def _receive_all(stream: ByteStream, max_bytes: int = 65536) -> bytes:
    """Read until end of stream, checking every chunk is non-empty and bounded."""
    chunks: list[bytes] = []
    while True:
        chunk = await stream.receive(max_bytes)
        if not chunk:
            return b"".join(chunks)
        _require(len(chunk) <= max_bytes, f"receive({max_bytes}) returned {len(chunk)} bytes")
        chunks.append(chunk)


def _same(expected: bytes, got: bytes, what: str) -> None:
    _require(
        len(expected) == len(got)
        and hashlib.sha256(expected).digest() == hashlib.sha256(got).digest(),
        f"{what}: sent {len(expected)} bytes but received {len(got)} bytes"
        + ("" if len(expected) != len(got) else " with different content"),
    )


async def _raises(
    awaitable: Awaitable[object], exc_type: type[BaseException], what: str
) -> BaseException:
    try:
        await awaitable
    except exc_type as exc:
        return exc
    except BaseException as exc:
        raise ConformanceError(f"{what}: expected {exc_type.__name__}, got {exc!r}") from exc
    raise ConformanceError(f"{what}: expected {exc_type.__name__}, nothing was raised")


async def _send_until_stopped(stream: ByteStream, what: str) -> StreamStoppedError:
    """Keep sending small chunks until the peer's STOP_SENDING arrives."""
    while True:
        try:
            await stream.send(b"x" * 512)
        except StreamStoppedError as exc:
            return exc
        except BaseException as exc:
            raise ConformanceError(f"{what}: expected StreamStoppedError, got {exc!r}") from exc
        await asyncio.sleep(0.001)


async def _wait_until_stalled(task: asyncio.Task[None], progress: Callable[[], int]) -> None:
    """Wait until ``task`` finished or ``progress()`` stopped changing for a while."""
    last = -1
    stable = 0
    while stable < 25 and not task.done():
        await asyncio.sleep(0.004)
        current = progress()
        if current == last:
            stable += 1
        else:
            stable = 0
            last = current


async def _cancel(task: asyncio.Task[_T]) -> None:
    if not task.done():
        task.cancel()
    try:
        await task
    except BaseException:  # the outcome was checked by the caller
        pass


# -- ordering and integrity ------------------------------------------------------------


async def check_integrity_a_to_b(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """A large random payload from ``a`` arrives at ``b`` in order and intact."""
    async with _pair(make_pair, options) as (a, b, _):
        data = _payload(options.payload_size, 1)
        sender = asyncio.create_task(_send_chunked(a, data, 2))
        got = await _receive_all(b)
        await sender
        _same(data, got, "a -> b")


async def check_integrity_b_to_a(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """A large random payload from ``b`` arrives at ``a`` in order and intact."""
    async with _pair(make_pair, options) as (a, b, _):
        data = _payload(options.payload_size, 3)
        sender = asyncio.create_task(_send_chunked(b, data, 4))
        got = await _receive_all(a, 1000)
        await sender
        _same(data, got, "b -> a")


async def check_many_small_sends(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """Thousands of tiny sends (and empty ones) arrive as the same byte sequence."""
    async with _pair(make_pair, options) as (a, b, _):
        pieces = [bytes([i % 251]) * (i % 5) for i in range(3000)]

        async def write() -> None:
            for piece in pieces:
                await a.send(piece)
            await a.send_eof()

        sender = asyncio.create_task(write())
        got = await _receive_all(b, 3)
        await sender
        _same(b"".join(pieces), got, "small sends")


async def check_bidirectional_interleaved(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """Both ends send large payloads at the same time; neither deadlocks nor corrupts."""
    async with _pair(make_pair, options) as (a, b, _):
        size = max(options.payload_size, 2 * 1024 * 1024)
        data_a = _payload(size, 5)
        data_b = _payload(size, 6)
        results = await asyncio.gather(
            _send_chunked(a, data_a, 7),
            _send_chunked(b, data_b, 8),
            _receive_all(b),
            _receive_all(a),
        )
        _same(data_a, results[2], "a -> b while b -> a")
        _same(data_b, results[3], "b -> a while a -> b")


async def check_receive_max_bytes(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """``receive(n)`` returns between 1 and ``n`` bytes; rejects nothing it was sent."""
    async with _pair(make_pair, options) as (a, b, _):
        await a.send(b"abcdefghij")
        await a.send_eof()
        got = bytearray()
        while True:
            chunk = await b.receive(3)
            if not chunk:
                break
            _require(1 <= len(chunk) <= 3, f"receive(3) returned {len(chunk)} bytes")
            got += chunk
        _require(bytes(got) == b"abcdefghij", f"received {bytes(got)!r}")


# -- half-close ------------------------------------------------------------------------


async def _half_close(first: ByteStream, second: ByteStream, label: str) -> None:
    await first.send(b"request")
    await first.send_eof()
    got = await _receive_all(second)
    _require(got == b"request", f"{label}: got {got!r} before end of stream")
    # The other direction still works after the first one closed.
    await second.send(b"response")
    await second.send(b" after half-close")
    await second.send_eof()
    back = await _receive_all(first)
    _require(back == b"response after half-close", f"{label}: reply was {back!r}")


async def check_half_close_a_to_b(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """``a`` half-closes; ``b`` sees EOF and can still reply in full."""
    async with _pair(make_pair, options) as (a, b, _):
        await _half_close(a, b, "a half-closes first")


async def check_half_close_b_to_a(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """``b`` half-closes; ``a`` sees EOF and can still send in full."""
    async with _pair(make_pair, options) as (a, b, _):
        await _half_close(b, a, "b half-closes first")


async def check_receive_after_eof_forever(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """Once ``receive`` returned ``b""`` it keeps returning ``b""``."""
    async with _pair(make_pair, options) as (a, b, _):
        await a.send(b"last words")
        await a.send_eof()
        _require(await _receive_all(b) == b"last words", "data before EOF was lost")
        for _ in range(5):
            again = await b.receive()
            _require(again == b"", f"receive after EOF returned {again!r}")


async def check_eof_wakes_pending_receive(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """A ``receive`` already waiting returns ``b""`` when the peer half-closes."""
    async with _pair(make_pair, options) as (a, b, _):
        pending = asyncio.create_task(b.receive())
        await asyncio.sleep(0.01)
        _require(not pending.done(), "receive returned before anything was sent")
        await a.send_eof()
        got = await pending
        _require(got == b"", f"pending receive returned {got!r} at EOF")


async def check_send_after_eof(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """``send`` after ``send_eof`` raises ``StreamClosedError``; a second EOF is harmless."""
    async with _pair(make_pair, options) as (a, b, _):
        await a.send_eof()
        await a.send_eof()
        await _raises(a.send(b"late"), StreamClosedError, "send after send_eof")
        _require(await b.receive() == b"", "peer did not see EOF")


# -- reset, stop-sending, abort ----------------------------------------------------------


async def _receive_until_reset(stream: ByteStream, what: str) -> StreamResetError:
    while True:
        try:
            chunk = await stream.receive()
        except StreamResetError as exc:
            return exc
        except BaseException as exc:
            raise ConformanceError(f"{what}: expected StreamResetError, got {exc!r}") from exc
        _require(chunk != b"", f"{what}: got EOF instead of StreamResetError")


async def check_reset(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """``a.reset(code)``: ``b.receive`` raises with that code, ``b -> a`` keeps working."""
    async with _pair(make_pair, options) as (a, b, _):
        await a.send(b"partial")
        a.reset(0x1234)
        exc = await _receive_until_reset(b, "after peer reset")
        _require(exc.code == 0x1234, f"reset code {exc.code:#x}, expected 0x1234")
        again = await _raises(b.receive(), StreamResetError, "second receive after reset")
        _require(isinstance(again, StreamResetError) and again.code == 0x1234, "code changed")
        await b.send(b"still flowing")
        await b.send_eof()
        _require(await _receive_all(a) == b"still flowing", "b -> a broke after a's reset")


async def check_reset_codes(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """Reset codes 0, small, large and 2**62-1 all arrive unchanged."""
    for code in (0, 1, 0xDEAD, (1 << 62) - 1):
        async with _pair(make_pair, options) as (a, b, _):
            a.reset(code)
            exc = await _receive_until_reset(b, f"reset({code:#x})")
            _require(exc.code == code, f"sent reset code {code:#x}, peer saw {exc.code:#x}")


async def check_reset_wakes_pending_receive(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """A ``receive`` already waiting raises ``StreamResetError`` when the peer resets."""
    async with _pair(make_pair, options) as (a, b, _):
        pending = asyncio.create_task(b.receive())
        await asyncio.sleep(0.01)
        a.reset(42)
        exc = await _raises(pending, StreamResetError, "pending receive at reset")
        _require(isinstance(exc, StreamResetError) and exc.code == 42, f"got {exc!r}")


async def check_send_after_reset(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """After ``reset``, our own ``send``/``send_eof`` raise ``StreamClosedError``."""
    async with _pair(make_pair, options) as (a, _b, _):
        a.reset(3)
        a.reset(3)  # idempotent
        await _raises(a.send(b"x"), StreamClosedError, "send after reset")


async def check_stop_sending(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """``b.stop_sending(code)``: ``a.send`` raises with that code; ``a`` still receives."""
    async with _pair(make_pair, options) as (a, b, _):
        b.stop_sending(0x77)
        exc = await _send_until_stopped(a, "send after peer stop_sending")
        _require(exc.code == 0x77, f"stop code {exc.code:#x}, expected 0x77")
        await _raises(a.send(b"x"), StreamStoppedError, "send again after stop")
        await b.send(b"other direction")
        await b.send_eof()
        _require(await _receive_all(a) == b"other direction", "b -> a broke after stop_sending")


async def check_stop_sending_unblocks_pending_send(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """A ``send`` blocked by backpressure raises ``StreamStoppedError`` on stop_sending."""
    async with _pair(make_pair, options) as (a, b, _):
        sent = 0

        async def flood() -> None:
            nonlocal sent
            chunk = b"\0" * 65536
            while True:
                await a.send(chunk)
                sent += len(chunk)

        writer = asyncio.create_task(flood())
        try:
            await _wait_until_stalled(writer, lambda: sent)
            _require(not writer.done(), f"writer stopped unexpectedly: {writer!r}")
            b.stop_sending(9)
            exc = await _raises(writer, StreamStoppedError, "blocked send at stop_sending")
            _require(isinstance(exc, StreamStoppedError) and exc.code == 9, f"got {exc!r}")
        finally:
            await _cancel(writer)


async def check_abort(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """``a.abort(code)`` resets ``a``'s sending side and stops ``b``'s, both with the code."""
    async with _pair(make_pair, options) as (a, b, _):
        a.abort(5)
        reset = await _receive_until_reset(b, "receive after peer abort")
        _require(reset.code == 5, f"abort reset code {reset.code}, expected 5")
        stopped = await _send_until_stopped(b, "send after peer abort")
        _require(stopped.code == 5, f"abort stop code {stopped.code}, expected 5")
        await asyncio.sleep(0.05)  # let b's answer to the stop request reach a
        await _raises(a.send(b"x"), StreamClosedError, "send after own abort")
        await _raises(a.receive(), StreamClosedError, "receive after own abort")


async def check_aclose(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """``a.aclose()`` finishes ``a``'s sending side; ``a`` is unusable afterwards."""
    async with _pair(make_pair, options) as (a, b, _):
        await a.send(b"bye")
        await a.aclose()
        await a.aclose()  # idempotent
        _require(await _receive_all(b) == b"bye", "data sent before aclose was lost")
        await _raises(a.send(b"x"), StreamClosedError, "send after aclose")
        await _raises(a.receive(), StreamClosedError, "receive after aclose")
        # b's data can no longer be read by a: b's sending side gets stopped.
        await _send_until_stopped(b, "send to a closed peer")


async def check_aclose_wakes_pending_receive(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """A ``receive`` waiting on a stream raises ``StreamClosedError`` when it is closed."""
    async with _pair(make_pair, options) as (a, _b, _):
        pending = asyncio.create_task(a.receive())
        await asyncio.sleep(0.01)
        await a.aclose()
        await _raises(pending, StreamClosedError, "pending receive at aclose")


# -- backpressure ------------------------------------------------------------------------


async def check_backpressure(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """A writer whose reader is paused blocks after a bounded amount; then all arrives."""
    async with _pair(make_pair, options) as (a, b, _):
        total = options.max_buffered + 1024 * 1024
        data = _payload(total, 9)
        sent = 0

        async def write() -> None:
            nonlocal sent
            view = memoryview(data)
            for offset in range(0, total, 32768):
                piece = bytes(view[offset : offset + 32768])
                await a.send(piece)
                sent += len(piece)
            await a.send_eof()

        writer = asyncio.create_task(write())
        try:
            await _wait_until_stalled(writer, lambda: sent)
            if writer.done():
                writer.result()  # surface the writer's own error first
            _require(
                not writer.done(),
                f"send accepted all {total} bytes while the reader was paused: no backpressure",
            )
            _require(
                sent <= options.max_buffered,
                f"writer got {sent} bytes accepted with a paused reader "
                f"(bound {options.max_buffered})",
            )
            got = await _receive_all(b)
            await writer
            _same(data, got, "after backpressure")
        finally:
            await _cancel(writer)


# -- identity and connection loss ------------------------------------------------------


async def check_peer_info(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """Both ends report a :class:`PeerInfo` naming their transport."""
    async with _pair(make_pair, options) as (a, b, _):
        for end, label in ((a, "a"), (b, "b")):
            info = end.peer_info
            _require(isinstance(info, PeerInfo), f"{label}.peer_info is {info!r}")
            _require(bool(info.transport), f"{label}.peer_info.transport is empty")
            _require(isinstance(end, ByteStream), f"{label} does not satisfy ByteStream")


async def check_connection_lost(
    make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS
) -> None:
    """Tearing the connection down fails pending and later operations on both ends."""
    async with _pair(make_pair, options) as (a, b, cleanup):
        pending_a = asyncio.create_task(a.receive())
        pending_b = asyncio.create_task(b.receive())
        await asyncio.sleep(0.01)
        _require(not pending_a.done() and not pending_b.done(), "receive returned early")
        await cleanup()
        for task, label in ((pending_a, "a"), (pending_b, "b")):
            exc = await _raises(task, ConnectionLostError, f"pending {label}.receive")
            _require(isinstance(exc, StreamError), f"{label}: {exc!r} is not a StreamError")
        await _raises(a.send(b"x"), ConnectionLostError, "a.send after connection loss")
        await _raises(b.send(b"x"), ConnectionLostError, "b.send after connection loss")
        await _raises(a.receive(), ConnectionLostError, "a.receive after connection loss")
        # Abandoning and closing a stream on a dead connection never raises.
        a.reset(1)
        b.stop_sending(1)
        b.abort(1)
        await a.aclose()
        await b.aclose()


_CHECKS: tuple[Check, ...] = (
    check_integrity_a_to_b,
    check_integrity_b_to_a,
    check_many_small_sends,
    check_bidirectional_interleaved,
    check_receive_max_bytes,
    check_half_close_a_to_b,
    check_half_close_b_to_a,
    check_receive_after_eof_forever,
    check_eof_wakes_pending_receive,
    check_send_after_eof,
    check_reset,
    check_reset_codes,
    check_reset_wakes_pending_receive,
    check_send_after_reset,
    check_stop_sending,
    check_stop_sending_unblocks_pending_send,
    check_abort,
    check_aclose,
    check_aclose_wakes_pending_receive,
    check_backpressure,
    check_peer_info,
    check_connection_lost,
)


def iter_checks() -> Iterator[tuple[str, Check]]:
    """Yield ``(name, check)`` for every check, e.g. to parametrize a pytest test."""
    for check in _CHECKS:
        yield check.__name__.removeprefix("check_"), check


async def run_all(make_pair: PairFactory, options: ConformanceOptions = DEFAULT_OPTIONS) -> None:
    """Run every check in turn; the first failure propagates."""
    for _name, check in iter_checks():
        await check(make_pair, options)
