"""Configuration: frozen, validated dataclasses with documented defaults."""

from __future__ import annotations

from dataclasses import dataclass

from .frames import (
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_METADATA_ENTRIES,
    MAX_FRAME_LENGTH,
)

__all__ = ["RPCClientConfig", "RPCServerConfig"]


def _check_positive(name: str, value: int | float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _check_size(name: str, value: int | None, *, allow_none: bool = False) -> None:
    _check_positive(name, value, allow_none=allow_none)
    if value is not None and (not isinstance(value, int) or value > MAX_FRAME_LENGTH):
        raise ValueError(f"{name} must be an int no larger than {MAX_FRAME_LENGTH}")


@dataclass(frozen=True, slots=True)
class RPCServerConfig:
    """Server limits.

    * ``max_receive_message_size`` (4 MiB): larger requests end the call with
      RESOURCE_EXHAUSTED; the connection and its other calls are unaffected.
    * ``max_send_message_size`` (None = only the wire limit, 4 GiB - 1): larger responses
      end the call with RESOURCE_EXHAUSTED.
    * ``max_header_size`` (16 KiB) / ``max_metadata_entries`` (64): per header frame.
    * ``max_concurrent_calls_per_connection`` (256): further streams on the same connection
      are answered with RESOURCE_EXHAUSTED until a call ends. A call gives its slot back
      as soon as its response is complete (before its trailer is written), so a client
      that starts a new call on reading a trailer is never refused. The default equals
      the QUIC transport's stream limit (``QUICConfig.max_streams``, 256): keep it no
      lower, or callers the transport admits get RESOURCE_EXHAUSTED instead of waiting
      for a stream; raise both together.
    * ``handler_timeout`` (None): an upper bound on every call's duration; the server
      uses the tighter of it, the handler's own ``timeout`` and the client's deadline.
    * ``header_timeout`` (10 s): a stream must deliver its request header within this.
    * ``request_buffer_size`` (16): request messages read ahead of a streaming handler
      (backpressure: past it the server stops reading, so a client's reset is noticed
      once the handler has drained them).
    * ``receive_chunk_size`` (64 KiB): bytes asked of the transport per read.
    * ``shutdown_timeout`` (5 s): how long ``stop()`` waits for cancelled handlers to
      finish before it aborts their streams.
    * ``close_linger`` (1 s): after the trailer, how long to wait for the client to
      half-close before the server stops reading (0: stop at once). Saves a STOP_SENDING
      per call; the call's slot is held meanwhile.
    * ``expose_exception_details`` (False): put ``repr(exc)`` of unexpected handler
      exceptions into the INTERNAL status details (debugging only).
    """

    max_receive_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_send_message_size: int | None = None
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    max_metadata_entries: int = DEFAULT_MAX_METADATA_ENTRIES
    max_concurrent_calls_per_connection: int = 256
    handler_timeout: float | None = None
    header_timeout: float | None = 10.0
    request_buffer_size: int = 16
    receive_chunk_size: int = 65536
    shutdown_timeout: float = 5.0
    close_linger: float = 1.0
    expose_exception_details: bool = False

    def __post_init__(self) -> None:
        _check_size("max_receive_message_size", self.max_receive_message_size)
        _check_size("max_send_message_size", self.max_send_message_size, allow_none=True)
        _check_size("max_header_size", self.max_header_size)
        _check_size("max_metadata_entries", self.max_metadata_entries)
        _check_size("max_concurrent_calls_per_connection", self.max_concurrent_calls_per_connection)
        _check_positive("handler_timeout", self.handler_timeout, allow_none=True)
        _check_positive("header_timeout", self.header_timeout, allow_none=True)
        _check_size("request_buffer_size", self.request_buffer_size)
        _check_size("receive_chunk_size", self.receive_chunk_size)
        _check_positive("shutdown_timeout", self.shutdown_timeout)
        if not isinstance(self.close_linger, int | float) or self.close_linger < 0:
            raise ValueError(f"close_linger must be >= 0, got {self.close_linger!r}")


@dataclass(frozen=True, slots=True)
class RPCClientConfig:
    """Client limits and defaults.

    * ``max_receive_message_size`` (4 MiB): larger responses end the call with
      RESOURCE_EXHAUSTED (the stream is reset; the connection stays usable).
    * ``max_send_message_size`` (None = only the wire limit): larger requests fail locally
      with RESOURCE_EXHAUSTED before anything is sent.
    * ``max_header_size`` (16 KiB) / ``max_metadata_entries`` (64): per received header frame.
    * ``default_timeout`` (None): used when a call passes no ``timeout``.
    * ``response_buffer_size`` (16): response messages read ahead of a streaming caller.
    * ``receive_chunk_size`` (64 KiB): bytes asked of the transport per read.
    * ``transparent_retries`` (1): how many more times a call the server refused before
      processing it is sent on a new stream, without the caller noticing (0: never).
      Only calls whose request can be replayed: any kind when the stream could not be
      opened or its header not sent; unary and server-streaming calls (whose request
      the client holds) also when the stream is refused before any byte of the
      response arrived. Never after a response byte, and never a client-streaming or
      duplex call once its requests may have been consumed. The call's deadline still
      bounds the whole call, retries included. A refusal that is not retried raises
      :class:`~quic_rpc.rpc.errors.CallRefusedError` (UNAVAILABLE).
    """

    max_receive_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_send_message_size: int | None = None
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    max_metadata_entries: int = DEFAULT_MAX_METADATA_ENTRIES
    default_timeout: float | None = None
    response_buffer_size: int = 16
    receive_chunk_size: int = 65536
    transparent_retries: int = 1

    def __post_init__(self) -> None:
        _check_size("max_receive_message_size", self.max_receive_message_size)
        _check_size("max_send_message_size", self.max_send_message_size, allow_none=True)
        _check_size("max_header_size", self.max_header_size)
        _check_size("max_metadata_entries", self.max_metadata_entries)
        _check_positive("default_timeout", self.default_timeout, allow_none=True)
        _check_size("response_buffer_size", self.response_buffer_size)
        _check_size("receive_chunk_size", self.receive_chunk_size)
        retries = self.transparent_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"transparent_retries must be an int >= 0, got {retries!r}")
