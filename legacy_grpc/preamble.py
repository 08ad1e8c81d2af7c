"""The proxy-pair preamble: how a full certificate chain travels over TLS on Python's ``ssl``.

Python 3.11's ``ssl`` exposes only the peer's leaf certificate and cannot skip CA
verification of a client certificate, while a node's identity lives in its *whole* chain
(``[current key, previous key, ..., root]``: a rotated leaf does not chain to anything a
server knows in advance). The proxies therefore run this exchange on each connection:

1. ``HELLO`` (plaintext, client → server): magic, version, the client's leaf certificate;
   the server answers ``HELLO_ACK`` (or ``REJECT``) before any TLS byte flows, so neither
   side's plaintext reader can swallow the TLS handshake. The server builds a per-connection TLS context that trusts exactly that leaf (OpenSSL
   ``PARTIAL_CHAIN`` with time checks off), so a real TLS 1.3 client-certificate
   handshake happens and the client proves possession of the leaf's key. The hello is
   only a hint for OpenSSL; no trust comes from it.
2. TLS 1.3 handshake, both sides presenting their leaf (the server requires one).
3. ``CHAIN`` (in TLS, client → server): the client's full chain, leaf first.
4. ``ACCEPT`` + the server's full chain, or ``REJECT`` + reason (in TLS, server → client).

Each side then checks that the chain's first certificate is the leaf TLS authenticated
and passes the chain to the ``verify(chain_der)`` callback. Everything after is the
spliced application byte stream. Encoding is big-endian; the functions here do no I/O
except the ``read_*`` helpers, which only read exactly what a frame needs.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from legacy_grpc.errors import PreambleError

__all__ = [
    "HELLO_MAGIC",
    "MAX_CERTIFICATES",
    "MAX_CERTIFICATE_SIZE",
    "MAX_REASON_SIZE",
    "PREAMBLE_VERSION",
    "Accepted",
    "RejectReason",
    "Rejected",
    "encode_accept",
    "encode_chain",
    "encode_hello",
    "encode_hello_ack",
    "encode_reject",
    "read_chain",
    "read_hello",
    "read_hello_reply",
    "read_verdict",
]

HELLO_MAGIC: Final = b"QSLP"
PREAMBLE_VERSION: Final = 1
MAX_CERTIFICATES: Final = 16
MAX_CERTIFICATE_SIZE: Final = 64 * 1024
MAX_REASON_SIZE: Final = 1024

_VERDICT_ACCEPT: Final = 0
_VERDICT_REJECT: Final = 1
_HELLO_ACK: Final = 2


class RejectReason:
    """Stable reason codes a reverse proxy sends in ``REJECT``."""

    MALFORMED: Final = 1
    LEAF_MISMATCH: Final = 2
    VERIFICATION_FAILED: Final = 3
    INTERNAL: Final = 4


@dataclass(frozen=True, slots=True)
class Accepted:
    """The server accepted us and sent its chain (leaf first)."""

    chain: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """The server refused us."""

    reason_code: int
    reason: str


def _check_cert(der: bytes) -> None:
    if not der:
        raise PreambleError("empty certificate")
    if len(der) > MAX_CERTIFICATE_SIZE:
        raise PreambleError(f"certificate of {len(der)} bytes exceeds {MAX_CERTIFICATE_SIZE}")


def encode_hello(leaf_der: bytes) -> bytes:
    _check_cert(leaf_der)
    return HELLO_MAGIC + struct.pack("!BI", PREAMBLE_VERSION, len(leaf_der)) + leaf_der


def encode_chain(chain_der: Sequence[bytes]) -> bytes:
    if not chain_der:
        raise PreambleError("a certificate chain needs at least one certificate")
    if len(chain_der) > MAX_CERTIFICATES:
        raise PreambleError(f"chain of {len(chain_der)} certificates exceeds {MAX_CERTIFICATES}")
    parts = [struct.pack("!B", len(chain_der))]
    for der in chain_der:
        _check_cert(der)
        parts.append(struct.pack("!I", len(der)) + der)
    return b"".join(parts)


def encode_hello_ack() -> bytes:
    return struct.pack("!B", _HELLO_ACK)


def encode_accept(chain_der: Sequence[bytes]) -> bytes:
    return struct.pack("!B", _VERDICT_ACCEPT) + encode_chain(chain_der)


def encode_reject(reason_code: int, reason: str) -> bytes:
    text = reason.encode("utf-8", "replace")[:MAX_REASON_SIZE]
    return struct.pack("!BHH", _VERDICT_REJECT, reason_code, len(text)) + text


async def _read(reader: asyncio.StreamReader, n: int, what: str) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise PreambleError(
            f"connection closed while reading {what} ({len(exc.partial)} of {n} bytes)"
        ) from exc


async def _read_cert(reader: asyncio.StreamReader, length: int) -> bytes:
    if length == 0 or length > MAX_CERTIFICATE_SIZE:
        raise PreambleError(f"certificate length {length} out of range 1..{MAX_CERTIFICATE_SIZE}")
    return await _read(reader, length, "a certificate")


async def read_hello(reader: asyncio.StreamReader) -> bytes:
    """Read ``HELLO``; returns the client's leaf certificate (DER)."""
    head = await _read(reader, len(HELLO_MAGIC) + 5, "the hello")
    if head[: len(HELLO_MAGIC)] != HELLO_MAGIC:
        hint = " (a plain TLS client?)" if head[:1] == b"\x16" else ""
        raise PreambleError(f"not a quicshift proxy hello{hint}: {head[:8]!r}")
    version, length = struct.unpack("!BI", head[len(HELLO_MAGIC) :])
    if version != PREAMBLE_VERSION:
        raise PreambleError(f"unsupported preamble version {version}")
    return await _read_cert(reader, length)


async def read_chain(reader: asyncio.StreamReader) -> tuple[bytes, ...]:
    """Read ``CHAIN``; returns the certificates, leaf first."""
    (count,) = await _read(reader, 1, "the chain length")
    if count == 0 or count > MAX_CERTIFICATES:
        raise PreambleError(f"chain length {count} out of range 1..{MAX_CERTIFICATES}")
    chain = []
    for _ in range(count):
        (length,) = struct.unpack("!I", await _read(reader, 4, "a certificate length"))
        chain.append(await _read_cert(reader, length))
    return tuple(chain)


async def read_hello_reply(reader: asyncio.StreamReader) -> Rejected | None:
    """Read the server's answer to ``HELLO``: ``None`` for ``HELLO_ACK``, or ``REJECT``."""
    (kind,) = await _read(reader, 1, "the hello reply")
    if kind == _HELLO_ACK:
        return None
    if kind == _VERDICT_REJECT:
        return await _read_reject(reader)
    raise PreambleError(f"unexpected hello reply {kind}")


async def read_verdict(reader: asyncio.StreamReader) -> Accepted | Rejected:
    """Read ``ACCEPT`` (with the server chain) or ``REJECT``."""
    (kind,) = await _read(reader, 1, "the verdict")
    if kind == _VERDICT_ACCEPT:
        return Accepted(await read_chain(reader))
    if kind == _VERDICT_REJECT:
        return await _read_reject(reader)
    raise PreambleError(f"unknown verdict {kind}")


async def _read_reject(reader: asyncio.StreamReader) -> Rejected:
    code, length = struct.unpack("!HH", await _read(reader, 4, "the reject header"))
    if length > MAX_REASON_SIZE:
        raise PreambleError(f"reject reason of {length} bytes exceeds {MAX_REASON_SIZE}")
    text = await _read(reader, length, "the reject reason")
    return Rejected(code, text.decode("utf-8", "replace"))
