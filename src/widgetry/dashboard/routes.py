"""The dashboard's page, its sign-in and sign-out, and the API's handlers registered again under `/ui`.

The API router signs writes in with API keys; here the same handler objects are registered under a router whose
`opt` names the session scheme, so the page's forms run exactly the code a `curl` does; the admin reads are registered
again too, under `/ui/admin`, for a session whose key has the `admin` scope. The page renders its live parts in the
browser from the JSON reads and the event stream (static/dashboard.js), and sends its forms with htmx.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Request, Router, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import PermissionDeniedException
from litestar.params import Body
from litestar.plugins.htmx import ClientRedirect
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig

from widgetry.api.admin import WidgetAdminRead
from widgetry.api.commands import get_command
from widgetry.api.events import STILL_SIGNED_IN, stream_events
from widgetry.api.limits import RATE_LIMIT_EXEMPT
from widgetry.api.schemas import WidgetRead
from widgetry.api.security import AUTHENTICATE, admin_guard
from widgetry.api.widgets import (
    create_widget,
    delete_widget,
    get_widget,
    import_widgets,
    list_widgets,
    update_widget,
)
from widgetry.dashboard.headers import SecurityHeaders
from widgetry.dashboard.sessions import (
    CLIENT,
    CSRF_HEADER,
    carries_csrf_token,
    csrf_token,
    session_client,
    session_config,
    session_lives_on,
    signed_in,
    start_session,
)
from widgetry.domain.models import Scope
from widgetry.settings import Settings

HERE = Path(__file__).parent
CROSS_SITE = {"cross-site", "same-site"}
"""`Sec-Fetch-Site` values of a request another site (or a sibling subdomain) made the browser send."""


class SignIn(msgspec.Struct):
    key: str = ""


@get("/")
async def dashboard(request: Request[Any, Any, Any]) -> Template:
    """The dashboard once signed in, else the sign-in page."""
    client = await session_client(request)
    if client is None:
        if request.session:
            request.clear_session()
        return _sign_in_page()
    return Template(
        "dashboard.html",
        context={
            "csrf_token": csrf_token(request),
            "csrf_header": CSRF_HEADER,
            "client": client.fingerprint[:12],
            # The page asks for internal fields, and has a place for them, only where its reads would be answered.
            "admin": Scope.ADMIN in client.scopes,
            "scopes": ", ".join(scope for scope in Scope if scope in client.scopes),
            "version": version("widgetry"),
        },
    )


@post("/ui/sign-in", status_code=303)
async def sign_in(
    request: Request[Any, Any, Any], data: Annotated[SignIn, Body(media_type=RequestEncodingType.URL_ENCODED)]
) -> Template | Redirect:
    # SameSite keeps the session cookie from other sites, but nothing stops another site posting its own key here
    # and signing a visitor in as itself: browsers say where a form came from.
    if request.headers.get("sec-fetch-site") in CROSS_SITE:
        raise PermissionDeniedException("Sign in from the dashboard's own page.")
    key = data.key.strip()
    if not key:
        return _sign_in_page("Enter an API key.", status_code=401)
    client = await request.app.state.api_keys.authenticate(key)
    if client is None:
        return _sign_in_page("That API key is not accepted: check it, or ask for a new one.", status_code=401)
    await start_session(request, client.fingerprint)
    return Redirect("/", status_code=303)


@post("/ui/sign-out", status_code=200)
async def sign_out(request: Request[Any, Any, Any]) -> ClientRedirect:
    """Ends the session; htmx then loads `/`, the sign-in page. Open to a session whose key was revoked since."""
    if request.session.get(CLIENT) and not carries_csrf_token(request):
        raise PermissionDeniedException(f"Signing out needs the session's {CSRF_HEADER} header: reload the page.")
    request.clear_session()
    return ClientRedirect("/")


def _sign_in_page(error: str | None = None, status_code: int = 200) -> Template:
    return Template("sign_in.html", context={"error": error, "version": version("widgetry")}, status_code=status_code)


def dashboard_routers(settings: Settings) -> list[Router]:
    session = session_config(settings)
    return [
        Router(
            "/",
            middleware=[SecurityHeaders(no_store=True), session.middleware],
            include_in_schema=False,
            route_handlers=[
                dashboard,
                sign_in,
                sign_out,
                Router(
                    "/ui",
                    guards=[signed_in],
                    return_dto=WidgetRead,
                    opt={AUTHENTICATE: session_client, STILL_SIGNED_IN: session_lives_on},
                    route_handlers=[
                        list_widgets,
                        get_command,
                        stream_events,
                        create_widget,
                        update_widget,
                        delete_widget,
                        import_widgets,
                        # The admin view, as `/admin` has it, read with the session: a session whose key lacks the
                        # scope is refused here as that key is there (403).
                        Router(
                            "/admin",
                            guards=[admin_guard],
                            return_dto=WidgetAdminRead,
                            route_handlers=[list_widgets, get_widget],
                        ),
                    ],
                ),
            ],
        ),
        # No session here: a stylesheet needs none, and a page load is several of these.
        create_static_files_router(
            "/ui/static",
            directories=[HERE / "static"],
            opt={RATE_LIMIT_EXEMPT: True},
            middleware=[SecurityHeaders(no_store=False)],
        ),
    ]


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine)
