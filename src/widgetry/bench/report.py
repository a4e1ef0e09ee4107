"""The report of a run: one JSON document (what `--json` writes and `--compare` reads), and the table printed from
it; `compare` sets two reports' figures side by side."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from widgetry.bench.stack import RATE_LIMITED_HINT

if TYPE_CHECKING:
    from widgetry.bench.baselines import DirectWrite, RawSaq
    from widgetry.bench.load import LoadResult

LATENCIES = (
    ("post_to_202_ms", "POST -> 202"),
    ("accepted_to_applied_ms", "202 -> applied"),
    ("e2e.latency_ms", "POST -> event seen"),
)


def build_report(
    *,
    run_id: str,
    started_at: str,
    mode: str,
    stack: dict[str, Any],
    options: dict[str, Any],
    machine: dict[str, Any],
    load: LoadResult,
    raw_saq: RawSaq | None,
    direct: DirectWrite | None,
    notes: list[str],
) -> dict[str, Any]:
    e2e_s = _seconds(load.first_send_ns, load.last_done_ns)
    commands_per_s = _rate(load.completed, e2e_s)
    memory = load.memory
    workers_after = memory.workers_after_warmup_mb if memory else None
    workers_end = memory.workers_end_mb if memory else None
    return {
        "run_id": run_id,
        "started_at": started_at,
        "mode": mode,
        "stack": stack,
        "machine": machine,
        "options": options,
        "commands": load.workload.commands,
        "skus": load.workload.skus,
        "accepted": load.accepted,
        "completed": load.completed,
        "lost": load.lost,
        "failed": load.failed,
        "errors": load.errors,
        "e2e": {
            "commands_per_s": commands_per_s,
            "accepted_per_s": _rate(load.accepted, _seconds(load.first_send_ns, load.last_reply_ns)),
            "duration_s": None if e2e_s is None else round(e2e_s, 3),
            "latency_ms": load.e2e_latency.summary(),
        },
        "post_to_202_ms": load.post_to_202.summary(),
        "accepted_to_applied_ms": load.accepted_to_applied.summary() | {"clamped": load.accepted_to_applied_clamped},
        "sse": {
            "subscribers": load.subscribers,
            "deliveries": load.deliveries,
            "deliveries_per_s": _rate(load.deliveries, e2e_s),
            "reconnects": load.reconnects,
        },
        "bench_cpu_s": load.cpu_s,
        "rss_mb": {
            "web": _largest(memory.web_peak_mb) if memory else None,
            "workers": _largest(memory.workers_peak_mb) if memory else None,
            "web_each": memory.web_peak_mb if memory else None,
            "workers_each": memory.workers_peak_mb if memory else None,
        },
        "workers": {
            "processes": len(memory.workers_peak_mb) if memory else None,
            "rss_mb_after_warmup": workers_after,
            "rss_mb_end": workers_end,
            "rss_growth_pct": round((workers_end - workers_after) / workers_after * 100, 1)
            if workers_after and workers_end is not None
            else None,
        },
        "idle": asdict(load.idle) if load.idle else None,
        "baselines": {
            "raw_saq": asdict(raw_saq) | {"jobs_per_s": round(raw_saq.jobs_per_s, 2)} if raw_saq else None,
            "direct": asdict(direct) | {"commands_per_s": round(direct.commands_per_s, 2)} if direct else None,
        },
        "ratios": {
            "e2e_vs_raw_saq": _ratio(commands_per_s, raw_saq.jobs_per_s if raw_saq else None),
            "e2e_vs_direct": _ratio(commands_per_s, direct.commands_per_s if direct else None),
        },
        "notes": [*_rate_limited(load.errors), *notes],
    }


def _rate_limited(errors: dict[str, int]) -> list[str]:
    """Says so plainly when the target refused writes for their rate: the run then measured its limit, not it."""
    if not (refused := errors.get("429")):
        return []
    return [
        f"the target rate limited this run, answering {refused} writes with 429 Too Many Requests; {RATE_LIMITED_HINT}"
    ]


def _seconds(start_ns: int | None, end_ns: int | None) -> float | None:
    return None if start_ns is None or end_ns is None or end_ns <= start_ns else (end_ns - start_ns) / 1e9


def _rate(count: int, seconds: float | None) -> float | None:
    return None if not seconds else round(count / seconds, 2)


def _ratio(e2e: float | None, baseline: float | None) -> float | None:
    return None if e2e is None or not baseline else round(e2e / baseline, 4)


def _largest(figures: list[float | None]) -> float | None:
    known = [figure for figure in figures if figure is not None]
    return max(known) if known else None


def dig(report: dict[str, Any], dotted: str) -> Any:
    value: Any = report
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def render_table(report: dict[str, Any]) -> str:
    """The report as plain aligned lines: label, then figures."""
    options, stack, e2e, sse = report["options"], report["stack"], report["e2e"], report["sse"]
    loop = f"open loop at {options['rate']:g} commands/s" if options["rate"] else "closed loop"
    rows: list[tuple[str, str]] = [
        ("run", f"{report['run_id']} at {report['started_at']} ({report['mode']}: {stack['description']})"),
        (
            "workload",
            f"{report['commands']} commands over {report['skus']} skus; {options['clients']} clients, {loop}, "
            f"{options['connections']} connections each",
        ),
        ("accepted", f"{report['accepted']} of {report['commands']} ({_figure(e2e['accepted_per_s'])}/s)"),
        (
            "e2e",
            f"{_figure(e2e['commands_per_s'])} commands/s ({_figure(e2e['duration_s'])} s, first send to last seen)",
        ),
        ("latency (ms)", "".join(f"{name:>10}" for name in ("p50", "p95", "p99", "max"))),
    ]
    for key, label in LATENCIES:
        figures = dig(report, key)
        rows.append((f"  {label}", "".join(f"{_figure(figures[name]):>10}" for name in ("p50", "p95", "p99", "max"))))
    rows.append(
        (
            "sse",
            f"{sse['subscribers']} subscribers, {sse['deliveries']} deliveries "
            f"({_figure(sse['deliveries_per_s'])}/s), {sse['reconnects']} reconnects",
        )
    )
    cpu = ", ".join(f"{role} {seconds:.1f}" for role, seconds in report["bench_cpu_s"].items())
    rows.append(("bench cpu (s)", f"{cpu} (the load generator's own, over {_figure(e2e['duration_s'])} s)"))
    rss, workers = report["rss_mb"], report["workers"]
    if rss["web"] is not None:
        rows.append(("peak rss (MB)", f"web {_figure(rss['web'])}, workers {_figure(rss['workers'])}"))
        rows.append(
            (
                "workers' rss (MB)",
                f"{_figure(workers['rss_mb_after_warmup'])} after warm-up, {_figure(workers['rss_mb_end'])} at end "
                f"({_signed(workers['rss_growth_pct'])}%), all worker processes together",
            )
        )
    if idle := report["idle"]:
        rows.append(
            (
                "idle",
                f"{idle['held']} of {idle['connections']} connections held to the end; web rss "
                f"{_figure(idle['web_rss_mb_before'])} MB before, {_figure(idle['web_rss_mb_with'])} MB with them",
            )
        )
    raw_saq, direct = report["baselines"]["raw_saq"], report["baselines"]["direct"]
    if raw_saq:
        rows.append(
            (
                "raw SAQ",
                f"{_figure(raw_saq['jobs_per_s'])} jobs/s ({raw_saq['jobs']} jobs, {raw_saq['processes']} worker "
                f"process(es) at concurrency {raw_saq['concurrency']}, {raw_saq['backend']})",
            )
        )
    if direct:
        rows.append(
            (
                "direct write",
                f"{_figure(direct['commands_per_s'])} commands/s ({direct['changes']} changes, "
                f"{direct['concurrency']} tasks, {direct['database']})",
            )
        )
    ratios = report["ratios"]
    rows += [
        ("e2e / raw SAQ", _figure(ratios["e2e_vs_raw_saq"], 4)),
        ("e2e / direct", _figure(ratios["e2e_vs_direct"], 4)),
        ("lost", str(report["lost"])),
        ("failed", str(report["failed"])),
        ("errors", ", ".join(f"{status}: {count}" for status, count in report["errors"].items()) or "none"),
    ]
    rows += [("note", note) for note in report["notes"]]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows)


def _figure(value: float | None, decimals: int = 2) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.{decimals}f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def flatten(document: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a report by its dotted path (list items by index); flags and text are left out."""
    if isinstance(document, dict):
        items = document.items()
    elif isinstance(document, list):
        items = enumerate(document)
    else:
        return {}
    figures: dict[str, float] = {}
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            figures[path] = value
        else:
            figures |= flatten(value, f"{path}.")
    return figures


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Each figure of either report: old, new, and the change in percent."""
    before, after = flatten(old), flatten(new)
    keys = [*before, *(key for key in after if key not in before)]
    rows = [("figure", "old", "new", "change")]
    for key in keys:
        was, now = before.get(key), after.get(key)
        change = f"{(now - was) / abs(was) * 100:+.1f}%" if was and now is not None else "-"
        rows.append((key, _compared(was), _compared(now), change))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}" for row in rows
    )


def _compared(value: float | None) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
