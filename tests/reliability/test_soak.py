"""Bounded soak: mixed unary / streaming / bulk traffic between three dual-stack agents on
loopback while their rollout stages change (dual <-> quic-preferred <-> quic-only) and one
agent restarts (stopped, down for a second, started again on the same ports and state).
Every logical message is sequence-numbered and accounted for (see ``soak.py``): nothing
lost, duplicated, reordered or corrupted; retried messages counted; no task, file
descriptor or unbounded memory left at the end.

* ``test_soak_short``: in CI, ``QUICSHIFT_SOAK_SECONDS`` (default 60) of traffic.
* ``test_soak_long``: ``@pytest.mark.soak``; runs only when ``QUICSHIFT_SOAK_LONG_SECONDS``
  is set (e.g. ``QUICSHIFT_SOAK_LONG_SECONDS=1800 pytest -m soak tests/reliability/test_soak.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .soak import SoakReport

MIB = 2**20


def _check(report: SoakReport) -> None:
    summary = report.summary()
    print("soak:", json.dumps(summary, sort_keys=True))
    assert not report.errors, summary  # no wrong, corrupted, duplicated or reordered answer
    assert not report.failed, (report.failed[:10], summary)  # every message got through
    # every logical message was delivered exactly once (sequence numbers 1..n per pair)
    assert sum(report.delivered.values()) == sum(report.sent.values()), summary
    for kind in ("echo", "notify", "scan", "pull"):
        assert report.delivered[kind] > 0, summary
    assert report.restarts == 1, summary
    assert {"dual", "quic-only"} <= report.stages_seen, summary  # both ends of the range
    assert report.retried_messages > 0, summary  # the restart really was noticed
    # leaks: descriptors back to where they were, memory growth bounded (generous)
    assert report.fds_after <= report.fds_before, summary
    assert report.rss_growth < 150 * MIB, summary
    assert report.traced_growth < 32 * MIB, summary
    assert report.objects_growth < 200_000, summary


ROOT = Path(__file__).resolve().parents[2]

# The soak runs in a process of its own: its leak and memory figures then measure the
# agents alone, not pytest's machinery (whose captured log records keep exception
# tracebacks — and through them stopped agents — alive until the test ends).
SOAK_SCRIPT = """
import asyncio, sys, tempfile, tracemalloc
from pathlib import Path
from tests.reliability.soak import run_soak
from tests.reliability.test_soak import _check

seconds, n_agents, trace = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "trace"
if trace:
    tracemalloc.start(1)
report = asyncio.run(run_soak(Path(tempfile.mkdtemp()), seconds, n_agents=n_agents))
_check(report)
print("SOAK OK")
"""


async def _run_soak_process(seconds: float, n_agents: int, trace: bool) -> None:
    args = [sys.executable, "-c", SOAK_SCRIPT, str(seconds), str(n_agents)]
    args.append("trace" if trace else "plain")
    result = await asyncio.to_thread(
        subprocess.run, args, cwd=ROOT, capture_output=True, text=True, check=False
    )
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stderr[-6000:] + result.stdout[-2000:]
    assert "SOAK OK" in result.stdout


async def test_soak_short() -> None:
    # no tracemalloc here: it slows the traffic four-fold; RSS and the number of live
    # objects are measured instead (the long soak traces allocations too)
    seconds = float(os.environ.get("QUICSHIFT_SOAK_SECONDS", "60"))
    await _run_soak_process(seconds, 3, trace=False)


@pytest.mark.soak
@pytest.mark.timeout(0)
@pytest.mark.skipif(
    not os.environ.get("QUICSHIFT_SOAK_LONG_SECONDS"),
    reason="long soak: set QUICSHIFT_SOAK_LONG_SECONDS (and run with -m soak)",
)
async def test_soak_long() -> None:
    seconds = float(os.environ["QUICSHIFT_SOAK_LONG_SECONDS"])
    await _run_soak_process(seconds, 4, trace=True)
