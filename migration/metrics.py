"""Per-transport, per-method call metrics and a Prometheus text endpoint.

What is counted (metric names are stable; operators alert on them):

* ``quicshift_calls_total{transport,method}`` — calls completed (any status);
* ``quicshift_call_errors_total{transport,method,code}`` — calls that ended with a
  non-OK status, by status code name;
* ``quicshift_call_latency_seconds{transport,method}`` — a latency histogram
  (cumulative ``_bucket{le=...}``, ``_sum``, ``_count``);
* ``quicshift_fallbacks_total{from_transport,to_transport,method,reason}`` — dials that
  gave up on one transport and tried the next; ``reason`` is the kind (``timeout``,
  ``status UNAVAILABLE``, ``connect failed``, ...), the full text of the latest one is in
  :meth:`MetricsRegistry.snapshot`.

Hook design: a client-side interceptor or quic_rpc middleware calls :func:`record_call`
once per finished call (or wraps the call in :func:`observe_call`), and the
transport-choosing dialler calls :func:`record_fallback` before each fallback. Both
write to :data:`REGISTRY` unless given another :class:`MetricsRegistry`. Everything is
thread-safe (sync grpc servicers record from pool threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "REGISTRY",
    "STATUS_CODE_NAMES",
    "CallObservation",
    "MetricsRegistry",
    "MetricsServer",
    "escape_label_value",
    "observe_call",
    "record_call",
    "record_fallback",
    "render_prometheus",
    "serve_metrics",
    "snapshot",
    "status_name_of",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
STATUS_CODE_NAMES: Final[tuple[str, ...]] = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
_STATUS_SET: Final = frozenset(STATUS_CODE_NAMES)

CALLS: Final = "quicshift_calls_total"
ERRORS: Final = "quicshift_call_errors_total"
LATENCY: Final = "quicshift_call_latency_seconds"
FALLBACKS: Final = "quicshift_fallbacks_total"
_HELP: Final[dict[str, tuple[str, str]]] = {
    CALLS: ("counter", "RPC calls completed, by transport and method."),
    ERRORS: ("counter", "RPC calls that ended with a non-OK status, by status code."),
    LATENCY: ("histogram", "RPC call latency in seconds, by transport and method."),
    FALLBACKS: ("counter", "Dials that fell back from one transport to the next, by reason."),
}


# -- validation and formatting -----------------------------------------------------------------


def _label(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _status(code: object) -> str:
    name = getattr(code, "name", code)
    if not isinstance(name, str) or name.upper() not in _STATUS_SET:
        raise ValueError(f"unknown status code {code!r}; expected a gRPC status code name")
    return name.upper()


def status_name_of(exc: BaseException) -> str | None:
    """The status code name an error carries — grpc-style ``exc.code()`` or quic_rpc's
    ``exc.status`` — duck-typed (no grpc import); ``None`` when it carries none."""
    code: object = getattr(exc, "code", None)
    if code is None:
        code = getattr(exc, "status", None)
    if callable(code) and not isinstance(code, type):
        try:
            code = code()
        except Exception:
            return None
    if isinstance(code, str):  # many errors carry a lower-case error code string instead
        return None
    name = getattr(code, "name", None)
    return name if isinstance(name, str) and name in _STATUS_SET else None


def fallback_reason_kind(reason: str) -> str:
    """The bounded label value for a fallback reason: the text before the first ``:``."""
    kind = reason.split(":", 1)[0].strip()
    return kind or "unspecified"


def escape_label_value(value: str) -> str:
    """Escape a label value for the text exposition format (``\\``, ``"``, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_float(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    inner = ",".join(f'{key}="{escape_label_value(value)}"' for key, value in pairs)
    return "{" + inner + "}" if inner else ""


# -- the registry ------------------------------------------------------------------------------


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; +Inf last
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        index = len(self.bounds)
        for i, bound in enumerate(self.bounds):
            if seconds <= bound:
                index = i
                break
        self.counts[index] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        running = 0
        out: list[tuple[float, int]] = []
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass
class _Fallbacks:
    count: int = 0
    last_reason: str = ""


class MetricsRegistry:
    """Call and fallback metrics for one process (or one agent)."""

    def __init__(self, buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds:
            raise ValueError("a histogram needs at least one bucket bound")
        if any(not math.isfinite(b) or b <= 0 for b in bounds):
            raise ValueError("bucket bounds must be positive and finite (+Inf is implicit)")
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must be strictly increasing")
        self._bounds = bounds
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str], int] = {}
        self._errors: dict[tuple[str, str, str], int] = {}
        self._latency: dict[tuple[str, str], _Histogram] = {}
        self._fallbacks: dict[tuple[str, str, str, str], _Fallbacks] = {}
        self._last_call: dict[str, float] = {}  # transport -> time.monotonic()

    @property
    def buckets(self) -> tuple[float, ...]:
        return self._bounds

    def record_call(
        self, transport: str, method: str, status_code_name: str, seconds: float
    ) -> None:
        """One finished call: its transport, method, final status and duration."""
        transport = _label("transport", transport)
        method = _label("method", method)
        code = _status(status_code_name)
        if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite non-negative number, got {seconds!r}")
        key = (transport, method)
        with self._lock:
            self._calls[key] = self._calls.get(key, 0) + 1
            self._last_call[transport] = time.monotonic()
            if code != "OK":
                error_key = (transport, method, code)
                self._errors[error_key] = self._errors.get(error_key, 0) + 1
            histogram = self._latency.get(key)
            if histogram is None:
                histogram = self._latency[key] = _Histogram(self._bounds)
            histogram.observe(float(seconds))

    def record_fallback(
        self, from_transport: str, to_transport: str, method: str, reason: str
    ) -> None:
        """One dial that gave up on ``from_transport`` and tries ``to_transport``."""
        key = (
            _label("from_transport", from_transport),
            _label("to_transport", to_transport),
            _label("method", method),
            fallback_reason_kind(_label("reason", reason)),
        )
        with self._lock:
            entry = self._fallbacks.get(key)
            if entry is None:
                entry = self._fallbacks[key] = _Fallbacks()
            entry.count += 1
            entry.last_reason = reason

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._errors.clear()
            self._latency.clear()
            self._fallbacks.clear()
            self._last_call.clear()

    def calls_by_transport(self) -> dict[str, dict[str, Any]]:
        """Per transport: calls recorded and seconds since the last one (``None`` if
        none), e.g. ``{"grpc": {"calls": 3, "last_call_age": 12.5}}`` — what
        ``quicshift cutover check`` reads to tell whether gRPC was used recently."""
        now = time.monotonic()
        with self._lock:
            totals: dict[str, int] = {}
            for (transport, _), calls in self._calls.items():
                totals[transport] = totals.get(transport, 0) + calls
            return {
                transport: {
                    "calls": totals.get(transport, 0),
                    "last_call_age": (
                        None
                        if transport not in self._last_call
                        else now - self._last_call[transport]
                    ),
                }
                for transport in sorted(set(totals) | set(self._last_call))
            }

    def snapshot(self) -> dict[str, Any]:
        """Everything, as plain JSON-able data::

        {"transports": {transport: {method: {"calls", "errors": {code: n},
                                             "latency": {"count", "sum", "buckets"}}}},
         "fallbacks": [{"from_transport", "to_transport", "method", "reason",
                        "count", "last_reason"}]}
        """
        with self._lock:
            transports: dict[str, dict[str, Any]] = {}
            for (transport, method), calls in sorted(self._calls.items()):
                histogram = self._latency[(transport, method)]
                errors = {
                    code: n
                    for (t, m, code), n in sorted(self._errors.items())
                    if (t, m) == (transport, method)
                }
                transports.setdefault(transport, {})[method] = {
                    "calls": calls,
                    "errors": errors,
                    "latency": {
                        "count": histogram.count,
                        "sum": histogram.total,
                        "buckets": [
                            [_format_float(bound), n] for bound, n in histogram.cumulative()
                        ],
                    },
                }
            fallbacks = [
                {
                    "from_transport": src,
                    "to_transport": dst,
                    "method": method,
                    "reason": reason,
                    "count": entry.count,
                    "last_reason": entry.last_reason,
                }
                for (src, dst, method, reason), entry in sorted(self._fallbacks.items())
            ]
        return {"transports": transports, "fallbacks": fallbacks}

    def render_prometheus(self) -> str:
        """The metrics in the Prometheus text exposition format, version 0.0.4."""
        with self._lock:
            calls = sorted(self._calls.items())
            errors = sorted(self._errors.items())
            latency = sorted(
                (key, h.cumulative(), h.total, h.count) for key, h in self._latency.items()
            )
            fallbacks = sorted((key, entry.count) for key, entry in self._fallbacks.items())
        lines: list[str] = []

        def header(name: str) -> None:
            kind, text = _HELP[name]
            lines.append(f"# HELP {name} {_escape_help(text)}")
            lines.append(f"# TYPE {name} {kind}")

        header(CALLS)
        for (transport, method), n in calls:
            lines.append(f"{CALLS}{_labels([('transport', transport), ('method', method)])} {n}")
        header(ERRORS)
        for (transport, method, code), n in errors:
            labels = _labels([("transport", transport), ("method", method), ("code", code)])
            lines.append(f"{ERRORS}{labels} {n}")
        header(LATENCY)
        for (transport, method), buckets, total, count in latency:
            base = [("transport", transport), ("method", method)]
            for bound, n in buckets:
                lines.append(
                    f"{LATENCY}_bucket{_labels([*base, ('le', _format_float(bound))])} {n}"
                )
            lines.append(f"{LATENCY}_sum{_labels(base)} {_format_float(total)}")
            lines.append(f"{LATENCY}_count{_labels(base)} {count}")
        header(FALLBACKS)
        for (src, dst, method, reason), n in fallbacks:
            labels = _labels(
                [
                    ("from_transport", src),
                    ("to_transport", dst),
                    ("method", method),
                    ("reason", reason),
                ]
            )
            lines.append(f"{FALLBACKS}{labels} {n}")
        return "\n".join(lines) + "\n"


