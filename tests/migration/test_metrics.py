"""Per-transport call metrics, the Prometheus exposition and its HTTP endpoint."""

from __future__ import annotations

import asyncio
import math
import re
import threading
from dataclasses import dataclass, field

import pytest

from migration import metrics
from migration.metrics import (
    CONTENT_TYPE,
    MetricsRegistry,
    MetricsServer,
    escape_label_value,
    observe_call,
    serve_metrics,
)
from quic_rpc.rpc import RPCError, Status

pytestmark = pytest.mark.timeout(60)

# -- a small, strict parser of the text exposition format (version 0.0.4) ----------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)')


@dataclass
class Family:
    help: str | None = None
    type: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        assert match is not None, f"bad labels at {text[pos:]!r}"
        name, value = match.group(1), _unescape(match.group(2))
        assert name not in labels
        labels[name] = value
        pos = match.end()
    return labels


def _family_of(name: str, families: dict[str, Family]) -> str:
    if name in families:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            return name[: -len(suffix)]
    raise AssertionError(f"sample {name} has no # HELP/# TYPE before it")


def parse_exposition(text: str) -> dict[str, Family]:
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    for line in text.splitlines():
        assert line == line.strip() and line, f"stray whitespace or empty line: {line!r}"
        if line.startswith("# HELP "):
            _, _, name, help_text = line.split(" ", 3)
            assert name not in families, f"{name} described twice"
            families[name] = Family(help=help_text)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert families[name].help is not None and families[name].type is None
            assert not families[name].samples, "TYPE must come before the samples"
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}
            families[name].type = kind
        else:
            match = _SAMPLE.match(line)
            assert match is not None, f"not a sample line: {line!r}"
            name, _, label_text, value = match.groups()
            family = families[_family_of(name, families)]
            assert family.type is not None
            family.samples.append((name, _parse_labels(label_text or ""), float(value)))
    return families


# -- recording -----------------------------------------------------------------------------


def _filled() -> MetricsRegistry:
    registry = MetricsRegistry(buckets=[0.01, 0.1, 1.0])
    registry.record_call("quic", "/pkg.Svc/Get", "OK", 0.005)
    registry.record_call("quic", "/pkg.Svc/Get", "OK", 0.05)
    registry.record_call("quic", "/pkg.Svc/Get", "NOT_FOUND", 0.5)
    registry.record_call("quic", "/pkg.Svc/Get", "UNAVAILABLE", 5.0)
    registry.record_call("grpc", "/pkg.Svc/Get", "OK", 0.1)  # on a bound: le="0.1"
    registry.record_fallback("quic", "grpc", "/pkg.Svc/Get", "timeout")
    registry.record_fallback(
        "quic", "grpc", "/pkg.Svc/Get", "connect failed: OSError: [Errno 111] refused"
    )
    registry.record_fallback("quic", "grpc", "/pkg.Svc/Get", "connect failed: reset")
    return registry


def test_snapshot() -> None:
    snap = _filled().snapshot()
    quic = snap["transports"]["quic"]["/pkg.Svc/Get"]
    assert quic["calls"] == 4
    assert quic["errors"] == {"NOT_FOUND": 1, "UNAVAILABLE": 1}
    assert quic["latency"]["count"] == 4
    assert quic["latency"]["sum"] == pytest.approx(5.555)
    assert quic["latency"]["buckets"] == [["0.01", 1], ["0.1", 2], ["1.0", 3], ["+Inf", 4]]
    grpc = snap["transports"]["grpc"]["/pkg.Svc/Get"]
    assert grpc["calls"] == 1 and grpc["errors"] == {}
    assert grpc["latency"]["buckets"] == [["0.01", 0], ["0.1", 1], ["1.0", 1], ["+Inf", 1]]
    assert snap["fallbacks"] == [
        {
            "from_transport": "quic",
            "to_transport": "grpc",
            "method": "/pkg.Svc/Get",
            "reason": "connect failed",
            "count": 2,
            "last_reason": "connect failed: reset",
        },
        {
            "from_transport": "quic",
            "to_transport": "grpc",
            "method": "/pkg.Svc/Get",
            "reason": "timeout",
            "count": 1,
            "last_reason": "timeout",
        },
    ]


