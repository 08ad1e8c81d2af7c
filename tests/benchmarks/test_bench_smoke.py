"""Smoke tests of ``python -m benchmarks``: files produced and well-formed, never timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.report import BASELINE, build_report, render_markdown
from benchmarks.stacks import STACKS
from benchmarks.workloads import METRICS, TARGETS, WORKLOADS, workload_params

ROOT = Path(__file__).resolve().parents[2]


def _machine() -> dict[str, Any]:
    return {"cpu_count": 2, "cpu_model": "test", "kernel": "0", "python": "3", "quic_engine": "x"}


def _report(results: dict[str, Any]) -> dict[str, Any]:
    return build_report(
        results,
        mode="quick",
        scale=1.0,
        command="python -m benchmarks --quick",
        machine=_machine(),
        params={},
        started_utc="2026-01-01T00:00:00Z",
        duration_s=1.0,
    )


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_quick_run_writes_json_markdown(tmp_path: Path) -> None:
    stacks = ["grpc-direct", "native-quic"]
    workloads = ["unary", "stream"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--scale",
            "0.05",
            "--workloads",
            ",".join(workloads),
            "--stacks",
            ",".join(stacks),
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "stacks-quick.json").read_text())
    assert report["mode"] == "quick"
    assert report["baseline"] == BASELINE
    for key in ("cpu_count", "cpu_model", "kernel", "python", "packages", "quic_engine"):
        assert key in report["machine"]
    assert list(report["results"]) == stacks
    for stack in stacks:
        assert set(report["results"][stack]) == set(workloads)
        for workload in workloads:
            result = report["results"][stack][workload]
            if "error" in result:
                assert isinstance(result["error"], str) and result["error"]
                continue
            for metric in METRICS:
                if metric.workload == workload and not metric.key.startswith("resumed"):
                    assert isinstance(result[metric.key], int | float), (stack, metric.key)
                    assert result[metric.key] > 0
    assert any("error" not in r for per in report["results"].values() for r in per.values()), (
        report["results"]
    )
    markdown = (tmp_path / "latest.md").read_text()
    assert "| metric | unit | `grpc-direct` | `native-quic` |" in markdown
    assert "| unary p50 | µs |" in markdown
    assert "| server streaming | msgs/s |" in markdown


def test_quick_params_scale_down_and_stay_positive() -> None:
    full = workload_params(False)
    quick = workload_params(True)
    tiny = workload_params(True, 0.05)
    assert set(full) == set(WORKLOADS)
    assert full["bulk"]["bytes"] == 256 << 20 and quick["bulk"]["bytes"] == 16 << 20
    assert full["idle"]["connections"] == 1000 and quick["idle"]["connections"] == 100
    assert full["stream"]["messages"] == 100_000
    for workload, params in tiny.items():
        for key, value in params.items():
            assert value > 0, (workload, key)
    assert tiny["concurrent"]["callers"] == 100


def test_report_ratios_targets_and_error_rows() -> None:
    results = {
        "grpc-direct": {
            "unary": {"p50_us": 500.0, "p99_us": 1000.0, "calls_per_s": 2000.0},
            "idle": {"rss_per_conn_kib": 80.0, "server_cpu_pct": 0.1, "client_cpu_pct": 0.1},
        },
        "grpc-proxy": {"unary": {"error": "stack failed to start: boom"}},
        "native-quic": {
            "unary": {"p50_us": 250.0, "p99_us": 800.0, "calls_per_s": 4000.0},
            "idle": {"rss_per_conn_kib": 40.0, "server_cpu_pct": 0.0, "client_cpu_pct": 0.0},
        },
    }
    report = _report(results)
    assert report["ratios"]["native-quic"]["unary.p50_us"] == 0.5
    assert report["ratios"]["native-quic"]["unary.p99_us"] == 0.8
    assert report["ratios"]["grpc-proxy"] == {}
    by_metric = {(t["stack"], t["metric"]): t for t in report["targets"]}
    assert by_metric[("native-quic", "p50_us")]["met"] is True
    assert by_metric[("native-quic", "p99_us")]["met"] is False
    assert by_metric[("native-quic", "rss_per_conn_kib")]["met"] is True
    markdown = render_markdown(report)
    assert "| unary p50 | µs | 500 | error | 250 (0.50x) |" in markdown
    assert "- `grpc-proxy` unary: stack failed to start: boom" in markdown
    assert "**missed**" in markdown
    json.dumps(report)  # serialisable


def test_every_target_names_a_reported_metric() -> None:
    keys = {(m.workload, m.key) for m in METRICS}
    assert all((t.workload, t.key) in keys for t in TARGETS)
    assert set(STACKS) == {"grpc-direct", "grpc-proxy", "adapter-quic", "native-quic"}


def test_cpu_cost_per_unit_of_work() -> None:
    from benchmarks.harness import _cpu_cost

    params = workload_params(True)["unary"]
    cost = _cpu_cost("unary", params, (1.0, 2.0), (1.5, 2.25))
    calls = params["warmup"] + params["calls"]
    assert cost["cpu_unit"] == "call"
    assert cost["server_cpu_us_per_unit"] == round(0.5 / calls * 1e6, 1)
    assert cost["client_cpu_us_per_unit"] == round(0.25 / calls * 1e6, 1)
    assert _cpu_cost("connect", {}, (0.0, 0.0), (1.0, 1.0)) == {
        "server_cpu_s": 1.0,
        "client_cpu_s": 1.0,
    }
    assert _cpu_cost("unary", params, None, (1.0, 1.0)) == {}


def test_rounds_combine_to_medians_and_keep_errors() -> None:
    from benchmarks.harness import combine_rounds

    rounds: list[dict[str, Any]] = [
        {"p50_us": 100.0, "cold": {"p50_ms": 1.0}, "resumption": "none"},
        {"p50_us": 300.0, "cold": {"p50_ms": 3.0}, "resumption": "none"},
        {"p50_us": 200.0, "cold": {"p50_ms": 2.0}, "resumption": "none"},
        {"error": "timeout"},
    ]
    combined = combine_rounds(rounds)
    assert combined["p50_us"] == 200.0
    assert combined["cold"] == {"p50_ms": 2.0}
    assert combined["resumption"] == "none"
    assert combined["errors"] == ["timeout"]
    assert combined["rounds"] == rounds
    assert combine_rounds([{"error": "a"}, {"error": "b"}])["error"] == "a"
    assert combine_rounds([{"x": 1}]) == {"x": 1}
