"""Helpers shared by the benchmarks: test certificates, percentiles, machine description.

Everything here is plain data or files; nothing starts a server. The certificates come
from :mod:`quic_rpc.testing.pki`.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "LatencySummary",
    "machine_info",
    "percentile",
    "summarize_latencies",
    "write_certs",
]

ROOT = Path(__file__).resolve().parent.parent

_PACKAGES = (
    "quicshift",
    "grpcio",
    "aioquic",
    "qh3",
    "protobuf",
    "cryptography",
    "psutil",
    "uvloop",
    "matplotlib",
)

LatencySummary = dict[str, float]


def write_certs(directory: Path, extra_ips: Sequence[str] = ()) -> None:
    """A P-256 CA and ``server``/``client`` leaves (SAN localhost, 127.0.0.1, ::1) as PEM files.

    ``extra_ips`` are added to the leaves' SAN (the lossy link's server address).
    Files: ``ca.pem``, ``server.pem``, ``server.key``, ``client.pem``, ``client.key``.
    """
    from quic_rpc.testing.pki import DEFAULT_HOSTS, PemFiles, issue_server_and_client

    hosts = (*DEFAULT_HOSTS, *extra_ips)
    certs = issue_server_and_client("quicshift-bench-ca", server_hosts=hosts, client_hosts=hosts)
    PemFiles.write(directory, certs)


def percentile(sorted_samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted samples (``pct`` in 0..100)."""
    if not sorted_samples:
        raise ValueError("no samples")
    index = min(len(sorted_samples) - 1, max(0, round(pct / 100 * (len(sorted_samples) - 1))))
    return sorted_samples[index]


def summarize_latencies(samples_s: Sequence[float]) -> LatencySummary:
    """p50 / p90 / p99 / max / mean of latencies given in seconds, reported in µs."""
    ordered = sorted(samples_s)
    return {
        "p50_us": round(percentile(ordered, 50) * 1e6, 1),
        "p90_us": round(percentile(ordered, 90) * 1e6, 1),
        "p99_us": round(percentile(ordered, 99) * 1e6, 1),
        "max_us": round(ordered[-1] * 1e6, 1),
        "mean_us": round(statistics.fmean(ordered) * 1e6, 1),
        "samples": len(ordered),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _quic_engine() -> str:
    """The engine under quic_rpc.quic (aioquic today; qh3 when it becomes selectable)."""
    try:
        from quic_rpc.quic import engine
    except Exception as exc:
        return f"unavailable ({type(exc).__name__})"
    name = getattr(engine, "ENGINE_NAME", None)
    if isinstance(name, str):
        return name
    return "qh3" if "qh3" in sys.modules else "aioquic"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": _versions(),
        "quic_engine": _quic_engine(),
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import psutil  # type: ignore[import-untyped]

        info["memory_total_mib"] = psutil.virtual_memory().total // (1 << 20)
    except ImportError:
        pass
    return info
