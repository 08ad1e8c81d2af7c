"""Testing helpers shipped with quic_rpc for users' own tests.

* :mod:`~quic_rpc.testing.stream_conformance` — the conformance suite every
  :class:`~quic_rpc.streams.ByteStream` transport must pass.
* :mod:`~quic_rpc.testing.pki` — throw-away CAs, leaf certificates and PEM files
  for tests and benchmarks (never production keys).
"""

from quic_rpc.testing.stream_conformance import (
    Check,
    Cleanup,
    ConformanceError,
    ConformanceOptions,
    PairFactory,
    iter_checks,
    run_all,
)

__all__ = [
    "Check",
    "Cleanup",
    "ConformanceError",
    "ConformanceOptions",
    "PairFactory",
    "iter_checks",
    "run_all",
]
