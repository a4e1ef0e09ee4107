"""`widgetry bench`'s figures: latency histograms (percentiles, merging across processes), the JSON report and its
required keys, and `--compare` of two reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar.cli.main import litestar_group

from widgetry.bench.baselines import DirectWrite, RawSaq
from widgetry.bench.histogram import Histogram
from widgetry.bench.load import IdleFigures, LoadResult, MemoryFigures
from widgetry.bench.report import build_report, compare, dig, flatten, render_table
from widgetry.bench.workload import Workload

REQUIRED_KEYS = (
    "ratios.e2e_vs_raw_saq",
    "ratios.e2e_vs_direct",
    "e2e.commands_per_s",
    "e2e.accepted_per_s",
    *(f"{figure}.{p}" for figure in ("e2e.latency_ms", "post_to_202_ms", "accepted_to_applied_ms")
      for p in ("p50", "p95", "p99", "max")),
    "sse.subscribers",
    "sse.deliveries",
    "sse.deliveries_per_s",
    "rss_mb.web",
    "rss_mb.workers",
    "workers.rss_growth_pct",
    "baselines.raw_saq.jobs_per_s",
    "baselines.direct.commands_per_s",
    "lost",
    "failed",
    "errors",
    "accepted",
    "commands",
    "machine.hostname",
    "machine.cpu_model",
    "machine.cpu_count",
    "machine.memory_mb",
    "machine.python",
    "machine.os",
    "options",
    "mode",
    "started_at",
)  # fmt: skip
"""What the JSON report promises to hold (dotted paths)."""


def histogram_of(values: list[float]) -> Histogram:
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    return histogram


def test_percentiles_of_known_latencies_are_exact_to_the_bucket_resolution() -> None:
    histogram = histogram_of([float(ms) for ms in range(1, 1001)])  # 1 ms .. 1000 ms, one each

    # A percentile is the upper edge of its 0.1 ms bucket: never below the true value, at most 0.1 ms above it.
    assert 500 <= histogram.percentile(50) <= 500.1
    assert 950 <= histogram.percentile(95) <= 950.1
    assert 990 <= histogram.percentile(99) <= 990.1
    assert histogram.percentile(100) == 1000
    assert histogram.summary() == {"p50": 500.1, "p95": 950.1, "p99": 990.1, "max": 1000.0, "count": 1000}


def test_latencies_beyond_ten_seconds_are_kept_within_one_percent() -> None:
    histogram = histogram_of([12_345.0, 25_000.0, 61_000.0])

    assert histogram.percentile(33) == pytest.approx(12_345, rel=0.01)
    assert histogram.percentile(66) == pytest.approx(25_000, rel=0.01)
    assert histogram.percentile(100) == 61_000


def test_a_percentile_never_exceeds_the_largest_latency_recorded() -> None:
    assert histogram_of([0.04, 0.04, 0.05]).percentile(99) == 0.05


def test_an_empty_histogram_has_no_percentiles() -> None:
    assert Histogram().summary() == {"p50": None, "p95": None, "p99": None, "max": None, "count": 0}


def test_merged_histograms_equal_one_histogram_of_all_the_latencies() -> None:
    first, second = [0.3, 1.7, 250.0, 11_000.0], [0.35, 42.0, 9_999.9, 80.5]
    merged = histogram_of(first)
    merged.merge(histogram_of(second))

    assert merged == histogram_of(first + second)
    assert merged.count == 8
    assert merged.max_ms == 11_000.0


def report(errors: dict[str, int] | None = None, **changes: Any) -> dict[str, Any]:
    """A report of a small spawned run: 100 commands, 2 subscribers, one second from first send to last seen."""
    start = 1_700_000_000_000_000_000
    load = LoadResult(
        workload=Workload("r1", 100, 25),
        subscribers=2,
        accepted=100 - sum((errors or {}).values()),
        completed=100,
        failed=0,
        lost=0,
        errors=errors or {},
        first_send_ns=start,
        last_reply_ns=start + 500_000_000,
        last_done_ns=start + 1_000_000_000,
        post_to_202=histogram_of([5.0] * 100),
        accepted_to_applied=histogram_of([20.0] * 100),
        accepted_to_applied_clamped=0,
        e2e_latency=histogram_of([40.0] * 200),
        deliveries=200,
        reconnects=0,
        cpu_s={"writers": 0.4, "subscribers": 0.2},
        memory=MemoryFigures([101.5], [120.0], 100.0, 110.0),
        idle=IdleFigures(connections=10, opened=10, held=10, web_rss_mb_before=100.0, web_rss_mb_with=101.0),
    )
    arguments: dict[str, Any] = {
        "run_id": "r1",
        "started_at": "2026-01-01T00:00:00+00:00",
        "mode": "spawned",
        "stack": {"webs": 1, "workers": 1, "concurrency": 10, "description": "1 web, 1 worker"},
        "options": {"rate": 0.0, "clients": 2, "connections": 32},
        "machine": {"hostname": "h", "cpu_model": "c", "cpu_count": 2, "memory_mb": 1, "python": "3", "os": "o"},
        "load": load,
        "raw_saq": RawSaq(jobs=100, jobs_per_s=1000.0, processes=1, concurrency=10, backend="Redis"),
        "direct": DirectWrite(changes=100, commands_per_s=400.0, concurrency=10, database="postgresql"),
        "notes": [],
    }
    return build_report(**(arguments | changes))


def test_the_json_report_holds_every_required_figure() -> None:
    document = json.loads(json.dumps(report()))

    missing = [key for key in REQUIRED_KEYS if dig(document, key) is None]
    assert missing == []
    assert document["e2e"]["commands_per_s"] == 100.0
    assert document["e2e"]["accepted_per_s"] == 200.0
    assert document["sse"]["deliveries_per_s"] == 200.0
    assert document["ratios"] == {"e2e_vs_raw_saq": 0.1, "e2e_vs_direct": 0.25}
    assert document["workers"]["rss_growth_pct"] == 10.0


def test_the_table_shows_the_figures_and_the_outcome() -> None:
    table = render_table(report(notes=["a note"]))

    assert "100.00 commands/s" in table
    assert "1000.00 jobs/s" in table
    assert "10 of 10 connections held" in table
    assert table.splitlines()[-1].split() == ["note", "a", "note"]


def test_a_run_the_target_rate_limited_says_so_and_names_the_setting_to_raise() -> None:
    document = json.loads(json.dumps(report(errors={"429": 231, "503": 2}, notes=["a note"])))
    table = render_table(document)

    line = "the target rate limited this run, answering 231 writes with 429 Too Many Requests"
    assert document["notes"][0].startswith(line)
    assert "raise WIDGETRY_RATE_LIMIT_WRITES on the target" in document["notes"][0]
    assert [row for row in table.splitlines() if row.startswith("note") and line in row]
    assert "429: 231" in table


def test_a_run_nothing_refused_for_its_rate_says_nothing_of_rate_limits() -> None:
    table = render_table(report(errors={"503": 2}))

    assert "rate limit" not in table


def test_a_run_without_baselines_has_no_ratios() -> None:
    document = report(raw_saq=None, direct=None)

    assert document["ratios"] == {"e2e_vs_raw_saq": None, "e2e_vs_direct": None}


def test_flatten_names_every_number_by_its_dotted_path() -> None:
    figures = flatten({"a": 1, "b": {"c": 2.5, "d": "text", "e": None, "f": True}, "g": [3, {"h": 4}]})

    assert figures == {"a": 1, "b.c": 2.5, "g.0": 3, "g.1.h": 4}


def test_compare_shows_old_new_and_change_of_each_figure() -> None:
    old = {"e2e": {"commands_per_s": 100.0, "latency_ms": {"p50": 40.0}}, "lost": 0, "mode": "spawned"}
    new = {"e2e": {"commands_per_s": 125.0, "latency_ms": {"p50": 30.0}}, "lost": 0, "errors": {"503": 2}}

    rows = [line.split() for line in compare(old, new).splitlines()]

    assert rows == [
        ["figure", "old", "new", "change"],
        ["e2e.commands_per_s", "100.00", "125.00", "+25.0%"],
        ["e2e.latency_ms.p50", "40.00", "30.00", "-25.0%"],
        ["lost", "0", "0", "-"],
        ["errors.503", "-", "2", "-"],
    ]


def test_bench_compare_prints_the_comparison_and_runs_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(report()))
    new.write_text(json.dumps(report(raw_saq=RawSaq(100, 500.0, 1, 10, "Redis"))))

    result = CliRunner().invoke(
        litestar_group, ["--app", "widgetry.app:create_app", "bench", "--compare", str(old), str(new)]
    )

    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[1:] for line in result.output.splitlines() if line.strip()}
    assert lines["baselines.raw_saq.jobs_per_s"] == ["1000.00", "500.00", "-50.0%"]
    assert lines["ratios.e2e_vs_raw_saq"] == ["0.1", "0.2", "+100.0%"]
    assert lines["e2e.commands_per_s"] == ["100.00", "100.00", "+0.0%"]
    assert not list(tmp_path.glob("*.db"))
