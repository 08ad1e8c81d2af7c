"""TLS credentials (our key and chain, plus how we verify the peer), a CA verifier, and
the caches of TLS session resumption.

A verify callback takes the peer's certificate chain as DER, leaf first, and returns an
identity (whatever the application wants: a node id, the leaf certificate, ...); raising
rejects the peer. The transport runs it on *both* sides of every connection — aioquic's
own certificate checks are switched off and never consulted. It also runs on every
resumed connection, over the chain the peer proved in the full handshake the session
came from (see :class:`SessionCache`), so a resumption never accepts a chain the
callback would reject now.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .errors import CredentialsError, VerificationError

__all__ = [
    "PrivateKey",
    "ServerSessionStore",
    "SessionCache",
    "TLSCredentials",
    "VerifyCallback",
    "ca_verifier",
]

PrivateKey = (
    ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
)
VerifyCallback = Callable[[Sequence[bytes]], Any]
"""``verify(chain_der_leaf_first) -> identity``; raise to reject the peer."""

_SUPPORTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


@dataclass(frozen=True, slots=True)
class TLSCredentials:
    """Our private key and certificate chain (leaf first) plus the peer verify callback.

    Build with :meth:`load` to pass PEM text or objects. Ed25519, Ed448, ECDSA
    (P-256/384/521) and RSA keys are accepted.
    """

    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    verify: VerifyCallback
    _chain_der: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _sessions: SessionCache = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.chain, tuple) or not self.chain:
            raise CredentialsError("the certificate chain must be a non-empty tuple, leaf first")
        for cert in self.chain:
            if not isinstance(cert, x509.Certificate):
                raise CredentialsError("chain entries must be cryptography x509.Certificate")
        if not callable(self.verify):
            raise CredentialsError("verify must be callable: verify(chain_der) -> identity")
        key = self.private_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if not isinstance(key.curve, _SUPPORTED_CURVES):
                raise CredentialsError(f"unsupported elliptic curve {key.curve.name}")
        elif not isinstance(
            key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | rsa.RSAPrivateKey
        ):
            raise CredentialsError(f"unsupported private key type {type(key).__name__}")
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*spki) != self.chain[0].public_key().public_bytes(*spki):
            raise CredentialsError("the private key does not match the leaf certificate")
        # Serialized once: every handshake presents (and reports) this chain.
        der = tuple(c.public_bytes(serialization.Encoding.DER) for c in self.chain)
        object.__setattr__(self, "_chain_der", der)
        object.__setattr__(self, "_sessions", SessionCache())

    @classmethod
    def load(
        cls,
        key: bytes | str | PrivateKey,
        chain: bytes | str | Sequence[x509.Certificate | bytes],
        verify: VerifyCallback,
        *,
        password: bytes | None = None,
    ) -> TLSCredentials:
        """Credentials from a PEM key (or key object) and a PEM chain (or certificates/DER)."""
        if isinstance(key, str | bytes):
            data = key.encode() if isinstance(key, str) else key
            try:
                loaded = serialization.load_pem_private_key(data, password=password)
            except (ValueError, TypeError) as exc:
                raise CredentialsError(f"cannot load the private key: {exc}") from exc
            if not isinstance(
                loaded,
                ed25519.Ed25519PrivateKey
                | ed448.Ed448PrivateKey
                | ec.EllipticCurvePrivateKey
                | rsa.RSAPrivateKey,
            ):
                raise CredentialsError(f"unsupported private key type {type(loaded).__name__}")
            private_key: PrivateKey = loaded
        else:
            private_key = key
        certs: list[x509.Certificate] = []
        if isinstance(chain, str | bytes):
            data = chain.encode() if isinstance(chain, str) else chain
            try:
                certs = x509.load_pem_x509_certificates(data)
            except ValueError as exc:
                raise CredentialsError(f"cannot load the certificate chain: {exc}") from exc
        else:
            for item in chain:
                if isinstance(item, bytes):
                    try:
                        certs.append(x509.load_der_x509_certificate(item))
                    except ValueError as exc:
                        raise CredentialsError(f"cannot load a DER certificate: {exc}") from exc
                else:
                    certs.append(item)
        return cls(private_key=private_key, chain=tuple(certs), verify=verify)

    @property
    def chain_der(self) -> tuple[bytes, ...]:
        """Our chain as DER, leaf first."""
        return self._chain_der

    @property
    def sessions(self) -> SessionCache:
        """The client-side session cache ``connect()`` uses with these credentials when
        ``QUICConfig.session_resumption`` is on and no other cache is given."""
        return self._sessions


# -- session resumption --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ClientSession:
    ticket: Any
    """The engine's session ticket (opaque here)."""
    peer_chain: tuple[bytes, ...]
    """The server chain verified in the full handshake the session came from."""
    authenticated_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class _ServerSession:
    ticket: Any
    peer_chain: tuple[bytes, ...]
    """The client chain verified in the full handshake the session came from."""
    server_chain: tuple[bytes, ...]
    """Our chain when we issued the ticket: only this identity may resume it."""
    authenticated_at: float
    expires_at: float


