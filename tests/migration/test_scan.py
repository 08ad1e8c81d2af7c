"""``quicshift scan``: the grpc uses of a small sample codebase, listed exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from migration import quic_grpc
from migration import scan as scan_module
from migration.quic_grpc import aio as adapter_aio
from migration.scan import (
    AdapterCoverage,
    Category,
    Verdict,
    adapter_coverage,
    render_plan,
    scan_path,
    scan_source,
)
from tests.migration.sample_codebase import write_clean, write_sample

pytestmark = pytest.mark.timeout(60)

C, CH, U = "covered", "changed", "unsupported"

EXPECTED: dict[str, list[tuple[int, int, str, str, str]]] = {
    "aliases.py": [
        (1, 1, "import", "grpc", C),
        (2, 1, "import", "grpc.aio", C),
        (3, 1, "import", "grpc.secure_channel", C),
        (4, 1, "import", "grpc.metadata_call_credentials", U),
        (5, 1, "package", "grpc_reflection.v1alpha.reflection", U),
        (9, 13, "credentials", "grpc.ssl_channel_credentials", CH),
        (10, 13, "credentials", "grpc.metadata_call_credentials", U),
        (11, 12, "credentials", "grpc.composite_channel_credentials", U),
        (12, 12, "channel", "grpc.secure_channel", C),
        (12, 39, "compression", "compression=", CH),
        (12, 51, "compression", "grpc.Compression.Gzip", CH),
        (16, 14, "server", "grpc.aio.server", C),
        (18, 5, "server", "add_secure_port", C),
        (18, 38, "credentials", "grpc.local_server_credentials", U),
        (23, 39, "context", "grpc.aio.ServicerContext", C),
        (24, 16, "context", "ctx.peer", CH),
        (25, 15, "context", "ctx.abort_with_status", U),
        (28, 16, "context", "context.auth_context", CH),
        (32, 12, "experimental", "grpc.experimental.insecure_channel_credentials", U),
    ],
    "client/client_aio.py": [
        (4, 1, "import", "grpc.aio", C),
        (6, 1, "import", "protos.echo_pb2_grpc", CH),
        (9, 23, "interceptor", "grpc.aio.UnaryUnaryClientInterceptor", C),
        (15, 16, "proxy", "https_proxy", CH),
        (17, 10, "proxy", "grpc.enable_http_proxy", CH),
        (18, 10, "proxy", "grpc.http_proxy", CH),
        (19, 10, "option", "grpc.keepalive_time_ms", CH),
        (22, 16, "channel", "grpc.aio.insecure_channel", CH),
        (25, 71, "other", "wait_for_ready=", CH),
        (26, 16, "error", "grpc.aio.AioRpcError", C),
    ],
    "server_sync.py": [
        (4, 1, "import", "grpc", C),
        (6, 1, "import", "echo_pb2_grpc", CH),
        (12, 13, "context", "context.abort", C),
        (12, 27, "status", "grpc.StatusCode.INVALID_ARGUMENT", C),
        (13, 25, "context", "context.invocation_metadata", C),
        (14, 9, "context", "context.set_code", C),
        (14, 26, "status", "grpc.StatusCode.OK", C),
        (19, 17, "option", "grpc.max_receive_message_length", C),
        (20, 14, "server", "grpc.server", C),
        (22, 5, "server", "add_insecure_port", CH),
        (23, 13, "credentials", "grpc.ssl_server_credentials", CH),
        (24, 5, "server", "add_secure_port", C),
    ],
}


def _found(report: scan_module.ScanReport) -> dict[str, list[tuple[int, int, str, str, str]]]:
    grouped: dict[str, list[tuple[int, int, str, str, str]]] = {}
    for f in report.findings:
        grouped.setdefault(f.path, []).append(
            (f.line, f.col, str(f.category), f.symbol, str(f.verdict))
        )
    return grouped


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return write_sample(tmp_path / "sample")


def test_sample_findings_are_exact(sample: Path) -> None:
    report = scan_path(sample)
    assert _found(report) == EXPECTED
    # broken.py is reported, not fatal; the generated module and .venv are skipped.
    assert report.files_scanned == 5  # aliases, broken, client_aio, server_sync, not_grpc
    assert report.generated_skipped == ["protos/echo_pb2_grpc.py"]
    assert [(e.path, e.line) for e in report.errors] == [("broken.py", 3)]
    assert "syntax error" in report.errors[0].message
    assert not report.ok and report.exit_code == 1


def test_summary_counts(sample: Path) -> None:
    report = scan_path(sample)
    every = [item for items in EXPECTED.values() for item in items]
    assert report.by_verdict() == {v: sum(1 for item in every if item[4] == v) for v in (C, CH, U)}
    by_category = report.by_category()
    assert by_category["proxy"] == {C: 0, CH: 3, U: 0}
    assert by_category["context"] == {C: 4, CH: 2, U: 1}
    assert sum(sum(row.values()) for row in by_category.values()) == len(every)


def test_every_finding_has_a_recommendation(sample: Path) -> None:
    report = scan_path(sample)
    assert all(f.recommendation for f in report.findings)
    insecure = next(f for f in report.findings if f.symbol == "grpc.aio.insecure_channel")
    assert "secure_channel" in insecure.recommendation
    proxy = next(f for f in report.findings if f.symbol == "grpc.http_proxy")
    assert "obsolete" in proxy.recommendation


def test_files_without_grpc_imports_are_not_flagged(sample: Path) -> None:
    # util/not_grpc.py has a proxy env var, a grpc.* option key and a context.peer() call
    # but imports nothing grpc-related.
    assert "util/not_grpc.py" not in _found(scan_path(sample))


def test_generated_modules_on_request(sample: Path) -> None:
    report = scan_path(sample, include_generated=True)
    generated = _found(report)["protos/echo_pb2_grpc.py"]
    assert generated == [
        (1, 1, "import", "grpc", C),
        (10, 12, "experimental", "grpc.experimental.unary_unary", U),
    ]
    assert report.generated_skipped == []


def test_clean_codebase_is_ok(tmp_path: Path) -> None:
    report = scan_path(write_clean(tmp_path / "clean"))
    assert report.ok and report.exit_code == 0
    assert {str(f.verdict) for f in report.findings} == {C}
    assert [f.symbol for f in report.findings] == [
        "grpc",
        "grpc.aio",
        "grpc.aio.secure_channel",
        "grpc.RpcError",
        "grpc.StatusCode.NOT_FOUND",
    ]


def test_single_file_and_alias_forms() -> None:
    source = (
        "import grpc.aio as ga\n"
        "from grpc.aio import server as make_server\n"
        "from grpc import *\n"
        "ga.secure_channel('h:1', None)\n"
        "make_server()\n"
        "def secure_channel(): pass\n"  # a local def, not a use
    )
    found = [(f.line, f.symbol, str(f.verdict)) for f in scan_source(source, "x.py")]
    assert found == [
        (1, "grpc.aio", C),
        (2, "grpc.aio.server", C),
        (3, "grpc", C),
        (4, "grpc.aio.secure_channel", C),
        (5, "grpc.aio.server", C),
    ]


def test_context_calls_in_closures() -> None:
    source = (
        "import grpc\n"
        "def Get(request, context):\n"
        "    def deny():\n"
        "        context.abort(grpc.StatusCode.PERMISSION_DENIED, 'no')\n"
        "    def other(context=None):\n"
        "        return context\n"
        "    def unrelated(ctx):\n"
        "        ctx.peer()\n"  # ctx is neither named context nor typed: not reported
        "    deny()\n"
    )
    found = [(f.line, f.category, f.symbol) for f in scan_source(source)]
    assert found == [
        (1, Category.IMPORT, "grpc"),
        (4, Category.CONTEXT, "context.abort"),
        (4, Category.STATUS, "grpc.StatusCode.PERMISSION_DENIED"),
    ]


def test_coverage_is_read_from_the_adapter() -> None:
    coverage = adapter_coverage()
    assert coverage.grpc == frozenset(quic_grpc.__all__)
    assert "secure_channel" in coverage.aio and "insecure_channel" in coverage.aio
    assert {"server", "Channel", "ServicerContext"} <= coverage.aio
    assert set(coverage.aio) <= set(dir(adapter_aio))
    assert "abort" in coverage.context_methods and "abort" in coverage.aio_context_methods
    assert "add_secure_port" in coverage.server_methods


def test_verdicts_follow_the_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    source = "import grpc\ngrpc.metadata_call_credentials(None)\ngrpc.secure_channel('h:1', c)\n"
    before = {f.symbol: f.verdict for f in scan_source(source)}
    assert before["grpc.metadata_call_credentials"] is Verdict.UNSUPPORTED
    real = adapter_coverage()
    grown = AdapterCoverage(
        grpc=real.grpc | {"metadata_call_credentials"},
        aio=real.aio,
        server_methods=real.server_methods,
        aio_server_methods=real.aio_server_methods,
        context_methods=real.context_methods,
        aio_context_methods=real.aio_context_methods,
    )
    monkeypatch.setattr(scan_module, "adapter_coverage", lambda: grown)
    after = {f.symbol: f.verdict for f in scan_source(source)}
    assert after["grpc.metadata_call_credentials"] is Verdict.COVERED
    shrunk = AdapterCoverage(
        grpc=real.grpc - {"secure_channel"},
        aio=real.aio,
        server_methods=real.server_methods,
        aio_server_methods=real.aio_server_methods,
        context_methods=real.context_methods,
        aio_context_methods=real.aio_context_methods,
    )
    monkeypatch.setattr(scan_module, "adapter_coverage", lambda: shrunk)
    gone = {f.symbol: f.verdict for f in scan_source(source)}
    assert gone["grpc.secure_channel"] is Verdict.UNSUPPORTED


def test_plan_text(sample: Path) -> None:
    import io

    out = io.StringIO()
    report = scan_path(sample)
    render_plan(report, out)
    text = out.getvalue()
    assert "summary: 19 covered, 15 changed, 7 unsupported" in text
    assert "server_sync.py\n" in text and "client/client_aio.py\n" in text
    assert "NOT SCANNED broken.py:3" in text
    assert "from migration import quic_grpc as grpc" in text
    assert "Replace proxy configuration" in text
    assert "Move credentials to node certificates" in text
    assert "Rewrite the 7 unsupported use(s)" in text
    assert text.rstrip().endswith("changes needed before quic-only (exit 1)")
    assert Category.PROXY.value in text


# -- the CLI ---------------------------------------------------------------------------


def test_cli_exit_codes(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(sample)]) == 1
    assert "migration plan:" in capsys.readouterr().out
    assert main(["scan", str(write_clean(tmp_path / "clean"))]) == 0
    assert "the adapter covers every use (exit 0)" in capsys.readouterr().out
    assert main(["scan", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hi")
    assert main(["scan", str(tmp_path / "notes.txt")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["scan"])
    assert exc.value.code == 2


def test_cli_json(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--json", str(sample)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    assert data["files_scanned"] == 5
    assert data["generated_skipped"] == ["protos/echo_pb2_grpc.py"]
    assert data["errors"] == [
        {"path": "broken.py", "line": 3, "message": "syntax error: invalid syntax"}
    ]
    assert data["summary"]["by_verdict"] == {C: 19, CH: 15, U: 7}
    rows = [
        (f["path"], f["line"], f["col"], f["category"], f["symbol"], f["verdict"])
        for f in data["findings"]
    ]
    expected = sorted((path, *item) for path, items in EXPECTED.items() for item in items)
    assert sorted(rows) == expected
    assert all(f["recommendation"] for f in data["findings"])
    assert data["steps"] and data["steps"][0].startswith("Switch imports")


def test_cli_json_single_clean_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = write_clean(tmp_path / "c") / "clean.py"
    assert main(["scan", str(clean), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True
    assert {f["path"] for f in data["findings"]} == {"clean.py"}


def test_cli_in_a_subprocess_without_grpc(sample: Path) -> None:
    """The scan runs where grpcio is not installed (the quic-only end state) and gives
    the same verdicts: coverage comes from the adapter, which works without grpcio."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "sys.modules['grpc'] = None\n"
        "sys.modules['legacy_grpc'] = None\n"
        "from agent.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "scan", "--json", str(sample)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["summary"]["by_verdict"] == {C: 19, CH: 15, U: 7}
