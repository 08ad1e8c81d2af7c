"""The proxy preamble codec, fed whole, byte by byte and in arbitrary splits."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legacy_grpc import PreambleError, parse_grpc_peer, preamble
from legacy_grpc.preamble import Accepted, Rejected

CHAIN = (b"\x30leaf" * 10, b"\x30mid" * 7, b"\x30root" * 3)


async def feed(data: bytes, splits: list[int] | None = None) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    cuts = sorted({c % (len(data) + 1) for c in (splits or [])})
    last = 0
    for cut in [*cuts, len(data)]:
        reader.feed_data(data[last:cut])
        last = cut
    reader.feed_eof()
    return reader


async def test_hello_roundtrip_byte_by_byte() -> None:
    data = preamble.encode_hello(CHAIN[0])
    reader = asyncio.StreamReader()
    for i in range(len(data)):
        reader.feed_data(data[i : i + 1])
    assert await preamble.read_hello(reader) == CHAIN[0]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_frames_roundtrip_any_split(splits: list[int]) -> None:
    async def run() -> None:
        data = (
            preamble.encode_hello(CHAIN[0])
            + preamble.encode_hello_ack()
            + preamble.encode_chain(CHAIN)
            + preamble.encode_accept(CHAIN[:1])
            + preamble.encode_reject(3, "nope ✗")
        )
        reader = await feed(data, splits)
        assert await preamble.read_hello(reader) == CHAIN[0]
        assert await preamble.read_hello_reply(reader) is None
        assert await preamble.read_chain(reader) == CHAIN
        assert await preamble.read_verdict(reader) == Accepted(CHAIN[:1])
        assert await preamble.read_verdict(reader) == Rejected(3, "nope ✗")

    asyncio.run(run())


@pytest.mark.parametrize(
    ("data", "reader_name", "message"),
    [
        (b"GET / HTTP/1.1\r\n", "read_hello", "not a quicshift proxy hello"),
        (b"\x16\x03\x01\x00\x10\x01\x00\x00\x0c", "read_hello", "plain TLS client"),
        (preamble.HELLO_MAGIC + struct.pack("!BI", 9, 4) + b"cert", "read_hello", "version 9"),
        (preamble.HELLO_MAGIC + struct.pack("!BI", 1, 0), "read_hello", "out of range"),
        (preamble.HELLO_MAGIC + struct.pack("!BI", 1, 10**6), "read_hello", "out of range"),
        (preamble.HELLO_MAGIC + struct.pack("!BI", 1, 10) + b"short", "read_hello", "closed"),
        (b"\x00", "read_chain", "out of range"),
        (bytes([preamble.MAX_CERTIFICATES + 1]), "read_chain", "out of range"),
        (b"\x01" + struct.pack("!I", 5) + b"ab", "read_chain", "closed"),
        (b"\x07", "read_verdict", "unknown verdict"),
        (b"\x07", "read_hello_reply", "unexpected hello reply"),
        (b"\x01" + struct.pack("!HH", 1, 5000), "read_verdict", "exceeds"),
        (b"", "read_verdict", "closed"),
    ],
)
async def test_malformed_frames(data: bytes, reader_name: str, message: str) -> None:
    reader = await feed(data)
    with pytest.raises(PreambleError, match=message):
        await getattr(preamble, reader_name)(reader)


def test_encoders_check_limits() -> None:
    with pytest.raises(PreambleError):
        preamble.encode_chain([])
    with pytest.raises(PreambleError):
        preamble.encode_chain([b"x"] * (preamble.MAX_CERTIFICATES + 1))
    with pytest.raises(PreambleError):
        preamble.encode_hello(b"")
    with pytest.raises(PreambleError):
        preamble.encode_hello(b"x" * (preamble.MAX_CERTIFICATE_SIZE + 1))
    long_reason = preamble.encode_reject(1, "x" * 5000)
    assert len(long_reason) == 5 + preamble.MAX_REASON_SIZE


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:127.0.0.1:5000", ("127.0.0.1", 5000)),
        ("ipv6:[::1]:443", ("::1", 443)),
        ("ipv6:%5B::1%5D:443", ("::1", 443)),
        ("unix:/tmp/sock", None),
        ("ipv4:127.0.0.1", None),
        ("ipv4:127.0.0.1:0", None),
        ("ipv4:127.0.0.1:70000", None),
        ("", None),
    ],
)
def test_parse_grpc_peer(peer: str, expected: tuple[str, int] | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            parse_grpc_peer(peer)
    else:
        assert parse_grpc_peer(peer) == expected
