"""QUICSocket: one UDP socket shared by a server and any number of clients.

Datagrams are routed to connections by destination connection id (every connection on
the socket uses :data:`~quic_rpc.quic.engine.CONNECTION_ID_LENGTH`). Reading drains the
socket (many datagrams per wake-up) and each touched connection is flushed once per
event-loop turn, so sends go out in bursts. On Linux, bursts to one address leave in a
single ``sendmsg`` with UDP segmentation offload (GSO), and reads take coalesced datagrams
(GRO), when the kernel supports them; elsewhere, or with ``gso=False``, one datagram per
system call. ``io="transport"`` uses a portable asyncio datagram endpoint instead.

Every socket sets Don't Fragment (Linux ``IP_PMTUDISC_PROBE``, and ``IPV6_PMTUDISC_PROBE``
for IPv6): QUIC must never be fragmented (RFC 9000 §14), and path MTU discovery only works
if a datagram too large for the path is dropped (with an ICMP "too big") instead of being
split by a router or by our own kernel. PROBE rather than DO: the kernel still sets DF but
ignores the path MTU it cached from ICMP, so the connection's own discovery decides what
size to send and probes above a cached value are not refused locally. A datagram larger
than the local interface's MTU fails with EMSGSIZE; it is counted
(:attr:`QUICSocket.datagrams_too_big`) and treated as lost, like one dropped on the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket as _socket
import sys
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from .engine import (
    CONNECTION_ID_LENGTH,
    parse_header,
    stateless_reset_token,
    version_negotiation,
)
from .errors import SocketClosedError

if TYPE_CHECKING:
    from .connection import QUICConnection
    from .server import QUICServer

__all__ = ["QUICSocket", "gso_supported"]

_log = logging.getLogger(__name__)

_SOL_UDP = 17
_UDP_SEGMENT = 103
_UDP_GRO = 104
_MAX_GSO_SEGMENTS = 64
_MAX_GSO_BYTES = 65000
_RECV_BATCH = 256
_RECV_BUDGET = 256 * 1024
"""Bytes read per wake-up at most. Reading everything queued (up to the socket buffer,
megabytes under a bulk upload) before readers run means credit only goes back once a
whole window has arrived, and the sender idles meanwhile; a bounded batch lets readers
consume, and MAX_STREAM_DATA leave, while the rest of the window is still arriving."""
_SEND_QUEUE_LIMIT = 4096
_RESET_RATE = 100  # stateless resets per second at most
_MIN_INITIAL_SIZE = 1200
# Don't Fragment options: Linux only (other systems use the same numbers for other
# options), with the Linux values where the socket module lacks the names (before 3.12)
_LINUX = sys.platform.startswith("linux")
_IP_MTU_DISCOVER = getattr(_socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_PROBE = getattr(_socket, "IP_PMTUDISC_PROBE", 3)
_IPV6_MTU_DISCOVER = getattr(_socket, "IPV6_MTU_DISCOVER", 23)
_IPV6_PMTUDISC_PROBE = getattr(_socket, "IPV6_PMTUDISC_PROBE", 3)

PUNCH_PAYLOAD = b"\x00quicshift-punch"
Address = tuple[str, int]
IOMode = Literal["auto", "selector", "transport"]


def gso_supported() -> bool:
    """Whether this kernel accepts UDP_SEGMENT (Linux GSO) on a UDP socket."""
    if not sys.platform.startswith("linux") or not hasattr(_socket.socket, "sendmsg"):
        return False
    probe = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        probe.setsockopt(_SOL_UDP, _UDP_SEGMENT, 1200)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class _TransportProtocol(asyncio.DatagramProtocol):
    """Portable I/O: an asyncio datagram endpoint (used where add_reader is missing)."""

    def __init__(self, owner: QUICSocket) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._owner._dispatch(data, addr, self._owner._loop.time())
        self._owner._schedule_flush(None)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError) and exc.errno == errno.EMSGSIZE:
            self._owner.datagrams_too_big += 1
        _log.debug("UDP error on %r: %s", self._owner, exc)


class QUICSocket:
    """One UDP endpoint (IPv4, IPv6, or dual-stack on ``"::"``) for QUIC connections.

    ``io`` picks the I/O path: ``"selector"`` reads the socket directly in batches (with
    GSO where available), ``"transport"`` uses a portable asyncio datagram endpoint,
    ``"auto"`` prefers the former. ``reset_key`` (32 bytes) derives stateless-reset
    tokens; keep it stable across restarts to let peers learn quickly that old
    connections are gone.

    ``sock`` hands over an already bound UDP socket (``AF_INET`` or ``AF_INET6``,
    ``SOCK_DGRAM``) instead of binding ``host``:``port``; see :meth:`from_socket`.
    """

    def __init__(
        self,
        host: str = "::",
        port: int = 0,
        *,
        sock: _socket.socket | None = None,
        io: IOMode = "auto",
        gso: bool = True,
        reset_key: bytes | None = None,
    ) -> None:
        if io not in ("auto", "selector", "transport"):
            raise ValueError(f"io must be 'auto', 'selector' or 'transport', not {io!r}")
        if sock is not None:
            host, port = _check_bound(sock)
        self._adopted = sock
        self._host = host
        self._port = port
        self._io: IOMode = io
        self._want_gso = gso
        self._reset_key = reset_key if reset_key is not None else os.urandom(32)
        self._sock: _socket.socket | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop  # set by start()
        self._family = _socket.AF_INET
        self._dual_stack = False
        self._local: Address = (host, port) if sock is not None else ("", 0)
        self._routes: dict[bytes, QUICConnection] = {}
        self._connections: set[QUICConnection] = set()
        self._server: QUICServer | None = None
        self._dirty: dict[QUICConnection, None] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._send_queue: deque[tuple[bytes, Address]] = deque()
        self._writer_registered = False
        self._gso = False
        self._gro = False
        self._dont_fragment = False
        self._reset_tokens = float(_RESET_RATE)
        self._reset_refill = 0.0
        self._closed = False
        self._virtual_paths: dict[Address, Callable[[bytes], None]] = {}
        """Virtual addresses (relay paths, see :mod:`.relay`) and where their datagrams go."""
        self.on_unrouted: Callable[[bytes, Address], None] | None = None
        """Called with datagrams that belong to no connection (e.g. hole-punch packets)."""
        self.datagrams_dropped = 0
        self.datagrams_too_big = 0
        """Datagrams the kernel refused as larger than the local interface's MTU (EMSGSIZE,
        with Don't Fragment set); they count as lost (a path MTU probe too large for the
        first hop ends up here)."""
        self.gro_batches = 0
        """Reads that returned several coalesced datagrams (GRO)."""

    def __repr__(self) -> str:
        return f"<QUICSocket {self._local[0]}:{self._local[1]}>"

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    async def bind(
        cls,
        host: str = "::",
        port: int = 0,
        *,
        io: IOMode = "auto",
        gso: bool = True,
        reset_key: bytes | None = None,
    ) -> QUICSocket:
        """Create and open a socket bound to ``host``:``port`` (0 picks a free port)."""
        sock = cls(host, port, io=io, gso=gso, reset_key=reset_key)
        await sock.start()
        return sock

    @classmethod
    def from_socket(
        cls,
        sock: _socket.socket,
        *,
        io: IOMode = "auto",
        gso: bool = True,
        reset_key: bytes | None = None,
    ) -> QUICSocket:
        """A (not yet started) QUICSocket on ``sock``, a bound UDP socket it takes over.

        For callers that must know the port synchronously: bind a ``socket.socket`` now,
        read its port, hand it over, then ``await start()`` (or ``async with``) later.
        The socket is made non-blocking; :meth:`close` closes it, also if never started.
        """
        return cls(sock=sock, io=io, gso=gso, reset_key=reset_key)

    async def start(self) -> None:
        """Bind the UDP socket (or take over the one given) and start reading."""
        if self._sock is not None or self._closed:
            raise SocketClosedError("the socket was already started or closed")
        self._loop = asyncio.get_running_loop()
        if self._adopted is not None:
            sock = self._adopted
            family = sock.family
            try:
                if family == _socket.AF_INET6:
                    v6only = sock.getsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY)
                    unspecified = ipaddress.ip_address(sock.getsockname()[0].split("%")[0])
                    self._dual_stack = not v6only and unspecified == ipaddress.IPv6Address("::")
                _enlarge_buffers(sock)
                self._dont_fragment = _set_dont_fragment(sock, family, self._dual_stack)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
        else:
            infos = await self._loop.getaddrinfo(
                self._host, self._port, type=_socket.SOCK_DGRAM, flags=_socket.AI_PASSIVE
            )
            if not infos:
                raise OSError(f"cannot resolve {self._host!r}")
            family, _, _, _, sockaddr = infos[0]
            sock = _socket.socket(family, _socket.SOCK_DGRAM)
            try:
                if family == _socket.AF_INET6:
                    dual = ipaddress.ip_address(sockaddr[0]) == ipaddress.IPv6Address("::")
                    sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 0 if dual else 1)
                    self._dual_stack = dual
                _enlarge_buffers(sock)
                self._dont_fragment = _set_dont_fragment(sock, family, self._dual_stack)
                sock.bind(sockaddr)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
        self._adopted = None
        self._sock = sock
        self._family = family
        bound = sock.getsockname()
        self._local = (_display(bound[0]), int(bound[1]))
        mode = self._io
        if mode == "auto":
            mode = "selector"
            try:
                self._loop.add_reader(sock.fileno(), self._on_readable)
            except NotImplementedError:
                mode = "transport"
        elif mode == "selector":
            self._loop.add_reader(sock.fileno(), self._on_readable)
        if mode == "transport":
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _TransportProtocol(self), sock=sock
            )
            self._transport = transport
        else:
            self._gso = self._want_gso and gso_supported()
            if self._gso:
                try:
                    sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
                    self._gro = True
                except OSError:
                    self._gro = False
        self._io = mode

    async def close(self) -> None:
        """Abort every connection, detach the server and close the UDP socket."""
        if self._closed:
            return
        self._closed = True
        for conn in list(self._connections):
            conn.abort("socket closed")
        if self._server is not None:
            self._server._socket_closed()
            self._server = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._dirty.clear()
        self._send_queue.clear()
        if self._adopted is not None:  # handed over but never started
            self._adopted.close()
            self._adopted = None
        sock = self._sock
        self._sock = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            await asyncio.sleep(0)  # let the transport finish closing the socket
        elif sock is not None:
            self._loop.remove_reader(sock.fileno())
            if self._writer_registered:
                self._loop.remove_writer(sock.fileno())
                self._writer_registered = False
            sock.close()

    async def __aenter__(self) -> QUICSocket:
        if self._sock is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- public properties -------------------------------------------------------------

    @property
    def local_address(self) -> Address:
        """The bound (host, port)."""
        return self._local

    @property
    def is_open(self) -> bool:
        return self._sock is not None and not self._closed

    @property
    def io_mode(self) -> str:
        return self._io

    @property
    def gso_enabled(self) -> bool:
        """Sends use UDP segmentation offload (Linux)."""
        return self._gso

    @property
    def gro_enabled(self) -> bool:
        """Reads use UDP generic receive offload (Linux): coalesced datagrams are split."""
        return self._gro

    @property
    def dont_fragment(self) -> bool:
        """Datagrams leave with Don't Fragment set and are never fragmented locally
        (Linux; False elsewhere, and before :meth:`start`)."""
        return self._dont_fragment

    @property
    def connections(self) -> list[QUICConnection]:
        """Every connection on this socket, client and server side."""
        return list(self._connections)

    def send_punch(self, host: str, port: int, payload: bytes = PUNCH_PAYLOAD) -> None:
        """Send one raw datagram from this socket (hole punching opens the NAT mapping).

        The default payload has the QUIC fixed bit clear, so no QUIC stack mistakes it for
        a packet; the receiving socket hands it to its ``on_unrouted`` callback."""
        self._check_open()
        addr = self._native_address(host, port)
        self._sendto(bytes(payload), addr)

    # -- used by connections, clients and the server -----------------------------------

    def _check_open(self) -> None:
        if self._sock is None or self._closed:
            raise SocketClosedError("the QUIC socket is not open")

    def _native_address(self, host: str, port: int) -> Address:
        """A numeric address in the exact form this socket reports peers in."""
        ip = ipaddress.ip_address(host.split("%", 1)[0])
        scope = "%" + host.split("%", 1)[1] if "%" in host else ""
        if self._family == _socket.AF_INET6:
            if ip.version == 4:
                if not self._dual_stack:
                    raise OSError(
                        f"cannot reach IPv4 address {host} from IPv6-only socket {self}; "
                        "bind to '::' for dual stack"
                    )
                text = "::ffff:" + str(ip)
            else:
                text = _socket.inet_ntop(_socket.AF_INET6, ip.packed) + scope
            return (text, port)
        if ip.version == 6:
            mapped = ipaddress.IPv6Address(ip.packed).ipv4_mapped
            if mapped is None:
                raise OSError(f"cannot reach IPv6 address {host} from an IPv4 socket")
            ip = mapped
        return (str(ip), port)

    async def _resolve(self, host: str, port: int) -> Address:
        if (host, port) in self._virtual_paths:
            return (host, port)
        try:
            return self._native_address(host, port)
        except ValueError:
            pass
        family = _socket.AF_UNSPEC if self._family == _socket.AF_INET6 else _socket.AF_INET
        infos = await self._loop.getaddrinfo(host, port, family=family, type=_socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"cannot resolve {host!r}")
        return self._native_address(str(infos[0][4][0]), port)

    def _add_connection(self, conn: QUICConnection, cids: Iterable[bytes]) -> None:
        self._connections.add(conn)
        for cid in cids:
            self._routes[cid] = conn

    def _add_route(self, cid: bytes, conn: QUICConnection) -> None:
        if conn in self._connections:
            self._routes[cid] = conn

    def _remove_route(self, cid: bytes, conn: QUICConnection) -> None:
        if self._routes.get(cid) is conn:
            del self._routes[cid]

    def _connection_finalized(self, conn: QUICConnection) -> None:
        self._connections.discard(conn)
        for cid in [cid for cid, c in self._routes.items() if c is conn]:
            del self._routes[cid]
        self._dirty.pop(conn, None)

    def _attach_server(self, server: QUICServer) -> None:
        self._check_open()
        if self._server is not None and self._server is not server:
            raise RuntimeError("a server is already attached to this socket")
        self._server = server

    def _detach_server(self, server: QUICServer) -> None:
        if self._server is server:
            self._server = None

    def _schedule_flush(self, conn: QUICConnection | None) -> None:
        if conn is not None:
            self._dirty[conn] = None
        if self._flush_handle is None and not self._closed:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        while self._dirty:
            dirty = list(self._dirty)
            self._dirty.clear()
            for conn in dirty:
                try:
                    conn._flush()
                except Exception:
                    _log.exception("flushing %r failed; aborting it", conn)
                    conn.abort("internal error")

    # -- receive path ----------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        now = self._loop.time()
        gro = self._gro
        budget = _RECV_BUDGET
        for _ in range(_RECV_BATCH):
            if budget <= 0:
                break  # the socket stays readable: the loop calls again after readers ran
            try:
                if gro:
                    data, ancdata, _flags, addr = sock.recvmsg(65536, _GRO_CMSG_SPACE)
                else:
                    data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable surfaced as ECONNREFUSED
                _log.debug("recvfrom on %r: %s", self, exc)
                continue
            budget -= len(data)
            if gro and ancdata:
                segment = _gro_segment_size(ancdata)
                if 0 < segment < len(data):
                    self.gro_batches += 1
                    for offset in range(0, len(data), segment):
                        self._dispatch(data[offset : offset + segment], addr, now)
                    continue
            self._dispatch(data, addr, now)
        if self._dirty:
            # Deliver events now, transmit on the next loop turn: the tasks woken here
            # (stream readers, new handlers) run first, so their replies leave in the
            # same burst as our ACKs instead of costing a second packet-building pass.
            for conn in list(self._dirty):
                try:
                    conn._process_events()
                except Exception:
                    _log.exception("%r: processing events of %r failed; aborting it", self, conn)
                    conn.abort("internal error")
            if self._flush_handle is None and not self._closed:
                self._flush_handle = self._loop.call_soon(self._flush)

    def _dispatch(self, data: bytes, addr: tuple[Any, ...], now: float) -> None:
        peer: Address = (addr[0], addr[1])
        if not data:
            return
        first = data[0]
        cid_len = CONNECTION_ID_LENGTH
        if first & 0x80:
            if len(data) < 7:
                self._unrouted(data, peer)
                return
            dcid = data[6 : 6 + data[5]]
        else:
            dcid = data[1 : 1 + cid_len]
        conn = self._routes.get(dcid)
        if conn is not None:
            try:
                conn._datagram_received(data, peer, now)
            except Exception:
                _log.exception("%r: %r failed on a datagram; aborting it", self, conn)
                conn.abort("internal error")
                return
            self._dirty[conn] = None
            return
        if not first & 0x40:
            # QUIC v1 always sets the fixed bit: this is not QUIC (a punch, or garbage)
            self._unrouted(data, peer)
            return
        if not first & 0x80:
            if len(data) >= 21 and self._stateless_reset_received(data[-16:], peer):
                return
            if self.on_unrouted is not None:
                self._unrouted(data, peer)
            self._maybe_stateless_reset(data, dcid, peer, now)
            return
        header = parse_header(data, cid_len)
        if header is None:
            self._unrouted(data, peer)
            return
        if len(data) >= _MIN_INITIAL_SIZE:
            reply = version_negotiation(header)
            if reply is not None:
                self._sendto(reply, peer)
                return
        server = self._server
        if (
            server is not None
            and header.is_initial
            and len(data) >= _MIN_INITIAL_SIZE
            and len(header.destination_cid) >= 8
        ):
            try:
                conn = server._accept_initial(header, data, peer, now)
            except Exception:
                _log.exception("%r: accepting a connection from %s failed", self, peer)
                return
            if conn is not None:
                self._dirty[conn] = None
            return
        self.datagrams_dropped += 1

    def _unrouted(self, data: bytes, peer: Address) -> None:
        callback = self.on_unrouted
        if callback is None:
            self.datagrams_dropped += 1
            return
        try:
            callback(data, (_display(peer[0]), peer[1]))
        except Exception:
            _log.exception("on_unrouted callback failed")

    def _stateless_reset_received(self, token: bytes, peer: Address) -> bool:
        for conn in list(self._connections):
            if conn._engine.get_peer_address() == peer and conn._engine.is_stateless_reset(token):
                conn._stateless_reset()
                return True
        return False

    def _maybe_stateless_reset(self, data: bytes, dcid: bytes, peer: Address, now: float) -> None:
        self.datagrams_dropped += 1
        # RFC 9000 10.3: smaller than the packet that triggered it, and at least 21 bytes
        # long; never answer packets so small that a reset could loop.
        if len(data) < 43:
            return
        self._reset_tokens = min(
            float(_RESET_RATE), self._reset_tokens + (now - self._reset_refill) * _RESET_RATE
        )
        self._reset_refill = now
        if self._reset_tokens < 1:
            return
        self._reset_tokens -= 1
        size = min(len(data) - 1, 42)
        body = bytearray(os.urandom(size - 16))
        body[0] = 0x40 | (body[0] & 0x3F)
        self._sendto(bytes(body) + stateless_reset_token(self._reset_key, dcid), peer)

    # -- send path -------------------------------------------------------------------

    def _send_datagrams(self, datagrams: list[tuple[bytes, Any]]) -> None:
        if self._sock is None:
            return
        if self._virtual_paths:
            datagrams = self._send_virtual(datagrams)
        if self._transport is not None:
            for data, addr in datagrams:
                self._transport.sendto(data, addr)
            return
        if self._send_queue:
            for data, addr in datagrams:
                self._enqueue(data, addr)
            return
        if not self._gso or len(datagrams) < 2:
            for index, (data, addr) in enumerate(datagrams):
                if not self._try_send(data, addr):
                    for rest in datagrams[index + 1 :]:
                        self._enqueue(*rest)
                    return
            return
        index = 0
        count = len(datagrams)
        while index < count:
            data, addr = datagrams[index]
            size = len(data)
            end = index + 1
            total = size
            while (
                end < count
                and end - index < _MAX_GSO_SEGMENTS
                and datagrams[end][1] == addr
                and total + len(datagrams[end][0]) <= _MAX_GSO_BYTES
            ):
                following = len(datagrams[end][0])
                if following > size or (following < size and end - index < 2):
                    # Only the last segment may be shorter, and only after two full ones:
                    # a batch can travel as one packet up to where it is split (veth,
                    # a router in the same host), and one too large for a hop is dropped
                    # whole there. A lone larger datagram (a path MTU probe) would take
                    # the shorter one behind it down too.
                    break
                total += following
                end += 1
                if following < size:
                    break
            if end - index == 1:
                done = 1 if self._try_send(data, addr) else 0
            else:
                done = self._try_send_gso([d for d, _ in datagrams[index:end]], size, addr)
            if index + done < end:
                for rest in datagrams[index + done :]:
                    self._enqueue(*rest)
                return
            index = end

    def _send_virtual(self, datagrams: list[tuple[bytes, Any]]) -> list[tuple[bytes, Any]]:
        """Hand datagrams for virtual addresses to their paths; return the others."""
        rest: list[tuple[bytes, Any]] = []
        for data, addr in datagrams:
            send = self._virtual_paths.get((addr[0], addr[1]))
            if send is None:
                rest.append((data, addr))
                continue
            try:
                send(data)
            except Exception:
                _log.exception("%r: virtual path %s failed to send", self, addr)
        return rest

    def _try_send(self, data: bytes, addr: Address) -> bool:
        """Send one datagram; False if the socket buffer is full (queue it and retry).

        Other errors lose the datagram (QUIC recovers); EMSGSIZE is counted."""
        sock = self._sock
        if sock is None:
            return True
        try:
            sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                return False
            if exc.errno == errno.EMSGSIZE:
                self.datagrams_too_big += 1
            _log.debug("sendto %s (%d bytes) failed: %s", addr, len(data), exc)
        return True

    def _try_send_gso(self, segments: list[bytes], size: int, addr: Address) -> int:
        """Send ``segments`` (all ``size`` bytes, the last maybe shorter) in one GSO
        ``sendmsg``; return how many were handled (sent or lost), fewer than all if the
        socket buffer filled up."""
        sock = self._sock
        if sock is None:
            return len(segments)
        try:
            sock.sendmsg(
                [b"".join(segments)],
                [(_SOL_UDP, _UDP_SEGMENT, size.to_bytes(2, sys.byteorder))],
                0,
                addr,
            )
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                return 0
            if exc.errno in (errno.EMSGSIZE, errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                return self._send_singly(segments, addr, exc)
            _log.debug("sendmsg %s failed: %s", addr, exc)
        return len(segments)

    def _send_singly(self, segments: list[bytes], addr: Address, gso_error: OSError) -> int:
        """After a failed GSO send: one send per datagram, so that only those too large
        for the interface are lost (a shorter last segment may still fit). A segment size
        over the interface's MTU fails GSO with EMSGSIZE (EINVAL before Linux changed it to
        EMSGSIZE); only when no single send hits EMSGSIZE either is GSO itself broken, and
        turned off. Returns how many segments were handled."""
        too_big = self.datagrams_too_big
        for count, segment in enumerate(segments):
            if not self._try_send(segment, addr):
                return count
        if gso_error.errno != errno.EMSGSIZE and self.datagrams_too_big == too_big:
            _log.info(
                "GSO failed on %r (%s); falling back to one send per datagram", self, gso_error
            )
            self._gso = False
        return len(segments)

    def _sendto(self, data: bytes, addr: Address) -> None:
        if self._virtual_paths and not self._send_virtual([(data, addr)]):
            return
        if self._transport is not None:
            self._transport.sendto(data, addr)
        elif self._send_queue or not self._try_send(data, addr):
            self._enqueue(data, addr)

    def _enqueue(self, data: bytes, addr: Address) -> None:
        if len(self._send_queue) >= _SEND_QUEUE_LIMIT:
            self.datagrams_dropped += 1
            return
        self._send_queue.append((data, addr))
        if not self._writer_registered and self._sock is not None:
            self._loop.add_writer(self._sock.fileno(), self._on_writable)
            self._writer_registered = True

    def _on_writable(self) -> None:
        while self._send_queue:
            data, addr = self._send_queue[0]
            if not self._try_send(data, addr):
                return
            self._send_queue.popleft()
        if self._writer_registered and self._sock is not None:
            self._loop.remove_writer(self._sock.fileno())
        self._writer_registered = False


_GRO_CMSG_SPACE = _socket.CMSG_SPACE(4) if hasattr(_socket, "CMSG_SPACE") else 0


def _check_bound(sock: _socket.socket) -> Address:
    """The local address of ``sock``, which must be a bound IPv4/IPv6 UDP socket."""
    if sock.family not in (_socket.AF_INET, _socket.AF_INET6):
        raise ValueError(f"need an AF_INET or AF_INET6 socket, not {sock.family!r}")
    if sock.type != _socket.SOCK_DGRAM:
        raise ValueError(f"need a SOCK_DGRAM (UDP) socket, not {sock.type!r}")
    if sock.fileno() < 0:
        raise ValueError("the socket is closed")
    bound = sock.getsockname()
    if not bound[1]:
        raise ValueError("the socket is not bound (bind it first, e.g. to port 0)")
    return _display(bound[0]), int(bound[1])


def _enlarge_buffers(sock: _socket.socket) -> None:
    for opt in (_socket.SO_RCVBUF, _socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(_socket.SOL_SOCKET, opt, 4 * 1024 * 1024)


def _set_dont_fragment(sock: _socket.socket, family: int, dual_stack: bool) -> bool:
    """Set Don't Fragment (``*_PMTUDISC_PROBE``) on ``sock``; whether it took (Linux only,
    errors ignored).

    A dual-stack socket sends IPv4-mapped traffic through the IPv4 stack, which has its
    own option; both must take for the socket to count as DF."""
    if not _LINUX:
        return False
    options = []
    if family == _socket.AF_INET6:
        options.append((_socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_PROBE))
    if family == _socket.AF_INET or dual_stack:
        options.append((_socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_PROBE))
    ok = bool(options)
    for level, name, value in options:
        try:
            sock.setsockopt(level, name, value)
        except OSError as exc:
            _log.debug("cannot set Don't Fragment (%d, %d) on %r: %s", level, name, sock, exc)
            ok = False
    return ok


def _gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, payload in ancdata:
        if level == _SOL_UDP and kind == _UDP_GRO and len(payload) >= 4:
            return int.from_bytes(payload[:4], sys.byteorder)
    return 0


def _display(host: str) -> str:
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host
