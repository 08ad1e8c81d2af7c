"""Mutual TLS 1.3 between the proxies, with the full chain carried by the preamble.

See :mod:`legacy_grpc.preamble` for why and how. :func:`dial_peer` is the forward
proxy's side, :func:`accept_peer` the reverse proxy's side; both return a
:class:`SecureConnection` whose ``info`` says who is on the other end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from legacy_grpc import preamble
from legacy_grpc.errors import (
    ConnectTimeoutError,
    HandshakeError,
    NodeIdMismatchError,
    PeerRefusedError,
    PeerRejectedError,
    PeerVerificationError,
    PreambleError,
    ProxyStateError,
)

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "PeerConnectionInfo",
    "SecureConnection",
    "TLSCredentials",
    "Verifier",
    "accept_peer",
    "close_writer",
    "dial_peer",
]

logger = logging.getLogger(__name__)

DEFAULT_HANDSHAKE_TIMEOUT = 10.0

#: ``verify(chain_der) -> identity``: checks a chain (leaf first) and returns the peer's
#: identity (for the agent, its NodeId); raises any exception to refuse it.
Verifier = Callable[[Sequence[bytes]], Hashable]

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: validity times are the verifier's job, so that an
# expired certificate gets the verifier's typed error instead of a TLS alert.
_VERIFY_NO_CHECK_TIME = 0x200000


@dataclass(frozen=True, slots=True)
class PeerConnectionInfo:
    """Who is on the other end of a proxied connection."""

    node_id: Hashable
    remote_host: str
    remote_port: int
    remote_chain: tuple[bytes, ...]


class TLSCredentials:
    """A node's private key and certificate chain (leaf first), both PEM.

    ``ssl`` loads certificates only from files, so the leaf and key are written to a
    private temporary directory while the credentials are open (:meth:`open` /
    :meth:`close`, or ``with``); the directory is removed on close.
    """

    def __init__(self, key_pem: bytes, chain_pem: bytes) -> None:
        try:
            certs = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as exc:
            raise ValueError(f"chain_pem is not a PEM certificate chain: {exc}") from exc
        try:
            serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"key_pem is not an unencrypted PEM private key: {exc}") from exc
        self.key_pem = key_pem
        self.chain_der: tuple[bytes, ...] = tuple(
            c.public_bytes(serialization.Encoding.DER) for c in certs
        )
        self._leaf_pem = certs[0].public_bytes(serialization.Encoding.PEM)
        self._dir: Path | None = None

    @property
    def leaf_der(self) -> bytes:
        return self.chain_der[0]

    def open(self) -> None:
        if self._dir is not None:
            return
        directory = Path(tempfile.mkdtemp(prefix="quicshift-tls-"))
        os.chmod(directory, 0o700)
        for name, data in (("key.pem", self.key_pem), ("leaf.pem", self._leaf_pem)):
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        self._dir = directory

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> TLSCredentials:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load_into(self, ctx: ssl.SSLContext) -> None:
        if self._dir is None:
            raise ProxyStateError("TLS credentials are not open")
        # Only the leaf goes into TLS: the chain travels in the preamble.
        ctx.load_cert_chain(self._dir / "leaf.pem", self._dir / "key.pem")

    def client_context(self) -> ssl.SSLContext:
        """Client side: present our leaf, accept any server leaf (checked after)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self._load_into(ctx)
        return ctx

    def server_context(self, client_leaf_der: bytes) -> ssl.SSLContext:
        """Server side: require a client certificate, trusting exactly the hello's leaf."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self._load_into(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=client_leaf_der)
        ctx.verify_flags = ssl.VerifyFlags(
            int(ssl.VERIFY_X509_PARTIAL_CHAIN) | _VERIFY_NO_CHECK_TIME
        )
        return ctx


@dataclass(slots=True)
class SecureConnection:
    """An authenticated connection: the byte streams after the preamble, and the peer."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    info: PeerConnectionInfo


def _describe(exc: BaseException) -> str:
    """``Type[code]: message`` for a verifier's error (``code`` if it has a stable one)."""
    code = getattr(exc, "code", None)
    label = type(exc).__name__ + (f"[{code}]" if isinstance(code, str) else "")
    return f"{label}: {exc}"