REGISTRY: Final = MetricsRegistry()
"""The process-wide registry the module-level functions write to."""


def record_call(
    transport: str,
    method: str,
    status_code_name: str,
    seconds: float,
    *,
    registry: MetricsRegistry | None = None,
) -> None:
    """Record one finished call (see :meth:`MetricsRegistry.record_call`)."""
    (registry or REGISTRY).record_call(transport, method, status_code_name, seconds)


def record_fallback(
    from_transport: str,
    to_transport: str,
    method: str,
    reason: str,
    *,
    registry: MetricsRegistry | None = None,
) -> None:
    """Record one fallback (see :meth:`MetricsRegistry.record_fallback`)."""
    (registry or REGISTRY).record_fallback(from_transport, to_transport, method, reason)


def snapshot(registry: MetricsRegistry | None = None) -> dict[str, Any]:
    return (registry or REGISTRY).snapshot()


def render_prometheus(registry: MetricsRegistry | None = None) -> str:
    return (registry or REGISTRY).render_prometheus()


class CallObservation:
    """Times one call and records it on exit; the status comes from the exception
    (``status_name_of``; timeouts are DEADLINE_EXCEEDED, cancellation CANCELLED, any
    other error UNKNOWN) unless :attr:`code` is set explicitly. Exceptions propagate."""

    def __init__(self, registry: MetricsRegistry, transport: str, method: str) -> None:
        self._registry = registry
        self.transport = _label("transport", transport)
        self.method = _label("method", method)
        self.code: str | None = None
        self._start = 0.0

    def __enter__(self) -> CallObservation:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = max(0.0, time.perf_counter() - self._start)
        code = self.code
        if code is None:
            if exc is None:
                code = "OK"
            elif isinstance(exc, asyncio.CancelledError):
                code = "CANCELLED"
            elif isinstance(exc, TimeoutError):
                code = "DEADLINE_EXCEEDED"
            else:
                code = status_name_of(exc) or "UNKNOWN"
        self._registry.record_call(self.transport, self.method, code, elapsed)


