"""OpenTelemetry, optional (the `otel` extra, switched on by `WIDGETRY_OTEL=true`): one trace follows a write from
its request, through the job that applies it, to the publish of its events.

Litestar's OpenTelemetryPlugin traces requests; litestar-saq traces jobs (a span per job, child of the context it
reads from the job's `meta`). The two pieces it leaves to the app are done here: putting the request's context into
the job's `meta` when this app's own queue enqueues it, and making the job's span current while the job runs, so the
publish span below is its child. Without the extra, or switched off, every function here does nothing.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from litestar.plugins import PluginProtocol
    from saq.job import Job
    from saq.queue import Queue

    from widgetry.settings import Settings

logger = logging.getLogger(__name__)

_JOB_SPAN = "_otel_span"
"""Where litestar-saq keeps a job's span in the job's context."""
_JOB_CONTEXT = "widgetry_otel_context"
NOT_TRACED = ["/health", "/ready", "/metrics", "/saq"]

try:
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
    from litestar_saq.instrumentation import inject_trace_context
    from opentelemetry import context, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
except ImportError:  # the `otel` extra is not installed
    INSTALLED = False
else:
    INSTALLED = True


def enabled(settings: Settings) -> bool:
    if settings.otel and not INSTALLED:
        logger.warning("WIDGETRY_OTEL is on but the `otel` extra is not installed: not tracing")
    return settings.otel and INSTALLED


def tracing_plugins(settings: Settings) -> list[PluginProtocol]:
    """Litestar's OpenTelemetry plugin when tracing is on, with the OTLP exporter unless a tracer provider is set
    already (by the embedding program, or a test)."""
    if not enabled(settings):
        return []
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    return [OpenTelemetryPlugin(OpenTelemetryConfig(exclude=[f"^{path}" for path in NOT_TRACED]))]


def trace_enqueues(queue: Queue, settings: Settings) -> None:
    """Jobs this queue enqueues carry the enqueuer's trace context (the request's, for a write)."""
    if enabled(settings):
        queue.register_before_enqueue(_carry_trace_context)


async def _carry_trace_context(job: Job) -> None:
    inject_trace_context(job)


async def enter_job_span(ctx: dict[str, Any]) -> None:
    """A SAQ `before_process` hook, after litestar-saq's: the job's span becomes the job's current span."""
    if (span := ctx.get(_JOB_SPAN)) is not None:
        ctx[_JOB_CONTEXT] = context.attach(trace.set_span_in_context(span))


async def leave_job_span(ctx: dict[str, Any]) -> None:
    if (token := ctx.pop(_JOB_CONTEXT, None)) is not None:
        context.detach(token)


NO_SPAN = contextlib.nullcontext()


def span(settings: Settings, name: str, **attributes: Any) -> contextlib.AbstractContextManager[object]:
    """A span around a step, child of the current one, when tracing is on; else nothing at all (not even OpenTelemetry's
    no-op span: a step on every command's path would pay for it)."""
    if not (INSTALLED and settings.otel):
        return NO_SPAN
    return trace.get_tracer("widgetry").start_as_current_span(name, attributes=attributes)
