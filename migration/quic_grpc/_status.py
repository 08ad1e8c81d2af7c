"""Status codes: grpc's ``StatusCode`` and the numbers on the wire (quic_rpc's ``Status``)."""

from __future__ import annotations

from typing import Any

from ._compat import StatusCode

__all__ = ["StatusCode", "code_from_number", "code_number", "to_status_code"]

_BY_NUMBER: dict[int, StatusCode] = {member.value[0]: member for member in StatusCode}


def code_number(code: StatusCode) -> int:
    """The wire number of a status code (``StatusCode.NOT_FOUND`` -> 5)."""
    return int(code.value[0])


def code_from_number(number: int) -> StatusCode:
    """The status code for a wire number; numbers outside 0..16 read as UNKNOWN, as in gRPC."""
    return _BY_NUMBER.get(int(number), StatusCode.UNKNOWN)


def to_status_code(code: Any) -> StatusCode:
    """Accept a ``StatusCode`` (ours or grpcio's), an int, or an int-valued enum (quic_rpc)."""
    if isinstance(code, StatusCode):
        return code
    value = getattr(code, "value", code)
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        return code_from_number(value[0])
    if isinstance(value, int) and not isinstance(value, bool):
        return code_from_number(value)
    name = getattr(code, "name", None)
    if isinstance(name, str) and name in StatusCode.__members__:
        member: StatusCode = StatusCode.__members__[name]
        return member
    raise TypeError(f"not a gRPC status code: {code!r}")
