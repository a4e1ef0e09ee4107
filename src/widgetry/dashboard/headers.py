"""The headers that keep a browser from turning the dashboard against its user: no script but the page's own files,
no framing, no sniffing, no referrer, and nothing stored from pages that carry the session's CSRF token."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
"""Only the dashboard's own files: no inline script or style, no handler attributes, nothing from elsewhere."""
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders(ASGIMiddleware):
    """Sets `SECURITY_HEADERS` on every response of the routers it is given, and `Cache-Control: no-store` where
    `no_store` (unless the response says otherwise, as the event stream does).

    A middleware rather than the routers' `response_headers`: Litestar adds those to what handlers return, not to the
    problem responses that guards and exception handlers make (a 401 is a page of the dashboard too).
    """

    scopes = (ScopeType.HTTP,)

    def __init__(self, *, no_store: bool) -> None:
        self.no_store = no_store

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if self.no_store and "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await next_app(scope, receive, send_with_headers)
