"""The application factory: the composition root, the one module that wires api, services and workers together."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from advanced_alchemy.extensions.litestar import SQLAlchemyInitPlugin
from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components
from litestar.static_files import create_static_files_router
from litestar_saq import SAQPlugin
from swagger_ui_bundle import swagger_ui_path

from widgetry.api.admin import admin_router
from widgetry.api.asyncapi import asyncapi_document
from widgetry.api.commands import get_command
from widgetry.api.dependencies import DEPENDENCIES
from widgetry.api.docs import answering_also, get_problem_type, list_problem_types
from widgetry.api.events import stream_events, stream_widget_events
from widgetry.api.limits import RATE_LIMIT_EXEMPT, OpenStreams, RateLimit, RateLimiter
from widgetry.api.metrics import MetricsController, metrics_guard
from widgetry.api.ops import health, ready
from widgetry.api.options import allow_every_method
from widgetry.api.problems import problem_details_plugin
from widgetry.api.schemas import WidgetRead
from widgetry.api.security import ANONYMOUS, SECURITY_SCHEMES, ApiKeys, admin_guard, api_key_guard, key_security
from widgetry.api.widgets import (
    create_widget,
    delete_widget,
    get_widget,
    import_widgets,
    list_widgets,
    read_cache_control,
    update_widget,
)
from widgetry.cli import WidgetryCLIPlugin
from widgetry.connections import Connections
from widgetry.dashboard.routes import dashboard_routers, template_config
from widgetry.dashboard.sessions import SESSION_STORE, session_store
from widgetry.migrating import upgrade_if_behind
from widgetry.observability.counts import flushing
from widgetry.observability.logs import structlog_plugin
from widgetry.observability.metrics import Exposition, prometheus_config
from widgetry.observability.outcomes import observe
from widgetry.observability.tracing import tracing_plugins
from widgetry.services.accept import CommandIntake
from widgetry.services.queries.held import held_connection
from widgetry.settings import Settings
from widgetry.sqlite import WalCheckpoints
from widgetry.streaming.hub import EventHub
from widgetry.workers.queue import build_queues, saq_plugin

logger = logging.getLogger("widgetry")

MAX_BODY_BYTES = 1024 * 1024
SCHEMA_ASSETS = "/schema/assets"
CORS_EXPOSED_HEADERS = [
    "Location",
    "ETag",
    "Retry-After",
    "RateLimit-Policy",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
]


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    connections = Connections.build(settings)
    observe(connections.alchemy.create_session_maker(), connections.counts)
    hub = EventHub(
        connections.redis,
        settings.events_stream,
        buffer_size=settings.subscriber_queue_size,
        keepalive=settings.keepalive_seconds,
    )
    queues = build_queues(connections)
    read_guards = [api_key_guard] if settings.protect_reads else []
    reads = [list_widgets, get_widget, get_command, stream_events, stream_widget_events]
    rate_limiter = RateLimiter.of(connections.redis, settings)
    return Litestar(
        route_handlers=[
            # Reads and writes share paths (`/widgets`), and Litestar gives each path one automatic OPTIONS
            # handler, so two routers on the same paths cannot both be registered: the write handlers carry the
            # API-key guard themselves, and this router adds it to reads when the settings ask for it.
            Router(
                "/",
                guards=read_guards,
                # Widgets' public view; `admin_router` registers the same reads again with the view an admin sees.
                return_dto=WidgetRead,
                cache_control=read_cache_control(private=settings.protect_reads),
                route_handlers=[
                    *(
                        # Where reads need a key, no key is `401` (any valid key may read).
                        [answering_also(read, "unauthorized") for read in reads] if settings.protect_reads else reads
                    ),
                    create_widget,
                    update_widget,
                    delete_widget,
                    import_widgets,
                ],
            ),
            admin_router(),
            Router(
                "/",
                route_handlers=[health, ready, list_problem_types, get_problem_type, asyncapi_document],
                opt={RATE_LIMIT_EXEMPT: True},
                security=ANONYMOUS,
            ),
            # Metrics tell how busy the service is and what it is asked: where reads are not for everyone, they are
            # for operators (an admin key) and for scrapers (the metrics token, which can do nothing else).
            Router(
                "/",
                route_handlers=[MetricsController],
                guards=[metrics_guard] if settings.metrics_protected else [],
            ),
            create_static_files_router(
                SCHEMA_ASSETS, directories=[swagger_ui_path], opt={RATE_LIMIT_EXEMPT: True}, include_in_schema=False
            ),
            *dashboard_routers(settings),
        ],
        dependencies=DEPENDENCIES,
        before_send=[allow_every_method],
        middleware=[prometheus_config().middleware, *([RateLimit()] if rate_limiter else [])],
        stores={SESSION_STORE: session_store(connections.redis, settings)},
        template_config=template_config(),
        cors_config=_cors_config(settings),
        plugins=[
            # Not `SQLAlchemyPlugin`, which adds a serialization plugin: it would give a widget read registered with
            # no DTO one of every column, `internal_notes` included. Without it such a read fails instead.
            SQLAlchemyInitPlugin(config=connections.alchemy),
            saq_plugin(connections, queues, web_guard=admin_guard),
            problem_details_plugin(),
            structlog_plugin(settings),
            *tracing_plugins(settings),
            WidgetryCLIPlugin(),
        ],
        state=State(
            {
                "settings": settings,
                "connections": connections,
                "hub": hub,
                "queues": queues,
                "exposition": Exposition(),
                "intake": CommandIntake(connections.alchemy, queues, settings),
                "open_streams": OpenStreams(settings.sse_connections_per_client),
                "rate_limiter": rate_limiter,
                "api_keys": ApiKeys.configured(settings, connections.alchemy),
            }
        ),
        lifespan=[_lifespan],
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="widgetry",
            version=version("widgetry"),
            description="A widget catalogue whose writes are commands: 202 Accepted, then events over SSE.",
            path="/schema",
            use_handler_docstrings=True,
            render_plugins=[_swagger_ui()],
            components=Components(security_schemes=SECURITY_SCHEMES),
            security=key_security() if settings.protect_reads else None,
        ),
        debug=settings.debug,
    )


def _swagger_ui() -> SwaggerRenderPlugin:
    """Swagger UI at /schema from the copy a Python package ships, not from a CDN: the docs work offline and
    behind a firewall, and no third-party script runs on a page that can send the user's API key."""
    return SwaggerRenderPlugin(
        js_url=f"{SCHEMA_ASSETS}/swagger-ui-bundle.js",
        css_url=f"{SCHEMA_ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{SCHEMA_ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f'<link rel="icon" type="image/png" href="{SCHEMA_ASSETS}/favicon-32x32.png">',
        path=["/", "/swagger"],
    )


