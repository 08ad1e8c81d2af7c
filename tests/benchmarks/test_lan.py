"""``python -m benchmarks.lan``: bulk uploads across veth LANs with path MTU discovery.

The row selection and the arithmetic are tested directly; one short run across real
namespaces (root) checks that the uploads complete and that discovery ends where the
path says: 8,952 bytes on a jumbo LAN, at most 1,472 behind a 1500-MTU hop. No figure
is asserted: throughput and CPU are what the benchmark reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import lan
from benchmarks.lan import (
    ROWS,
    cpu_us_per_mib,
    mbit_per_s,
    path_limit,
    render,
    select_rows,
    warmup_bytes,
)

from .netns import namespaces, require

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def require_lan() -> None:
    require(lan.available, "LAN")


def test_rows_are_selected_by_id_in_table_order() -> None:
    assert [r.id for r in select_rows("all")] == [r.id for r in ROWS]
    assert [r.id for r in select_rows("4,3")] == ["3", "4"]
    assert [r.id for r in select_rows("5")] == ["5a", "5b", "5c", "5d"]
    assert [r.id for r in select_rows("1, 5b")] == ["1", "5b"]
    for bad in ("", "6", "3,x", "5e"):
        with pytest.raises(ValueError):
            select_rows(bad)
    by_id = {r.id: r for r in ROWS}
    assert by_id["3"].max_datagram_size == 8952 and by_id["3"].hop_mtu is None
    assert by_id["4"].hop_mtu == 1500 and by_id["4"].mtu == 9000
    assert by_id["2"].max_datagram_size is None and by_id["2"].mtu == 9000
    assert by_id["4"].path == "LAN 9000 via a 1500 hop"
    assert by_id["3"].label == "QUIC, max_datagram_size=8952"


def test_arithmetic() -> None:
    assert warmup_bytes(256 * MIB) == 16 * MIB
    assert warmup_bytes(4 * MIB) == MIB  # at most a quarter
    assert path_limit(select_rows("3")[0]) == 8972
    assert path_limit(select_rows("4")[0]) == 1472  # the narrow hop, not the first link
    assert path_limit(select_rows("1")[0]) == 1472
    assert mbit_per_s(125_000_000, 1.0) == 1000.0
    assert mbit_per_s(1, 0.0) == 0.0
    assert cpu_us_per_mib(0.5, 10 * MIB) == 50_000.0
    assert cpu_us_per_mib(1.0, 0) == 0.0


def test_render_shows_quic_and_tcp_columns() -> None:
    quic = {
        "row": "3",
        "path": "LAN 9000",
        "stack": "QUIC, max_datagram_size=8952",
        "mbit_per_s": 512.34,
        "client_cpu_us_per_mib": 15000.4,
        "server_cpu_us_per_mib": 12000.0,
        "datagram_size": [8952, 8952],
        "pmtu_probes_lost": [0, 1],
        "datagrams_sent": [30000, 900],
    }
    tcp = {
        "row": "5b",
        "path": "LAN 9000",
        "stack": "plain TCP",
        "mbit_per_s": 25000.0,
        "client_cpu_us_per_mib": 330.0,
        "server_cpu_us_per_mib": 170.0,
        "mss": [8948, 8948],
    }
    failed = {"row": "4", "path": "LAN 9000 via a 1500 hop", "stack": "QUIC", "error": "boom"}
    table = render([quic, tcp, failed])
    assert (
        "| 3 | LAN 9000 | QUIC, max_datagram_size=8952 | 512.3 | 15,000 | 12,000 "
        "| 8,952 / 8,952 | 0 / 1 | 30,000 / 900 |" in table
    )
    assert "| 5b | LAN 9000 | plain TCP | 25,000.0 | 330 | 170 | 8,948 / 8,948 | - / - |" in table
    assert "| 4 | LAN 9000 via a 1500 hop | QUIC | error: boom |" in table


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_a_short_run_completes_and_discovery_ends_at_the_path_size(tmp_path: Path) -> None:
    require_lan()
    argv = ["--mib", "4", "--rows", "3,4", "--out", str(tmp_path)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.lan", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        out, err = proc.communicate(timeout=100)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    assert not {ns for ns in namespaces() if ns.startswith(f"qsbl-{proc.pid}-")}

    result = json.loads((tmp_path / "lan.json").read_text())
    assert result["benchmark"] == "lan" and result["mib"] == 4
    jumbo, narrow = result["rows"]
    for row in (jumbo, narrow):
        assert "error" not in row, row
        assert row["bytes"] == 4 * MIB, row
        assert 0 < row["timed_bytes"] <= 4 * MIB, row
        assert row["pacing"] is True and row["pmtu_discovery"] is True, row
        assert row["datagrams_sent"][0] > 0 and row["datagrams_received"][1] > 0, row
    assert jumbo["row"] == "3" and jumbo["datagram_size"] == [8952, 8952], jumbo
    assert narrow["row"] == "4", narrow
    assert all(1200 <= size <= 1472 for size in narrow["datagram_size"]), narrow
    assert "| 3 | LAN 9000 | QUIC, max_datagram_size=8952 |" in out