def _peer_leaf(writer: asyncio.StreamWriter) -> bytes | None:
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    leaf: bytes | None = ssl_object.getpeercert(binary_form=True)
    return leaf


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream writer and wait for it, swallowing errors of a dead connection."""
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 5.0)


async def dial_peer(
    host: str,
    port: int,
    credentials: TLSCredentials,
    verify: Verifier,
    *,
    expected_node_id: Hashable | None = None,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,  # noqa: ASYNC109
) -> SecureConnection:
    """Open a mutually authenticated connection to a node's reverse proxy.

    Raises :class:`HandshakeError`, :class:`PeerRejectedError`,
    :class:`PeerVerificationError`, :class:`NodeIdMismatchError` or
    :class:`ConnectTimeoutError`; nothing is left open on failure.
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                raise HandshakeError(f"cannot connect to {host}:{port}: {exc}") from exc
            try:
                writer.write(preamble.encode_hello(credentials.leaf_der))
                await writer.drain()
                refusal = await preamble.read_hello_reply(reader)
                if refusal is not None:
                    raise PeerRejectedError(refusal.reason_code, refusal.reason)
                await writer.start_tls(credentials.client_context())
                writer.write(preamble.encode_chain(credentials.chain_der))
                await writer.drain()
                verdict = await preamble.read_verdict(reader)
            except (ssl.SSLError, OSError) as exc:
                raise HandshakeError(
                    f"TLS with {host}:{port} failed (did it refuse our certificate?): {exc}"
                ) from exc
            except PreambleError as exc:
                raise HandshakeError(f"preamble with {host}:{port} failed: {exc}") from exc
            if isinstance(verdict, preamble.Rejected):
                raise PeerRejectedError(verdict.reason_code, verdict.reason)
            chain = verdict.chain
            if chain[0] != _peer_leaf(writer):
                raise PeerVerificationError(
                    f"{host}:{port} sent a chain whose leaf is not its TLS certificate"
                )
            try:
                node_id = verify(chain)
            except Exception as exc:
                raise PeerVerificationError(
                    f"{host}:{port} failed verification: {_describe(exc)}"
                ) from exc
            if expected_node_id is not None and node_id != expected_node_id:
                raise NodeIdMismatchError(expected_node_id, node_id)
            info = PeerConnectionInfo(node_id, host, port, chain)
            return SecureConnection(reader, writer, info)
    except TimeoutError as exc:
        if writer is not None:
            await close_writer(writer)
        raise ConnectTimeoutError(f"connecting to {host}:{port} took over {timeout}s") from exc
    except BaseException:
        if writer is not None:
            await close_writer(writer)
        raise


async def accept_peer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    credentials: TLSCredentials,
    verify: Verifier,
    *,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,  # noqa: ASYNC109
) -> SecureConnection:
    """Run the server side of the handshake on a freshly accepted TCP connection.

    On success returns the connection (TLS already on ``writer``). On failure the peer
    has been told why when possible, and this raises :class:`PeerRefusedError` (peer refused)
    or :class:`HandshakeError` (no usable TLS session); the caller closes ``writer``.
    """
    peername = writer.get_extra_info("peername") or ("?", 0)
    host, port = str(peername[0]), int(peername[1])

    async def reject(code: int, reason: str) -> PeerRefusedError:
        with contextlib.suppress(Exception):
            writer.write(preamble.encode_reject(code, reason))
            await writer.drain()
        return PeerRefusedError(code, reason, host, port)

    try:
        async with asyncio.timeout(timeout):
            try:
                hello_leaf = await preamble.read_hello(reader)
            except PreambleError as exc:
                raise await reject(preamble.RejectReason.MALFORMED, str(exc)) from exc
            try:
                ctx = credentials.server_context(hello_leaf)
            except ssl.SSLError as exc:
                raise await reject(
                    preamble.RejectReason.MALFORMED, f"hello certificate unusable: {exc}"
                ) from exc
            try:
                writer.write(preamble.encode_hello_ack())
                await writer.drain()
                await writer.start_tls(ctx)
            except (ssl.SSLError, OSError) as exc:
                raise HandshakeError(f"TLS handshake with {host}:{port} failed: {exc!r}") from exc
            try:
                chain = await preamble.read_chain(reader)
            except PreambleError as exc:
                raise await reject(preamble.RejectReason.MALFORMED, str(exc)) from exc
            except (ssl.SSLError, OSError) as exc:
                raise HandshakeError(f"TLS with {host}:{port} failed: {exc}") from exc
            tls_leaf = _peer_leaf(writer)
            if tls_leaf is None or not (chain[0] == tls_leaf == hello_leaf):
                raise await reject(
                    preamble.RejectReason.LEAF_MISMATCH,
                    "the chain's leaf is not the certificate presented in TLS",
                )
            try:
                node_id = verify(chain)
            except Exception as exc:
                raise await reject(
                    preamble.RejectReason.VERIFICATION_FAILED, _describe(exc)
                ) from exc
            writer.write(preamble.encode_accept(credentials.chain_der))
            await writer.drain()
            return SecureConnection(reader, writer, PeerConnectionInfo(node_id, host, port, chain))
    except TimeoutError as exc:
        raise HandshakeError(f"handshake with {host}:{port} took over {timeout}s") from exc
