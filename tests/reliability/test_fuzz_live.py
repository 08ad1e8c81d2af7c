"""Hypothesis-generated frame sequences and byte soup written raw on live QUIC (and TCP
mux) streams to an RPCServer. Property: every stream is answered (a reset, or a
well-formed trailer) within a bound, the server never sends malformed frames, no call
is left behind, and a good client on another connection keeps working throughout."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quic_rpc.rpc import CallKind, encode_message, encode_request_end, encode_request_header

from .conftest import Target, assert_healthy, read_answer, send_raw, wait_calls_drained

METHODS = ["/t.S/Echo", "/t.S/Sum", "/t.S/Numbers", "/t.S/Nope", "x"]
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@st.composite
def valid_header(draw: st.DrawFn) -> bytes:
    return encode_request_header(
        draw(st.sampled_from(METHODS)),
        draw(st.sampled_from(list(CallKind))),
        draw(st.lists(st.tuples(keys, values), max_size=5)),
        draw(st.none() | st.integers(0, 2**64 - 1)),
    )


@st.composite
def mangled_frame(draw: st.DrawFn) -> bytes:
    """A frame header with any type and a length that may lie about the payload."""
    ftype = draw(st.integers(0, 8))
    payload = draw(st.binary(max_size=64))
    length = draw(st.sampled_from([len(payload), 0, 2**32 - 1, 1 << 20]) | st.integers(0, 200))
    return struct.pack(">BI", ftype, length) + payload


frames = st.one_of(
    valid_header(),
    st.binary(max_size=32).map(encode_message),
    st.just(encode_request_end()),
    mangled_frame(),
    st.binary(min_size=1, max_size=16),  # stray bytes between frames
)


@st.composite
def frame_sequence(draw: st.DrawFn) -> bytes:
    preface = draw(st.sampled_from([b"\x01"] * 4 + [b"\x00", b"\x02", b""]))
    return preface + b"".join(draw(st.lists(frames, max_size=8)))


async def _one(target: Target, data: bytes, eof: bool) -> None:
    stream = await target.open_raw()
    try:
        await send_raw(stream, data, eof=eof)
        if not eof:
            # a caller that stops mid-call and abandons the stream
            stream.abort(0x4)
            return
        answer = await read_answer(stream)
        assert answer.kind in ("reset", "trailer"), answer
    finally:
        await stream.aclose()


@SETTINGS
@given(data=frame_sequence(), eof=st.booleans())
async def test_fuzzed_frame_sequences(target: Target, data: bytes, eof: bool) -> None:
    await _one(target, data, eof)


@SETTINGS
@given(data=st.binary(max_size=2048))
async def test_byte_soup(target: Target, data: bytes) -> None:
    await _one(target, data, True)


async def test_server_healthy_after_fuzzing(target: Target) -> None:
    """Fuzz a fixed pseudo-random batch concurrently, then check nothing is left over."""
    import asyncio
    import random

    rng = random.Random(1234)
    batch = []
    for _ in range(60):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
        batch.append(b"\x01" + encode_request_header("/t.S/Echo", CallKind.UNARY) + data)
    await asyncio.gather(*(_one(target, d, True) for d in batch))
    await assert_healthy(target.other_conn)
    await assert_healthy(target.same_conn)
    await wait_calls_drained(target.rpc)
