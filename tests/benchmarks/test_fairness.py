"""``python -m benchmarks.fairness``: two bulk flows sharing the emulated link.

The arithmetic and the flow specs are tested directly; one short run across a real
lossy link (network namespaces, root) checks that both flows carry data and the report
adds up. No figure is asserted: the split is what the benchmark reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.fairness import counters, goodput, jain, parse_pair, render

from .test_lossy_link import require_link

ROOT = Path(__file__).resolve().parents[2]


def test_pairs_parse_and_map_to_counters() -> None:
    pair = parse_pair("quic:bbr+tcp:cubic")
    assert pair == (("quic", "bbr"), ("tcp", "cubic"))
    assert counters(pair) == ["quic", "tcp1"]
    assert counters(parse_pair("tcp:bbr+tcp:cubic")) == ["tcp1", "tcp2"]
    for bad in ("quic:bbr", "quic:vegas+tcp:cubic", "udp:bbr+tcp:cubic", "quic:bbr+quic:cubic"):
        with pytest.raises(ValueError):
            parse_pair(bad)


def test_goodput_skips_the_warmup_and_jain_spans_half_to_one() -> None:
    samples = [{"t": t, "quic": int(t * 1_000_000)} for t in (0.0, 1.0, 2.0, 3.0)]
    samples[0]["quic"] = 5_000_000  # a burst inside the warm-up is not counted
    assert goodput(samples, "quic", warmup=1.0) == pytest.approx(8.0)  # 1 MB/s
    assert goodput(samples[:1], "quic", warmup=0.0) == 0.0
    assert jain(10, 10) == 1.0
    assert jain(10, 0) == 0.5
    assert jain(0, 0) == 0.0
    row = {
        "loss_pct": 1.0,
        "pair": "quic:bbr+tcp:cubic",
        "alone_mbit": [46.0, 3.0],
        "together_mbit": [40.0, 2.0],
        "first_share": 0.952,
        "jain": 0.55,
    }
    assert "| 1% | quic:bbr + tcp:cubic | 46.0 | 3.0 | 40.0 / 2.0 | 95% | 0.55 |" in render([row])


@pytest.mark.netns
@pytest.mark.timeout(240)
def test_a_short_run_carries_both_flows_and_reports_their_shares(tmp_path: Path) -> None:
    require_link()
    argv = ["--seconds", "4", "--loss", "0", "--pairs", "quic:bbr+tcp:cubic"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fairness", *argv, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=220,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads((tmp_path / "fairness.json").read_text())["rows"]
    assert row["pair"] == "quic:bbr+tcp:cubic" and row["loss_pct"] == 0.0
    assert all(mbit > 0 for mbit in row["alone_mbit"] + row["together_mbit"]), row
    a, b = row["together_mbit"]
    assert row["first_share"] == pytest.approx(a / (a + b), abs=0.001)
    assert 0.5 <= row["jain"] <= 1.0
    assert "| 0% | quic:bbr + tcp:cubic |" in proc.stdout
