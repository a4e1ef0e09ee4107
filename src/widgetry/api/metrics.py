"""`GET /metrics`: who may scrape, in which format, from the rendering shared for a second."""

from __future__ import annotations

import hmac

from litestar import Request, Response, get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler
from litestar.plugins.prometheus import PrometheusController

from widgetry.api.security import admin_guard, presented_key
from widgetry.observability.metrics import OPENMETRICS_FORMAT, TEXT_FORMAT
from widgetry.services.keys import digest

TEXT = "text/plain"
OPENMETRICS = "application/openmetrics-text"


def negotiate(request: Request) -> str:
    """OpenMetrics when the scraper prefers it (Prometheus does), else the classic text format; the whole
    `Content-Type` of either.

    Two fixed formats rather than prometheus-client's `choose_encoder`, which echoes the version and escaping a client
    asks for: each variant would need a rendering of its own. A malformed `Accept` gets the classic format (Litestar's
    parser raises on a quality such as `q=1e999`).
    """
    try:
        preferred = request.accept.best_match([TEXT, OPENMETRICS], default=TEXT)
    except (ValueError, OverflowError):
        return TEXT_FORMAT
    return OPENMETRICS_FORMAT if preferred == OPENMETRICS else TEXT_FORMAT


async def metrics_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """The metrics token (`WIDGETRY_METRICS_TOKEN`), sent as an API key is, or an admin key: a scraper can then be
    given a credential that can do nothing else."""
    token: str | None = connection.app.state.settings.metrics_token
    presented = presented_key(connection)
    if token and presented and hmac.compare_digest(digest(presented), digest(token)):
        return
    await admin_guard(connection, handler)


class MetricsController(PrometheusController):
    """Litestar's Prometheus endpoint, with the service's own metrics (read from Redis and the database) added.

    The `Content-Type` is set whole: given as a media type, Litestar appends a `charset` to the one the format has.
    """

    @get(include_in_schema=False)
    async def get(self, state: State, request: Request) -> Response[bytes]:
        content_type = negotiate(request)
        body = await state.exposition.render(state, content_type)
        return Response(body, headers={"Content-Type": content_type, "Vary": "Accept"})
