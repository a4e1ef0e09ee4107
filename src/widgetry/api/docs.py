"""What the OpenAPI document at `/schema` teaches beyond the shapes: each problem type (also served at its own
`type` URI, `/problems/<slug>`, as RFC 9457 suggests), which operation answers with which, and worked examples."""

from __future__ import annotations

from copy import copy
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import PathParameter

from widgetry.api.imports import WidgetRow
from widgetry.api.problems import problem_exception
from widgetry.api.schemas import CommandResource
from widgetry.domain.problems import PROBLEM_BASE, problem

PROBLEM_MEDIA_TYPE = "application/problem+json"


class InvalidParam(msgspec.Struct, frozen=True):
    name: str
    reason: str


class ProblemDocument(msgspec.Struct, frozen=True, omit_defaults=True):
    """An error, as every error is answered (RFC 9457, `application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str
    invalid_params: list[InvalidParam] | None = None
    command: str | None = None
    """On a failed command answered after `Prefer: wait`: the command's location."""


class ProblemType(msgspec.Struct, frozen=True):
    """One problem `type`: its status, title, when it is answered and an example `detail`."""

    type: str
    status: int
    title: str
    description: str
    example_detail: str


def _type(slug: str, status: int, title: str, description: str, example_detail: str) -> tuple[str, ProblemType]:
    return slug, ProblemType(PROBLEM_BASE + slug, status, title, description, example_detail)


PROBLEM_TYPES: dict[str, ProblemType] = dict(
    [
        _type("bad-request", 400, "Bad Request", "The request is malformed: a body that is not JSON (or not UTF-8, "
              "or nested deeper than about 1,000 levels), a header or query parameter that cannot be read.",
              "The request body is not valid JSON."),
        _type("unauthorized", 401, "Unauthorized", "A write (or, when reads are protected, any request) without a "
              "valid API key.", "A valid API key is required: send it as 'X-API-Key: <key>' or "
              "'Authorization: Bearer <key>'."),
        _type("forbidden", 403, "Forbidden", "The API key is valid but lacks the scope the route needs (`write` for "
              "commands; `admin` for `/admin/...`, `/saq` and, when reads are protected, `/metrics`), or the "
              "dashboard refused a write: its session's CSRF token is missing or wrong.",
              "This API key lacks the 'admin' scope that this route needs."),
        _type("not-found", 404, "Not Found", "No route has this path.", "Not Found"),
        _type("widget-not-found", 404, "Widget not found", "No widget has this sku: a read of it, or a command "
              "that needs it (update, delete) once applied.", "No widget has sku 'SPR-1'."),
        _type("command-not-found", 404, "Not Found", "No command has this id (or it finished longer ago than "
              "commands are kept).", "No command has id 0193c1a2-7c4e-7d21-9a57-2f1d3e4b5c6d."),
        _type("method-not-allowed", 405, "Method Not Allowed", "The path exists, not with this method.",
              "Method Not Allowed"),
        _type("widget-exists", 409, "Widget already exists", "A create, once applied, found a widget with its sku.",
              "A widget with sku 'SPR-1' already exists."),
        _type("conflict", 412, "Version conflict", "An `If-Match` version that the widget has moved on from.",
              "Widget 'SPR-1' is at version 3, not 2."),
        _type("payload-too-large", 413, "Request Entity Too Large", "A body over 1 MiB (10 MiB for an import), or "
              "an import of more than 10,000 widgets.", "An import holds at most 10,000 widgets; this one holds more."),
        _type("unsupported-media-type", 415, "Unsupported Media Type", "A body sent with a `Content-Type` its "
              "operation does not take: `application/json` for a create or an update, `application/json` or "
              "`text/csv` for an import. `Accept` (and `Accept-Patch` on a PATCH) lists what it takes.",
              "POST /widgets takes a body sent as application/json; this one was sent as text/plain."),
        _type("invalid", 422, "Invalid request", "The request breaks a rule of the API: `invalid_params` names each "
              "field and why.", "The request does not meet the rules of the API."),
        _type("idempotency-key-reused", 422, "Idempotency key reused", "An `Idempotency-Key` already used with a "
              "different request.", "This Idempotency-Key was used for a different request (command …)."),
        _type("too-many-requests", 429, "Too Many Requests", "The client (its API key, else its address) is over "
              "one of its budgets: writes, or every other request; `Retry-After` and `RateLimit-Reset` say when to "
              "try again.", "More than 750 writes per second: retry in 1 s."),
        _type("too-many-streams", 429, "Too many streams", "The client holds as many open event streams on this "
              "process as it may.", "At most 20 open event streams per client."),
        _type("internal", 500, "Internal error", "A command that could not be applied after every retry (on the "
              "command), or a fault of the service (logged).", "The command could not be applied after 10 attempts."),
        _type("unavailable", 503, "Service Unavailable", "The database or Redis is unavailable; `Retry-After` says "
              "when to try again. Nothing was recorded.", "A backing service (database or Redis) is unavailable; "
              "try again shortly."),
    ]
)  # fmt: skip