def observe_call(
    transport: str, method: str, *, registry: MetricsRegistry | None = None
) -> CallObservation:
    """``with observe_call("quic", "/pkg.Svc/Method"): await stub.Method(req)``."""
    return CallObservation(registry or REGISTRY, transport, method)


# -- the HTTP endpoint -------------------------------------------------------------------------

_MAX_HEAD: Final = 8192
_READ_TIMEOUT: Final = 5.0


class MetricsServer:
    """A tiny HTTP/1.1 server: ``GET /metrics`` → the exposition text; 404 elsewhere."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, registry: MetricsRegistry | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._registry = registry or REGISTRY
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the metrics server is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        if self._server is not None or self._closed:
            raise RuntimeError("a MetricsServer starts once")
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, limit=_MAX_HEAD
        )

    async def stop(self) -> None:
        """Stop listening and close every open connection; idempotent."""
        self._closed = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - start_server always runs a task
            writer.close()
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the client went away or said nothing in time: just close
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, "Request Header Fields Too Large", b"headers too large\n")
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await _respond(writer, 400, "Bad Request", b"bad request\n")
            return
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if path != "/metrics":
            await _respond(writer, 404, "Not Found", b"not found; try /metrics\n")
            return
        if method not in ("GET", "HEAD"):
            await _respond(writer, 405, "Method Not Allowed", b"use GET\n", allow="GET, HEAD")
            return
        body = self._registry.render_prometheus().encode()
        await _respond(
            writer, 200, "OK", body, content_type=CONTENT_TYPE, head_only=method == "HEAD"
        )


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    reason: str,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    allow: str | None = None,
    head_only: bool = False,
) -> None:
    headers = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow is not None:
        headers.append(f"Allow: {allow}")
    writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    await writer.drain()


async def serve_metrics(
    host: str = "127.0.0.1", port: int = 0, *, registry: MetricsRegistry | None = None
) -> MetricsServer:
    """Start serving ``registry`` (default :data:`REGISTRY`) on ``host:port`` (0 picks a
    free port; read it from ``.port``). ``await server.stop()`` to stop."""
    server = MetricsServer(host, port, registry)
    await server.start()
    return server