class SessionCache:
    """Client side of TLS 1.3 session resumption: the tickets servers gave us.

    Used by :func:`~quic_rpc.quic.connect` when ``QUICConfig.session_resumption`` is on
    (every :class:`TLSCredentials` has one, :attr:`TLSCredentials.sessions`; pass another
    to share tickets between credentials objects holding the same key and chain).

    Tickets are kept by (server address, server name, ALPN, our own chain): a ticket is
    only offered to the address it came from, and only by the identity the server
    authenticated when it issued it (the server restores *that* client identity). Each
    ticket is offered once (servers accept a ticket once) and only after the connection's
    verify callback has accepted, now, the server chain verified in the full handshake
    the session came from — so a callback that expects a particular server identity
    rejects a ticket of any other. Why a resumed connection still talks to that server:
    the resumption secret is derived from that full handshake, which only that server
    completed (it proved its certificate key there); in the resumed handshake the server
    proves it knows the secret (its Finished message), so no one else can complete it.

    At most ``max_tickets`` tickets are held in all (the least recently used server's go
    first), at most ``per_server`` per key. ``clock`` (monotonic seconds) is for tests.
    Sessions expire ``QUICConfig.session_ticket_lifetime`` after the full handshake.
    """

    def __init__(
        self,
        max_tickets: int = 256,
        *,
        per_server: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_tickets, bool) or not isinstance(max_tickets, int) or max_tickets < 1:
            raise ValueError(f"max_tickets must be a positive int, got {max_tickets!r}")
        if isinstance(per_server, bool) or not isinstance(per_server, int) or per_server < 1:
            raise ValueError(f"per_server must be a positive int, got {per_server!r}")
        self.max_tickets = max_tickets
        self.per_server = per_server
        self._clock = clock
        self._tickets: OrderedDict[Hashable, list[_ClientSession]] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many tickets are held."""
        return self._count

    def clear(self) -> None:
        with self._lock:
            self._tickets.clear()
            self._count = 0

    @staticmethod
    def _key(
        address: tuple[Any, ...], server_name: str | None, alpn: str, local_chain: tuple[bytes, ...]
    ) -> Hashable:
        return (str(address[0]), int(address[1]), server_name, alpn, local_chain)

    def _take(self, key: Hashable) -> _ClientSession | None:
        """The newest unexpired ticket for ``key``, removed from the cache."""
        now = self._clock()
        with self._lock:
            sessions = self._tickets.get(key)
            while sessions:
                session = sessions.pop()
                self._count -= 1
                if session.expires_at > now:
                    if not sessions:
                        del self._tickets[key]
                    return session
            self._tickets.pop(key, None)
        return None

    def _put(self, key: Hashable, session: _ClientSession) -> None:
        with self._lock:
            sessions = self._tickets.get(key)
            if sessions is None:
                sessions = self._tickets[key] = []
            else:
                self._tickets.move_to_end(key)
            sessions.append(session)
            self._count += 1
            if len(sessions) > self.per_server:
                del sessions[0]
                self._count -= 1
            while self._count > self.max_tickets:
                oldest_key, oldest = next(iter(self._tickets.items()))
                del oldest[0]
                self._count -= 1
                if not oldest:
                    del self._tickets[oldest_key]


class ServerSessionStore:
    """Server side of TLS 1.3 session resumption: the sessions behind the tickets we issued.

    A :class:`~quic_rpc.quic.QUICServer` keeps one when ``QUICConfig.session_resumption``
    is on. Each entry holds the client chain verified in the full handshake and our own
    chain at the time: a ticket is resumed only by the identity that issued it, once
    (taking it removes it), before it expires, and only if the verify callback accepts
    the stored client chain again. Anything else — unknown, used, expired, evicted —
    means a full handshake. At most ``max_sessions`` are held; the oldest go first.
    ``clock`` (monotonic seconds) is for tests.
    """

    def __init__(
        self, max_sessions: int = 4096, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise ValueError(f"max_sessions must be a positive int, got {max_sessions!r}")
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[bytes, _ServerSession] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()

    def _add(self, label: bytes, session: _ServerSession) -> None:
        with self._lock:
            self._sessions[label] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)

    def _pop(self, label: bytes) -> _ServerSession | None:
        with self._lock:
            session = self._sessions.pop(label, None)
        if session is None or session.expires_at <= self._clock():
            return None
        return session


def ca_verifier(
    root_certificates_pem: bytes | str,
    *,
    server_name: str | None = None,
    cache_size: int = 256,
) -> Callable[[Sequence[bytes]], x509.Certificate]:
    """A verify callback doing standard CA verification, like grpc's channel credentials.

    The peer chain must lead from its leaf to one of the given roots (intermediates may
    come in the chain), every certificate must be within its validity period, and, when
    ``server_name`` is given (client side), the leaf must match that host name or IP
    address. Ed25519, ECDSA and RSA chains are supported. Returns the leaf certificate;
    raises :class:`~quic_rpc.quic.VerificationError` otherwise.

    The roots are parsed once, into one trust store. Up to ``cache_size`` accepted chains
    (0: none) are remembered, keyed on the exact DER bytes of the whole chain: the same
    bytes against the same roots and ``server_name`` give the same result except for
    time, so a remembered chain is accepted again only while *now* is inside the
    validity period of every certificate in it and of the root it chained to; otherwise
    it is checked in full again. Rejections are never remembered.
    """
    return _CAVerifier(root_certificates_pem, server_name, cache_size)


class _CAVerifier:
    """The callable :func:`ca_verifier` returns."""

    def __init__(self, roots_pem: bytes | str, server_name: str | None, cache_size: int) -> None:
        from OpenSSL import crypto

        data = roots_pem.encode() if isinstance(roots_pem, str) else roots_pem
        try:
            roots = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise CredentialsError(f"cannot load the root certificates: {exc}") from exc
        if not roots:
            raise CredentialsError("no root certificates given")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {cache_size!r}")
        self._crypto = crypto
        self._store = crypto.X509Store()
        for root in roots:
            self._store.add_cert(crypto.X509.from_cryptography(root))
        self._server_name = server_name
        self._is_ip = False
        if server_name is not None:
            try:
                ipaddress.ip_address(server_name)
            except ValueError:
                pass
            else:
                self._is_ip = True
        self.cache_size = cache_size
        # exact chain DER -> (leaf, accepted from, accepted until)
        self._accepted: OrderedDict[
            tuple[bytes, ...], tuple[x509.Certificate, datetime, datetime]
        ] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ca_verifier server_name={self._server_name!r} cached={len(self._accepted)}>"

    def __call__(self, chain: Sequence[bytes]) -> x509.Certificate:
        if not chain:
            raise VerificationError("the peer sent no certificate")
        key = tuple(bytes(der) for der in chain)
        now = datetime.now(UTC)
        if self.cache_size:
            with self._lock:
                hit = self._accepted.get(key)
                if hit is not None:
                    if hit[1] <= now <= hit[2]:
                        self._accepted.move_to_end(key)
                        return hit[0]
                    del self._accepted[key]
        try:
            certs = [x509.load_der_x509_certificate(der) for der in key]
        except ValueError as exc:
            raise VerificationError(f"the peer certificate cannot be parsed: {exc}") from exc
        for cert in certs:
            if now < cert.not_valid_before_utc:
                raise VerificationError(
                    f"certificate {cert.subject.rfc4514_string()!r} is not valid yet "
                    f"(valid from {cert.not_valid_before_utc.isoformat()})"
                )
            if now > cert.not_valid_after_utc:
                raise VerificationError(
                    f"certificate {cert.subject.rfc4514_string()!r} has expired "
                    f"(valid until {cert.not_valid_after_utc.isoformat()})"
                )
        if self._server_name is not None:
            self._check_name(certs[0], self._server_name)
        crypto = self._crypto
        try:
            context = crypto.X509StoreContext(
                self._store,
                crypto.X509.from_cryptography(certs[0]),
                [crypto.X509.from_cryptography(cert) for cert in certs[1:]],
            )
            path = context.get_verified_chain()
        except crypto.X509StoreContextError as exc:
            raise VerificationError(f"certificate chain rejected: {exc.args[0]}") from exc
        except Exception as exc:
            raise VerificationError(f"certificate chain rejected: {exc}") from exc
        if self.cache_size:
            window = certs + [element.to_cryptography() for element in path]
            start = max(cert.not_valid_before_utc for cert in window)
            end = min(cert.not_valid_after_utc for cert in window)
            with self._lock:
                self._accepted[key] = (certs[0], start, end)
                self._accepted.move_to_end(key)
                while len(self._accepted) > self.cache_size:
                    self._accepted.popitem(last=False)
        return certs[0]

    def _check_name(self, leaf: x509.Certificate, server_name: str) -> None:
        import service_identity
        from service_identity import cryptography as si

        try:
            if self._is_ip:
                si.verify_certificate_ip_address(leaf, server_name)
            else:
                si.verify_certificate_hostname(leaf, server_name)
        except ValueError as exc:
            raise VerificationError(
                "certificate chain rejected: certificate extensions could not be parsed"
            ) from exc
        except (service_identity.CertificateError, service_identity.VerificationError) as exc:
            patterns = si.extract_patterns(leaf)
            if not patterns:
                detail = str(exc)
            elif len(patterns) == 1:
                detail = f"hostname {server_name!r} doesn't match {patterns[0]!r}"
            else:
                listed = ", ".join(repr(pattern) for pattern in patterns)
                detail = f"hostname {server_name!r} doesn't match either of {listed}"
            raise VerificationError(f"certificate chain rejected: {detail}") from exc
