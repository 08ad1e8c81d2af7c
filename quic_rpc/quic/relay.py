"""Relay paths: QUIC connections whose packets travel through a third party.

A :class:`RelayPath` gives a :class:`~quic_rpc.quic.QUICSocket` a *virtual address*
(``relay-<label>.invalid``, a name that never resolves). Connections dialled to that
address, or accepted from it, are ordinary QUIC connections with their own end-to-end
TLS: the socket hands their datagrams to the path's ``send_fragment`` callable instead of
the UDP socket, and whatever carries the fragments (typically DATAGRAM frames on a
connection to a relay node) feeds the far side's fragments back with :meth:`receive`.
The relay only ever sees encrypted QUIC packets.

A carrier usually has less room than a QUIC packet (a DATAGRAM frame inside another QUIC
packet), so packets are split into at most 15 fragments of ``fragment_size`` bytes and
reassembled on arrival. Each fragment carries a 3-byte header::

    packet id (16 bits, big endian) | fragment index (high nibble) | count (low nibble)

A lost fragment loses its packet; QUIC's own loss recovery resends the data.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import QUICError

if TYPE_CHECKING:
    from .socket import QUICSocket

__all__ = [
    "FRAGMENT_HEADER_SIZE",
    "MAX_FRAGMENTS",
    "RELAY_HOST_SUFFIX",
    "RelayPath",
    "RelayPathError",
    "is_relay_host",
    "split_packet",
]

_log = logging.getLogger(__name__)

RELAY_HOST_SUFFIX = ".invalid"
"""Virtual relay hosts end in this reserved top-level domain (RFC 6761): never resolvable."""
FRAGMENT_HEADER_SIZE = 3
MAX_FRAGMENTS = 15
_MIN_FRAGMENT_SIZE = 64
_PENDING_PACKETS = 32
_RELAY_PORT = 1


class RelayPathError(QUICError):
    """A relay path was misused (bad label or fragment size, or it is closed)."""

    code = "relay_path"


def is_relay_host(host: str) -> bool:
    """Whether ``host`` is a virtual relay address (not a network address)."""
    return host.startswith("relay-") and host.endswith(RELAY_HOST_SUFFIX)


def split_packet(packet_id: int, data: bytes, fragment_size: int) -> list[bytes]:
    """``data`` as fragments of at most ``fragment_size`` bytes, header included."""
    room = fragment_size - FRAGMENT_HEADER_SIZE
    if room < 1:
        raise RelayPathError(f"fragment size {fragment_size} leaves no room for data")
    count = max(1, -(-len(data) // room))
    if count > MAX_FRAGMENTS:
        raise RelayPathError(f"a {len(data)}-byte packet needs more than {MAX_FRAGMENTS} fragments")
    pid = (packet_id & 0xFFFF).to_bytes(2, "big")
    return [
        pid + bytes([(index << 4) | count]) + data[index * room : (index + 1) * room]
        for index in range(count)
    ]


class _Reassembler:
    """Collects fragments into packets; keeps at most a few incomplete packets."""

    def __init__(self) -> None:
        self._pending: OrderedDict[int, tuple[int, dict[int, bytes]]] = OrderedDict()
        self.dropped = 0

    def feed(self, fragment: bytes) -> bytes | None:
        if len(fragment) <= FRAGMENT_HEADER_SIZE:
            self.dropped += 1
            return None
        packet_id = int.from_bytes(fragment[:2], "big")
        index, count = fragment[2] >> 4, fragment[2] & 0x0F
        if count == 0 or index >= count:
            self.dropped += 1
            return None
        body = fragment[FRAGMENT_HEADER_SIZE:]
        if count == 1:
            return body
        entry = self._pending.get(packet_id)
        if entry is None or entry[0] != count:
            if entry is not None:
                self.dropped += 1
            entry = (count, {})
            self._pending[packet_id] = entry
            while len(self._pending) > _PENDING_PACKETS:
                self._pending.popitem(last=False)
                self.dropped += 1
        parts = entry[1]
        parts[index] = body
        if len(parts) < count:
            return None
        del self._pending[packet_id]
        return b"".join(parts[i] for i in range(count))


class RelayPath:
    """A virtual address on ``socket`` whose datagrams go through ``send_fragment``.

    ``label`` names the far end (letters, digits and dashes); the address is
    ``("relay-<label>.invalid", 1)``. ``fragment_size`` is the largest fragment the
    carrier takes (header included). :meth:`open` registers the address on the socket,
    :meth:`close` removes it (connections on it then get no more packets and time out
    unless closed first).
    """

    def __init__(
        self,
        socket: QUICSocket,
        label: str,
        send_fragment: Callable[[bytes], None],
        *,
        fragment_size: int,
    ) -> None:
        if not label or not all(c.isascii() and (c.isalnum() or c == "-") for c in label):
            raise RelayPathError(f"a relay label is letters, digits and dashes, not {label!r}")
        if fragment_size < _MIN_FRAGMENT_SIZE:
            raise RelayPathError(f"fragment_size must be >= {_MIN_FRAGMENT_SIZE}")
        self._socket = socket
        self._send_fragment = send_fragment
        self._fragment_size = fragment_size
        self._address = (f"relay-{label}{RELAY_HOST_SUFFIX}", _RELAY_PORT)
        self._next_packet_id = 0
        self._reassembler = _Reassembler()
        self._open = False
        self.packets_sent = 0
        self.packets_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.send_errors = 0

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<RelayPath {self._address[0]} {state}>"

    @property
    def address(self) -> tuple[str, int]:
        """The virtual (host, port) to dial, and that accepted connections come from."""
        return self._address

    @property
    def host(self) -> str:
        return self._address[0]

    @property
    def port(self) -> int:
        return self._address[1]

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def fragments_dropped(self) -> int:
        """Fragments that could not be reassembled (malformed or their packet incomplete)."""
        return self._reassembler.dropped

    def open(self) -> None:
        """Register the virtual address on the socket."""
        if self._open:
            return
        self._socket._check_open()
        paths = self._socket._virtual_paths
        if self._address in paths:
            raise RelayPathError(f"{self._address[0]} is already registered on {self._socket!r}")
        paths[self._address] = self._send_packet
        self._open = True

    def close(self) -> None:
        """Unregister the virtual address; idempotent."""
        if not self._open:
            return
        self._open = False
        paths = self._socket._virtual_paths
        if paths.get(self._address) == self._send_packet:
            del paths[self._address]

    def receive(self, fragment: bytes) -> None:
        """A fragment arrived from the far end: reassemble and route it like a datagram."""
        if not self._open or not self._socket.is_open:
            return
        packet = self._reassembler.feed(fragment)
        if packet is None:
            return
        self.packets_received += 1
        self.bytes_received += len(packet)
        socket = self._socket
        socket._dispatch(packet, self._address, socket._loop.time())
        socket._schedule_flush(None)

    def _send_packet(self, packet: bytes) -> None:
        if not self._open:
            return
        packet_id = self._next_packet_id
        self._next_packet_id = (packet_id + 1) & 0xFFFF
        try:
            fragments = split_packet(packet_id, packet, self._fragment_size)
            for fragment in fragments:
                self._send_fragment(fragment)
        except Exception as exc:  # the carrier is gone or full: the packet is lost
            self.send_errors += 1
            _log.debug("%r: dropping a %d-byte packet: %s", self, len(packet), exc)
            return
        self.packets_sent += 1
        self.bytes_sent += len(packet)