def problem_responses(*slugs: str) -> dict[int, ResponseSpec]:
    """The problem responses an operation may answer with, one per status, each problem type an example."""
    by_status: dict[int, list[ProblemType]] = {}
    for slug in slugs:
        by_status.setdefault(PROBLEM_TYPES[slug].status, []).append(PROBLEM_TYPES[slug])
    return {
        status: ResponseSpec(
            data_container=ProblemDocument,
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
            description=" ".join(f"`{kind.type}`: {kind.description}" for kind in kinds),
            examples=[
                Example(
                    summary=kind.type.removeprefix(PROBLEM_BASE),
                    value=problem(kind.type.removeprefix(PROBLEM_BASE), kind.title, kind.status, kind.example_detail),
                )
                for kind in kinds
            ],
        )
        for status, kinds in by_status.items()
    }


Handler = TypeVar("Handler", bound=HTTPRouteHandler)


def answering_also(handler: Handler, *slugs: str) -> Handler:
    """The handler as a router that guards it registers it: documented with its guard's problems besides its own (the
    handler is shared, and other routes register it without that guard). Litestar copies a handler it registers;
    this copy only adds those responses."""
    guarded = copy(handler)
    guarded.responses = {**(handler.responses or {}), **problem_responses(*slugs)}
    return guarded


WRITE_PROBLEMS = (
    "bad-request", "unauthorized", "forbidden", "payload-too-large", "invalid", "idempotency-key-reused",
    "too-many-requests", "unavailable",
)  # fmt: skip
"""What any write may be answered with, before a command is recorded."""
READ_PROBLEMS = ("bad-request", "invalid", "too-many-requests", "unavailable")


@get("/problems", tags=["documentation"])
async def list_problem_types() -> list[ProblemType]:
    """Every problem `type` the API answers with, and when."""
    return list(PROBLEM_TYPES.values())


@get("/problems/{slug:str}", tags=["documentation"], responses=problem_responses("bad-request", "not-found"))
async def get_problem_type(
    slug: Annotated[
        str, PathParameter(pattern=r"^[a-z-]{1,40}$", description="The last part of the `type`, e.g. `widget-exists`.")
    ],
) -> ProblemType:
    """A problem `type` URI, explained: the page a client lands on when it follows a problem's `type`."""
    if (kind := PROBLEM_TYPES.get(slug)) is None:
        raise problem_exception(404, f"No problem type is called {slug!r}.")
    return kind


def examples(**named: Any) -> list[Example]:
    return [Example(summary=name.replace("_", " "), value=value) for name, value in named.items()]


