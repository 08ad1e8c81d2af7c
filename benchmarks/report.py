"""Ratios to grpc-direct, targets met/missed, the JSON file, the Markdown table, the chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .linklab import LinkSpec
from .workloads import LOSSY_LINK, LOSSY_WORKLOADS, METRICS, TARGETS, Metric, Target

__all__ = [
    "BASELINE",
    "build_report",
    "render_markdown",
    "write_chart",
    "write_outputs",
]

BASELINE = "grpc-direct"
QUIC_STACKS = ("adapter-quic", "native-quic", "native-quic-1452")


def _value(results: dict[str, Any], stack: str, workload: str, key: str) -> float | None:
    value = results.get(stack, {}).get(workload, {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def _ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    ratios: dict[str, dict[str, float]] = {}
    for stack in results:
        row: dict[str, float] = {}
        for metric in METRICS:
            value = _value(results, stack, metric.workload, metric.key)
            base = _value(results, BASELINE, metric.workload, metric.key)
            if value is not None and base:
                row[f"{metric.workload}.{metric.key}"] = round(value / base, 3)
        ratios[stack] = row
    return ratios


def _targets(results: dict[str, Any], ratios: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for target in TARGETS:
        for stack in QUIC_STACKS:
            if stack not in results or target.workload not in results[stack]:
                continue
            if "skipped" in results[stack][target.workload]:
                continue
            if target.ratio:
                value = ratios.get(stack, {}).get(f"{target.workload}.{target.key}")
            else:
                value = _value(results, stack, target.workload, target.key)
            rows.append(
                {
                    "stack": stack,
                    "workload": target.workload,
                    "metric": target.key,
                    "target": target.describe(),
                    "value": value,
                    "met": None if value is None else target.met(value),
                }
            )
    return rows


def build_report(
    results: dict[str, Any],
    *,
    mode: str,
    scale: float,
    command: str,
    rounds: int = 1,
    machine: dict[str, Any],
    params: dict[str, Any],
    started_utc: str,
    duration_s: float,
    link: LinkSpec = LOSSY_LINK,
) -> dict[str, Any]:
    ratios = _ratios(results)
    lossy = any(w in params for w in LOSSY_WORKLOADS)
    notes = [
        "loopback; server and client in separate processes; one stack at a time",
        "ratios are stack / grpc-direct measured in this run",
        "with rounds > 1: medians over rounds, stack order rotated each round; idle once",
        "latency ratios: < 1 is faster; throughput ratios: > 1 is faster",
        "idle: server RSS delta over N connections each made by one call, then idle "
        "with keepalive every 5 s; CPU = process CPU time over the idle window",
    ]
    if lossy:
        notes.append(
            "lossy-*: server and client in two network namespaces joined by a userspace "
            f"TUN link emulator (benchmarks/linklab.py): {link.describe()}; the same for "
            "TCP and UDP; the TCP congestion control used is in each result "
            "(tcp_congestion_control)"
        )
    return {
        "benchmark": "quicshift stacks side by side",
        "mode": mode,
        "scale": scale,
        "rounds": rounds,
        "command": command,
        "started_utc": started_utc,
        "duration_s": round(duration_s, 1),
        "machine": machine,
        "baseline": BASELINE,
        "params": params,
        "lossy_link": link.as_dict() if lossy else None,
        "notes": notes,
        "results": results,
        "ratios": ratios,
        "targets": _targets(results, ratios),
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(report: dict[str, Any], stack: str, metric: Metric) -> str:
    result = report["results"].get(stack, {}).get(metric.workload)
    if result is None:
        return "n/a"
    if "error" in result:
        return "error"
    if "skipped" in result:
        return "skipped"
    value = _value(report["results"], stack, metric.workload, metric.key)
    if value is None:
        return "n/s" if metric.key.startswith("resumed") else "-"
    text = _fmt(value)
    ratio = report["ratios"].get(stack, {}).get(f"{metric.workload}.{metric.key}")
    if stack != BASELINE and ratio is not None:
        text += f" ({ratio:.2f}x)"
    return text


def render_markdown(report: dict[str, Any]) -> str:
    stacks = list(report["results"])
    machine = report["machine"]
    lines = [
        f"# quicshift benchmark — {report['mode']} run",
        "",
        f"`{report['command']}` — started {report['started_utc']}, took {report['duration_s']} s.",
        f"Machine: {machine.get('cpu_count')} CPUs ({machine.get('cpu_model')}), "
        f"Linux {machine.get('kernel')}, {machine.get('python')}, "
        f"QUIC engine {machine.get('quic_engine')}; "
        f"load average at start {machine.get('load_average', '?')}.",
        "",
        f"Absolute figures; in brackets the ratio to `{BASELINE}` measured in the same run "
        "(latency: < 1x is better; throughput: > 1x is better). "
        "`n/s` = not supported by the stack, `error` = see the JSON. "
        "CPU rows: process CPU time (user + system) over the whole command, warm-up "
        "included, divided by the work done.",
        "",
        "Sizes: " + _sizes(report["params"]) + ".",
        "",
        "| metric | unit | " + " | ".join(f"`{s}`" for s in stacks) + " |",
        "|---|---|" + "---|" * len(stacks),
    ]
    for metric in METRICS:
        if not any(metric.workload in report["results"].get(s, {}) for s in stacks):
            continue
        cells = [_cell(report, s, metric) for s in stacks]
        lines.append(f"| {metric.label} | {metric.unit} | " + " | ".join(cells) + " |")
    errors = [
        (s, w, r["error"])
        for s, per in report["results"].items()
        for w, r in per.items()
        if isinstance(r, dict) and "error" in r
    ]
    skipped = [
        (s, w, r["skipped"])
        for s, per in report["results"].items()
        for w, r in per.items()
        if isinstance(r, dict) and "skipped" in r
    ]
    lossy = _lossy_notes(report)
    if lossy:
        lines += ["", "## Lossy link", "", *lossy]
    if report["targets"]:
        lines += [
            "",
            "## Targets (QUIC stacks)",
            "",
            "| target | stack | value | met |",
            "|---|---|---|---|",
        ]
        for row in report["targets"]:
            met = {True: "met", False: "**missed**", None: "no data"}[row["met"]]
            unit = "x" if "x" in row["target"] else ""
            lines.append(
                f"| {row['workload']} {row['metric']} {row['target']} | `{row['stack']}` "
                f"| {_fmt(row['value'])}{unit} | {met} |"
            )
    notes = _resumption_notes(report)
    if notes:
        lines += ["", "## Session resumption / 0-RTT", ""]
        lines += [f"- `{s}`: {n}" for s, n in notes]
    if skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- `{s}` {w}: {why}" for s, w, why in skipped]
    if errors:
        lines += ["", "## Errors", "", "Tracebacks: `logs/<stack>-<server|client>.log`.", ""]
        lines += [f"- `{s}` {w}: {e}" for s, w, e in errors]
    lines.append("")
    return "\n".join(lines)


def _link_text(report: dict[str, Any]) -> str:
    spec = report.get("lossy_link")
    if not isinstance(spec, dict):
        return LOSSY_LINK.describe()
    try:
        return LinkSpec(**spec).describe()
    except (TypeError, ValueError):
        return json.dumps(spec)


def _lossy_notes(report: dict[str, Any]) -> list[str]:
    """The link the lossy workloads ran across, and the loss each stack really saw."""
    rows = []
    for stack, per in report["results"].items():
        for workload in LOSSY_WORKLOADS:
            result = per.get(workload)
            if not isinstance(result, dict) or not result.get("link"):
                continue
            c2s, s2c = result["link"]["c2s"], result["link"]["s2c"]
            rows.append(
                f"| `{stack}` | {workload} | {result.get('tcp_congestion_control', '-')} "
                f"| {c2s['packets']:,} / {s2c['packets']:,} "
                f"| {c2s['loss_pct']}% / {s2c['loss_pct']}% "
                f"| {c2s['queue_drops']:,} / {s2c['queue_drops']:,} |"
            )
    if not rows:
        return []
    return [
        "Client and server in two network namespaces joined by a userspace TUN link "
        f"emulator (`benchmarks/linklab.py`): {_link_text(report)}. Packets seen by the "
        "link during each measurement (warm-up included), client→server / server→client. "
        "TCP CC = the TCP congestion control in the namespaces (the QUIC stacks use "
        "their own, BBR by default; each result records it as quic_congestion_control).",
        "",
        "| stack | workload | TCP CC | packets | random loss | queue drops |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def _sizes(params: dict[str, Any]) -> str:
    parts = []
    for workload, p in params.items():
        shown = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in p.items())
        parts.append(f"{workload} ({shown})")
    return "; ".join(parts) if parts else "-"


def _resumption_notes(report: dict[str, Any]) -> list[tuple[str, str]]:
    notes = []
    for stack, per in report["results"].items():
        note = per.get("connect", {}).get("resumption")
        if note:
            notes.append((stack, str(note)))
    return notes


def write_chart(report: dict[str, Any], path: Path) -> str | None:
    """A bar chart of every ratio; returns a note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: chart skipped (pip install matplotlib)"
    stacks = [s for s in report["results"] if s != BASELINE]
    metrics = [
        m
        for m in METRICS
        if any(f"{m.workload}.{m.key}" in report["ratios"].get(s, {}) for s in stacks)
    ]
    if not stacks or not metrics:
        return "no ratios to chart"
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(metrics)), 5.0))
    width = 0.8 / len(stacks)
    for i, stack in enumerate(stacks):
        values = [report["ratios"][stack].get(f"{m.workload}.{m.key}", 0.0) for m in metrics]
        xs = [x + (i - (len(stacks) - 1) / 2) * width for x in range(len(metrics))]
        ax.bar(xs, values, width, label=stack)
    for x, metric in enumerate(metrics):
        target = _ratio_target(metric)
        if target is not None:
            ax.hlines(target.value, x - 0.45, x + 0.45, colors="black", linestyles="dashed")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(
        [f"{m.label}\n({'↓' if m.better == 'lower' else '↑'} better)" for m in metrics],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_ylabel(f"ratio to {BASELINE} (log)")
    ax.set_title(f"quicshift stacks vs {BASELINE} ({report['mode']} run); dashes = targets")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _ratio_target(metric: Metric) -> Target | None:
    for target in TARGETS:
        if target.ratio and (target.workload, target.key) == (metric.workload, metric.key):
            return target
    return None


def write_outputs(report: dict[str, Any], out: Path) -> list[Path]:
    """``<out>/stacks-<mode>.json``, ``<out>/latest.md``, ``<out>/latest.png``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"stacks-{report['mode']}.json"
    md_path = out / "latest.md"
    png_path = out / "latest.png"
    note = write_chart(report, png_path)
    written = [json_path, md_path]
    if note is None:
        written.append(png_path)
        report["chart"] = png_path.name
    else:
        report["chart"] = None
        print(note)
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    markdown = render_markdown(report)
    if note is None:
        markdown += f"\n![ratios to {BASELINE}]({png_path.name})\n"
    md_path.write_text(markdown)
    return written
