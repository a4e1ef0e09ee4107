"""OpenTelemetry (the `otel` extra): one trace from the POST, through the job, to the publish of its event."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support import API_KEY, AUTH, WAIT, eventually, serve
from widgetry.app import create_app
from widgetry.settings import Settings

EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (OpenTelemetry allows one per process), exporting to memory."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


async def test_one_trace_spans_the_request_the_job_and_the_publish(
    spans: InMemorySpanExporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = create_app(Settings(api_keys=(API_KEY,), otel=True))
    async with serve(app) as client:
        created = await client.post(
            "/widgets", json={"sku": "T-1", "name": "Traced", "price_cents": 3}, headers=AUTH | WAIT
        )

        def named(name: str) -> list[ReadableSpan]:
            return [span for span in spans.get_finished_spans() if span.name == name]

        async def all_ended() -> bool:
            return bool(named("POST /widgets") and named("widgetry process") and named("widgetry publish"))

        await eventually(all_ended, 10, "the request, job and publish spans")

    assert created.status_code == 200
    [request] = named("POST /widgets")
    [job] = [span for span in named("widgetry process") if span.attributes["saq.job.function"] == "apply_commands"]
    [publish] = named("widgetry publish")
    assert {request.context.trace_id, job.context.trace_id, publish.context.trace_id} == {request.context.trace_id}
    assert publish.parent is not None and publish.parent.span_id == job.context.span_id
    assert request.kind is trace.SpanKind.SERVER and job.kind is trace.SpanKind.CONSUMER


async def test_without_the_setting_nothing_is_traced(
    spans: InMemorySpanExporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = create_app(Settings(api_keys=(API_KEY,)))
    async with serve(app) as client:
        created = await client.post("/widgets", json={"sku": "T-2", "name": "n", "price_cents": 3}, headers=AUTH | WAIT)

    assert created.status_code == 200
    assert [span.name for span in spans.get_finished_spans() if span.name != "widgetry publish"] == []
