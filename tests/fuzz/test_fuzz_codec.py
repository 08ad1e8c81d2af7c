"""Runs the atheris harness's TestOneInput over a hypothesis corpus, so the codec
invariants (tests/fuzz/fuzz_codec.py) are checked in every CI run without atheris."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from quic_rpc.rpc import (
    CallKind,
    Status,
    encode_message,
    encode_request_end,
    encode_request_header,
    encode_response_header,
    encode_trailer,
)

from .fuzz_codec import TestOneInput

keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=10)
ascii_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
metadata = st.lists(
    st.one_of(
        st.tuples(keys, ascii_values),
        st.tuples(keys.map(lambda k: k + "-bin"), st.binary(max_size=20)),
    ),
    max_size=4,
)

valid_frames = st.one_of(
    st.builds(
        encode_request_header,
        st.text(min_size=1, max_size=20),
        st.sampled_from(list(CallKind)),
        metadata,
        st.none() | st.integers(0, 2**64 - 1),
    ),
    st.builds(encode_response_header, metadata),
    st.binary(max_size=64).map(encode_message),
    st.just(encode_request_end()),
    st.builds(
        encode_trailer,
        st.sampled_from(list(Status)),
        st.text(max_size=30),
        metadata,
        st.none() | st.binary(max_size=20),
    ),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Valid frames, then a few byte flips, truncations or insertions."""
    data = bytearray(b"".join(draw(st.lists(valid_frames, max_size=6))))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


flags = st.integers(0, 255).map(lambda f: bytes([f]))
inputs = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda f, d: f + d, flags, mutated()),
    st.builds(lambda f, d: bytes([f[0] | 4]) + d, flags, mutated()),  # with the preface
    st.builds(  # frame headers whose lengths lie
        lambda f, t, n, p: bytes([f[0] | 4]) + struct.pack(">BI", t, n) + p,
        flags,
        st.integers(0, 8),
        st.sampled_from([0, 1, 1023, 1024, 1025, 4096, 4097, 2**32 - 1]),
        st.binary(max_size=64),
    ),
)

WORKED_EXAMPLE = bytes.fromhex(
    "04"  # flags: add the preface
    "0100000026"
    "0001"
    "00000000000f4240"
    "000e"
    "2f6563686f2e4563686f2f536179"
    "0001"
    "04"
    "75736572"
    "00000001"
    "61"
    "03000000026869"
    "0400000000"
)


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(inputs)
@example(WORKED_EXAMPLE)
@example(b"\x04" + encode_trailer(Status.OK, "\ud800 lone surrogate"))
@example(b"\x05" + encode_request_header("/m", CallKind.RAW) + b"raw bytes after it")
def test_codec_invariants(data: bytes) -> None:
    TestOneInput(data)


def test_harness_skips_cleanly_without_atheris() -> None:
    """The harness imports without atheris; only main() needs it."""
    import importlib.util

    import tests.fuzz.fuzz_codec as harness

    assert callable(harness.TestOneInput)
    if importlib.util.find_spec("atheris") is None:
        import pytest

        with pytest.raises(ImportError):
            harness.main()
