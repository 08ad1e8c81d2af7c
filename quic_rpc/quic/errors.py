"""The exception hierarchy of the QUIC transport.

Stream-level failures use the shared classes from :mod:`quic_rpc.streams`
(:class:`~quic_rpc.streams.StreamResetError`, :class:`~quic_rpc.streams.StreamStoppedError`,
:class:`~quic_rpc.streams.StreamClosedError`, :class:`~quic_rpc.streams.ConnectionLostError`)
so that the RPC layer never needs to know about QUIC. Everything else derives from
:class:`QUICError`, each class with a stable ``code`` string.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CertificateRejectedByPeerError",
    "ConfigError",
    "ConnectionLimitError",
    "CredentialsError",
    "DatagramError",
    "HandshakeError",
    "HandshakeTimeoutError",
    "PeerCertificateRejectedError",
    "PeerVerificationError",
    "QUICError",
    "SocketClosedError",
    "VerificationError",
]

CRYPTO_ERROR_BAD_CERTIFICATE = 0x100 + 42
"""CONNECTION_CLOSE code for TLS bad_certificate (0x12a)."""


class QUICError(Exception):
    """Base of every error of ``quic_rpc.quic`` except the shared stream errors."""

    code: ClassVar[str] = "quic_error"


class ConfigError(QUICError, ValueError):
    """A configuration value is out of range or inconsistent."""

    code = "invalid_config"


class CredentialsError(QUICError, ValueError):
    """A private key or certificate chain cannot be loaded or does not match."""

    code = "invalid_credentials"


class VerificationError(QUICError):
    """A certificate chain failed verification (raised by the bundled verifiers)."""

    code = "verification_failed"


class SocketClosedError(QUICError):
    """The :class:`~quic_rpc.quic.QUICSocket` is not open (not started, or closed)."""

    code = "socket_closed"


class DatagramError(QUICError):
    """Datagrams (RFC 9221) are not enabled on this connection, or one is too large."""

    code = "datagram_error"


class HandshakeError(QUICError):
    """The QUIC/TLS handshake did not complete.

    ``error_code`` is the QUIC transport error code the connection closed with (``None``
    when no CONNECTION_CLOSE was involved, e.g. a timeout); ``reason`` is human readable.
    """

    code = "handshake_failed"

    def __init__(self, reason: str, *, error_code: int | None = None) -> None:
        self.reason = reason
        self.error_code = error_code
        text = reason if error_code is None else f"{reason} (error code {error_code:#x})"
        super().__init__(text)


class ConnectionLimitError(HandshakeError):
    """The server refused the connection (CONNECTION_REFUSED), e.g. ``max_connections``."""

    code = "connection_refused"


class HandshakeTimeoutError(HandshakeError):
    """The handshake did not complete within ``QUICConfig.handshake_timeout``."""

    code = "handshake_timeout"


class PeerVerificationError(HandshakeError):
    """Certificate verification failed during the handshake (on either side)."""

    code = "peer_verification_failed"


class PeerCertificateRejectedError(PeerVerificationError):
    """We rejected the peer's certificate chain (our verify callback raised)."""

    code = "peer_certificate_rejected"


class CertificateRejectedByPeerError(PeerVerificationError):
    """The peer rejected our certificate chain (it closed with a TLS certificate alert)."""

    code = "certificate_rejected_by_peer"
