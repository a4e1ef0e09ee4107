"""`OPTIONS` on any path answers with every method the path serves."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.datastructures import MutableScopeHeaders
from litestar.routes import HTTPRoute

if TYPE_CHECKING:
    from litestar.types import Message, Scope


async def allow_every_method(message: Message, scope: Scope) -> None:
    """A `before_send` hook that corrects the `Allow` header of Litestar's automatic `OPTIONS` answer.

    Litestar 2 makes a path's `OPTIONS` handler along with the path's first handler and keeps it when more are
    registered, so it answers with the methods known then: `GET, OPTIONS` for `/widgets`, which `POST` serves too
    (litestar#4169, fixed only in Litestar 3). The methods are read from the app's finished routes instead.
    """
    if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
        return
    headers = MutableScopeHeaders.from_message(message)
    if "allow" not in headers or not (template := scope.get("path_template")):
        return
    routes = [route for route in scope["app"].routes if isinstance(route, HTTPRoute) and route.path_format == template]
    if methods := {method for route in routes for method in route.methods}:
        headers["Allow"] = ", ".join(sorted(methods))
