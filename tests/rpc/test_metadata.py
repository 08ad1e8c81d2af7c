"""Metadata validation and the ordered multi-map."""

from __future__ import annotations

import pytest

from quic_rpc.rpc import InvalidMetadataError, Metadata, QuicRPCError, RPCError, Status


def test_ordered_multimap() -> None:
    md = Metadata([("a", "1"), ("b", "2"), ("a", "3"), ("x-bin", b"\x00")])
    assert list(md) == [("a", "1"), ("b", "2"), ("a", "3"), ("x-bin", b"\x00")]
    assert md["a"] == "1" and md.get("a") == "1" and md.get_all("a") == ["1", "3"]
    assert md.get("missing") is None and "b" in md and "missing" not in md
    assert len(md) == 4
    md.set("a", "only")
    assert md.get_all("a") == ["only"]
    del md["b"]
    assert md.keys() == ["x-bin", "a"]
    with pytest.raises(KeyError):
        md["b"]
    assert Metadata({"k": "v"}) == Metadata([("k", "v")]) == [("k", "v")]
    assert Metadata.coerce(md) is md


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("", "v", "invalid metadata key"),
        ("Upper", "v", "invalid metadata key"),
        ("sp ace", "v", "invalid metadata key"),
        (":authority", "v", "reserved"),
        ("grpc-status", "0", "reserved"),
        ("qrpc-x", "0", "reserved"),
        ("k" * 256, "v", "invalid metadata key"),
        ("data-bin", "text", "needs a bytes value"),
        ("data", b"bytes", "needs a str value"),
        ("data", "line\nbreak", "printable ASCII"),
        ("data", "ünicode", "printable ASCII"),
        (b"key", "v", "must be str"),
    ],
)
def test_invalid_metadata_rejected_clearly(key: object, value: object, fragment: str) -> None:
    with pytest.raises(InvalidMetadataError) as info:
        Metadata([(key, value)])  # type: ignore[list-item]
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, QuicRPCError)


def test_rpc_error_carries_metadata() -> None:
    err = RPCError(Status.ABORTED, "d", [("k", "v")], b"rich")
    assert err.status is Status.ABORTED and err.details == "d"
    assert list(err.trailing_metadata) == [("k", "v")] and err.rich_details == b"rich"
    assert str(err) == "ABORTED: d"
    with pytest.raises(InvalidMetadataError):
        RPCError(Status.ABORTED, "d", [("grpc-message", "no")])
