"""``python -m benchmarks.engines``: the sans-IO engine comparison runs and reports
consistent rows (no figure is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.engines import main, measure, render


def test_measure_runs_every_installed_engine() -> None:
    rows = measure(calls=50, mib=1)
    by_engine = {row["engine"]: row for row in rows}
    assert set(by_engine) == {"aioquic", "qh3"}
    aioquic = by_engine["aioquic"]
    assert aioquic["installed"] and aioquic["unary_speedup"] == 1.0
    for row in rows:
        if row["installed"]:
            assert row["unary_cpu_us_per_call"] > 0 and row["bulk_cpu_ms_per_mib"] > 0
    table = render(rows)
    assert table.count("\n") == len(rows) + 1
    assert "aioquic" in table


def test_main_writes_the_report(tmp_path: Path) -> None:
    assert main(["--calls", "20", "--mib", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "engines.json").read_text())
    assert report["benchmark"] == "engines" and report["mib"] == 1
    assert any(row["engine"] == "aioquic" for row in report["rows"])