def test_exposition_parses_back_line_by_line() -> None:
    text = _filled().render_prometheus()
    families = parse_exposition(text)
    assert set(families) == {
        "quicshift_calls_total",
        "quicshift_call_errors_total",
        "quicshift_call_latency_seconds",
        "quicshift_fallbacks_total",
    }
    assert families["quicshift_calls_total"].type == "counter"
    assert families["quicshift_call_latency_seconds"].type == "histogram"
    calls = {
        (labels["transport"], labels["method"]): value
        for _, labels, value in families["quicshift_calls_total"].samples
    }
    assert calls == {("grpc", "/pkg.Svc/Get"): 1, ("quic", "/pkg.Svc/Get"): 4}
    errors = {
        labels["code"]: value
        for _, labels, value in families["quicshift_call_errors_total"].samples
        if labels["transport"] == "quic"
    }
    assert errors == {"NOT_FOUND": 1, "UNAVAILABLE": 1}
    fallbacks = {
        labels["reason"]: value
        for _, labels, value in families["quicshift_fallbacks_total"].samples
    }
    assert fallbacks == {"timeout": 1, "connect failed": 2}


def test_histogram_lines_are_cumulative_and_consistent() -> None:
    families = parse_exposition(_filled().render_prometheus())
    samples = families["quicshift_call_latency_seconds"].samples
    for transport, observations in {"quic": 4, "grpc": 1}.items():
        mine = [(n, lab, v) for n, lab, v in samples if lab["transport"] == transport]
        buckets = [(lab["le"], v) for n, lab, v in mine if n.endswith("_bucket")]
        assert [le for le, _ in buckets] == ["0.01", "0.1", "1.0", "+Inf"]
        counts = [v for _, v in buckets]
        assert counts == sorted(counts)  # cumulative
        count = next(v for n, _, v in mine if n.endswith("_count"))
        total = next(v for n, _, v in mine if n.endswith("_sum"))
        assert counts[-1] == count == observations
        assert total > 0 and math.isfinite(total)
        # bucket lines carry the series labels plus le, the others do not carry le
        assert all("le" not in lab for n, lab, _ in mine if not n.endswith("_bucket"))


def test_label_values_are_escaped() -> None:
    registry = MetricsRegistry()
    nasty = '/we"ird\\Svc/Get\nline2'
    registry.record_call("quic", nasty, "OK", 0.001)
    text = registry.render_prometheus()
    assert '\\"' in text and "\\\\" in text and "\\n" in text
    assert escape_label_value(nasty) == '/we\\"ird\\\\Svc/Get\\nline2'
    families = parse_exposition(text)
    (_, labels, value) = families["quicshift_calls_total"].samples[0]
    assert labels == {"transport": "quic", "method": nasty} and value == 1


def test_empty_registry_still_describes_its_metrics() -> None:
    families = parse_exposition(MetricsRegistry().render_prometheus())
    assert all(f.type and f.help and not f.samples for f in families.values())
    assert len(families) == 4


def test_validation() -> None:
    registry = MetricsRegistry()
    with pytest.raises(ValueError, match="status code"):
        registry.record_call("quic", "/m", "NOPE", 0.1)
    with pytest.raises(ValueError, match="non-negative"):
        registry.record_call("quic", "/m", "OK", -1)
    with pytest.raises(ValueError, match="non-negative"):
        registry.record_call("quic", "/m", "OK", float("nan"))
    with pytest.raises(ValueError, match="transport"):
        registry.record_call("", "/m", "OK", 0.1)
    with pytest.raises(ValueError, match="reason"):
        registry.record_fallback("quic", "grpc", "/m", "")
    with pytest.raises(ValueError):
        MetricsRegistry(buckets=[1.0, 0.5])
    with pytest.raises(ValueError):
        MetricsRegistry(buckets=[])
    registry.record_call("quic", "/m", "not_found", 0.1)  # names are case-insensitive
    registry.record_call("quic", "/m", Status.UNAVAILABLE, 0.1)  # type: ignore[arg-type]
    assert registry.snapshot()["transports"]["quic"]["/m"]["errors"] == {
        "NOT_FOUND": 1,
        "UNAVAILABLE": 1,
    }


