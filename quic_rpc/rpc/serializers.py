"""Pluggable message serializers (per method): protobuf, JSON, raw bytes.

The server and client only need two plain callables per method — ``serialize(obj) ->
bytes`` and ``deserialize(bytes) -> obj`` — so grpc-style ``request_deserializer`` /
``response_serializer`` functions plug in directly; the classes here provide both.
"""

from __future__ import annotations

import json
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtobufMessage

__all__ = [
    "BytesSerializer",
    "JSONSerializer",
    "ProtobufSerializer",
    "Serializer",
    "serializer_for",
]

T = TypeVar("T")
M = TypeVar("M", bound=ProtobufMessage)


@runtime_checkable
class Serializer(Protocol[T]):
    """Turns messages of one type into bytes and back."""

    def serialize(self, message: T) -> bytes: ...

    def deserialize(self, data: bytes) -> T: ...


class BytesSerializer:
    """Messages are ``bytes`` as they are (bytearray/memoryview accepted on send)."""

    def serialize(self, message: bytes) -> bytes:
        if isinstance(message, bytes):
            return message
        if isinstance(message, bytearray | memoryview):
            return bytes(message)
        raise TypeError(f"BytesSerializer needs bytes, got {type(message).__name__}")

    def deserialize(self, data: bytes) -> bytes:
        return data

    def __repr__(self) -> str:
        return "BytesSerializer()"


class JSONSerializer:
    """Messages are JSON values, encoded as compact UTF-8 JSON."""

    def serialize(self, message: Any) -> bytes:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def deserialize(self, data: bytes) -> Any:
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"invalid JSON message: {exc}") from exc

    def __repr__(self) -> str:
        return "JSONSerializer()"


class ProtobufSerializer(Generic[M]):
    """Messages are instances of one protobuf message class."""

    def __init__(self, message_cls: type[M]) -> None:
        if not (isinstance(message_cls, type) and issubclass(message_cls, ProtobufMessage)):
            raise TypeError(f"ProtobufSerializer needs a protobuf message class: {message_cls!r}")
        self.message_cls = message_cls

    def serialize(self, message: M) -> bytes:
        if not isinstance(message, self.message_cls):
            raise TypeError(f"expected {self.message_cls.__name__}, got {type(message).__name__}")
        return message.SerializeToString()

    def deserialize(self, data: bytes) -> M:
        try:
            return self.message_cls.FromString(data)
        except DecodeError as exc:
            raise ValueError(f"invalid {self.message_cls.__name__}: {exc}") from exc

    def __repr__(self) -> str:
        return f"ProtobufSerializer({self.message_cls.__name__})"


_BYTES = BytesSerializer()


def serializer_for(spec: Any) -> Serializer[Any]:
    """A serializer from ``spec``: a Serializer, a protobuf class, or None (bytes)."""
    if spec is None or spec is bytes:
        return _BYTES
    if isinstance(spec, type) and issubclass(spec, ProtobufMessage):
        return ProtobufSerializer(spec)
    if isinstance(spec, Serializer):
        return spec
    raise TypeError(
        f"cannot build a serializer from {spec!r}: pass a Serializer, a protobuf class or None"
    )