def _cors_config(settings: Settings) -> CORSConfig | None:
    """No CORS headers at all unless origins are listed. Keys travel in headers, not cookies: no credentials."""
    if not settings.cors_origins:
        return None
    return CORSConfig(allow_origins=list(settings.cors_origins), expose_headers=CORS_EXPOSED_HEADERS)


@asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    connections: Connections = app.state.connections
    if settings.uses_sqlite:
        await upgrade_if_behind(connections.alchemy, settings)
    if settings.dev_key_generated:
        print(
            f"widgetry: development API key: {settings.effective_api_keys[0]} (kept in {settings.dev_key_path})",
            flush=True,
        )
    elif not settings.effective_api_keys + settings.effective_admin_keys:
        logger.warning("No WIDGETRY_API_KEYS or WIDGETRY_ADMIN_KEYS set: every write will be refused with 401.")
    await app.state.hub.start()
    freeze_startup_objects()
    try:
        with WalCheckpoints(settings.sqlalchemy_url) if settings.uses_sqlite else contextlib.nullcontext():
            async with flushing(connections.counts):
                yield
    finally:
        await app.state.intake.drain()
        # Litestar leaves lifespan managers before it runs the plugins' shutdown hooks: stop the in-process worker
        # here, before the connections it uses are closed.
        for worker in app.plugins.get(SAQPlugin).get_workers().values():
            if not worker.separate_process:
                await worker.stop()
        await app.state.hub.stop()
        await connections.redis.aclose()
        if (held := held_connection(connections.alchemy.get_engine())) is not None:
            await held.close()
        await connections.alchemy.get_engine().dispose()


def freeze_startup_objects() -> None:
    """Moves what starting up made (modules, the app, its routes and models) out of the garbage collector's reach:
    it lives as long as the process, and each full collection would scan it all again, a pause under load."""
    gc.collect()
    gc.freeze()