SPROCKET = {"sku": "SPR-1", "name": "Sprocket", "price_cents": 1999, "internal_notes": "supplier: Acme"}
ACCEPTED = {
    "id": "0193c1a2-7c4e-7d21-9a57-2f1d3e4b5c6d",
    "type": "create_widget",
    "status": "accepted",
    "sku": "SPR-1",
    "accepted_at": "2026-11-28T12:00:00.000000Z",
    "finished_at": None,
    "progress": None,
    "error": None,
    "result": None,
    "links": {"self": "/commands/0193c1a2-7c4e-7d21-9a57-2f1d3e4b5c6d", "widget": "/widgets/SPR-1"},
}
IMPORT_CSV = 'sku,name,price_cents,internal_notes\nSPR-1,Sprocket,1999,supplier: Acme\nGEAR-7,"Gear, large",450,\n'
IMPORTED = ACCEPTED | {
    "type": "import_widgets",
    "status": "succeeded",
    "sku": None,
    "finished_at": "2026-11-28T12:00:01.250000Z",
    "progress": {"done": 3, "total": 3},
    "result": {
        "total": 3,
        "created": 1,
        "updated": 1,
        "unchanged": 0,
        "failed": 1,
        "errors": [
            {
                "row": 3,
                "sku": "bad sku!",
                "reason": "sku: must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            }
        ],
    },
    "links": {"self": "/commands/0193c1a2-7c4e-7d21-9a57-2f1d3e4b5c6d", "widget": None},
}


def command_responses(*problems: str, outcome: dict[str, Any] = ACCEPTED) -> dict[int, ResponseSpec]:
    """A write's answers: 202 with the command (its `Location` in the header), 200 when `Prefer: wait` saw it
    succeed, and its problems: any write's, and those its command can fail with (answered after `Prefer: wait`)."""
    accepted = ResponseSpec(
        data_container=CommandResource,
        generate_examples=False,
        description="Accepted: the command is recorded and queued; follow it at `Location` or on the event stream.",
        examples=examples(accepted=outcome | {"status": "accepted", "finished_at": None, "result": None}),
    )
    finished = ResponseSpec(
        data_container=CommandResource,
        generate_examples=False,
        description="With `Prefer: wait=N`: the command succeeded within N seconds (or a repeated idempotent request).",
        examples=examples(succeeded=outcome | {"status": "succeeded", "finished_at": "2026-11-28T12:00:00.040000Z"}),
    )
    return {202: accepted, 200: finished, **problem_responses(*WRITE_PROBLEMS, *problems)}


EVENT = {
    "event_id": "0193c1a2-7d01-7a3b-8c5e-6f7a8b9c0d1e",
    "type": "widget.created",
    "sku": "SPR-1",
    "version": 1,
    "command_id": ACCEPTED["id"],
    "occurred_at": "2026-11-28T12:00:00.031000Z",
    "data": {
        "sku": "SPR-1",
        "name": "Sprocket",
        "price_cents": 1999,
        "version": 1,
        "created_at": "2026-11-28T12:00:00.031000Z",
        "updated_at": "2026-11-28T12:00:00.031000Z",
    },
}
EVENT_STREAM_RESPONSES = {
    200: ResponseSpec(
        data_container=str,
        media_type="text/event-stream",
        generate_examples=False,
        description="Server-sent events, endless: `id:` the stream position to resume from (`Last-Event-ID`), "
        "`event:` the type, `data:` the event as JSON (`event_id`, `type`, `sku`, `version`, `command_id`, "
        "`occurred_at`, `data`). `: ping` comments keep an idle stream open; a cursor that is unknown or older than "
        "the stream keeps gets one `stream.reset` event first.",
        examples=[
            Example(
                summary="one event",
                value="retry: 1000\n\nid: 1764331200031-0\nevent: widget.created\n"
                f"data: {msgspec.json.encode(EVENT).decode()}\n\n",
            )
        ],
    ),
    **problem_responses("bad-request", "invalid", "too-many-streams", "unavailable"),
}


def _row_schema() -> Schema:
    """An import row's schema, from the row type itself (whose fields and rules are the model's)."""
    document = msgspec.json.schema(WidgetRow)
    row = document["$defs"][document["$ref"].rsplit("/", 1)[1]]
    return Schema(
        type=OpenAPIType.OBJECT,
        required=row["required"],
        additional_properties=False,
        properties={
            name: Schema(
                type=OpenAPIType(rules["type"]),
                pattern=rules.get("pattern"),
                minimum=rules.get("minimum"),
                maximum=rules.get("maximum"),
            )
            for name, rules in row["properties"].items()
        },
    )


@dataclass
class ImportOperation(Operation):
    """`POST /widgets/imports` reads its body itself (JSON or CSV, checked row by row), so its two media types
    are described here rather than derived from a parameter."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description="Up to 10,000 widgets in at most 10 MiB; `sku` must not repeat.",
            content={
                "application/json": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        required=["widgets"],
                        additional_properties=False,
                        properties={
                            "widgets": Schema(
                                type=OpenAPIType.ARRAY, min_items=1, max_items=10_000, items=_row_schema()
                            )
                        },
                    ),
                    examples={
                        "two widgets": Example(
                            value={"widgets": [SPROCKET, {"sku": "GEAR-7", "name": "Gear, large", "price_cents": 450}]}
                        )
                    },
                ),
                "text/csv": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.STRING,
                        description="A header row `sku,name,price_cents,internal_notes` (`internal_notes` may be "
                        "left out), then one widget per row, UTF-8.",
                    ),
                    examples={"two widgets": Example(value=IMPORT_CSV)},
                ),
            },
        )