def test_thread_safe_counting() -> None:
    registry = MetricsRegistry()
    per_thread, threads = 2000, 8

    def work(index: int) -> None:
        transport = "quic" if index % 2 else "grpc"
        for i in range(per_thread):
            registry.record_call(transport, "/m", "OK" if i % 10 else "INTERNAL", 0.001)
            if i % 100 == 0:
                registry.record_fallback("quic", "grpc", "/m", "timeout")

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    snap = registry.snapshot()
    for transport in ("quic", "grpc"):
        entry = snap["transports"][transport]["/m"]
        assert entry["calls"] == per_thread * threads // 2
        assert entry["errors"] == {"INTERNAL": per_thread * threads // 2 // 10}
        assert entry["latency"]["count"] == entry["calls"]
    assert snap["fallbacks"][0]["count"] == threads * per_thread // 100


def test_module_level_hooks_use_the_default_registry() -> None:
    registry = MetricsRegistry()
    metrics.record_call("quic", "/m", "OK", 0.01, registry=registry)
    metrics.record_fallback("quic", "grpc", "/m", "status UNAVAILABLE", registry=registry)
    assert metrics.snapshot(registry)["fallbacks"][0]["reason"] == "status UNAVAILABLE"
    assert "quicshift_calls_total" in metrics.render_prometheus(registry)
    assert metrics.REGISTRY.buckets == metrics.DEFAULT_BUCKETS


async def test_observe_call() -> None:
    registry = MetricsRegistry()
    with observe_call("quic", "/m", registry=registry):
        await asyncio.sleep(0)
    with pytest.raises(RPCError), observe_call("quic", "/m", registry=registry):
        raise RPCError(Status.PERMISSION_DENIED, "no")
    with pytest.raises(TimeoutError), observe_call("quic", "/m", registry=registry):
        raise TimeoutError
    with pytest.raises(ValueError), observe_call("quic", "/m", registry=registry):
        raise ValueError("bug")
    with observe_call("grpc", "/m", registry=registry) as call:
        call.code = "ABORTED"
    snap = registry.snapshot()["transports"]
    assert snap["quic"]["/m"]["calls"] == 4
    assert snap["quic"]["/m"]["errors"] == {
        "DEADLINE_EXCEEDED": 1,
        "PERMISSION_DENIED": 1,
        "UNKNOWN": 1,
    }
    assert snap["grpc"]["/m"]["errors"] == {"ABORTED": 1}


# -- the HTTP endpoint -----------------------------------------------------------------------


async def _http(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        response = await reader.read()  # the server closes the connection
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return lines[0], headers, body


async def test_metrics_endpoint() -> None:
    registry = _filled()
    server = await serve_metrics("127.0.0.1", 0, registry=registry)
    port = server.port
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        status, headers, body = await _http(
            server.port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"] == CONTENT_TYPE
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert int(headers["content-length"]) == len(body)
        assert body.decode() == registry.render_prometheus()
        parse_exposition(body.decode())

        status, _, body = await _http(server.port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
        assert status.endswith("200 OK")
        status, _, body = await _http(server.port, b"GET / HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 404 Not Found"
        status, _, _ = await _http(server.port, b"GET /metricsx HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 404 Not Found"
        status, headers, _ = await _http(server.port, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 405 Method Not Allowed" and "GET" in headers["allow"]
        status, headers, body = await _http(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status.endswith("200 OK") and body == b"" and int(headers["content-length"]) > 0
        status, _, _ = await _http(server.port, b"garbage\r\n\r\n")
        assert status == "HTTP/1.1 400 Bad Request"
        # new calls show up on the next scrape
        registry.record_call("quic", "/pkg.Svc/New", "OK", 0.001)
        _, _, body = await _http(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert 'method="/pkg.Svc/New"' in body.decode()
    finally:
        await server.stop()
    with pytest.raises(RuntimeError, match="not listening"):
        _ = server.port
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_stop_closes_idle_connections_and_is_idempotent() -> None:
    async with MetricsServer("127.0.0.1", 0, registry=MetricsRegistry()) as server:
        port = server.port
        # a client that connects and says nothing: stop must not wait for it
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0)
        await server.stop()
        assert await reader.read() == b""  # closed by the server
        writer.close()
    await server.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
