"""Every error as `application/problem+json` (RFC 9457), through Litestar's problem-details plugin."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

import msgspec
from litestar.exceptions import ClientException, HTTPException
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException, ProblemDetailsPlugin

from widgetry.domain.models import PATTERNS_IN_WORDS
from widgetry.domain.problems import PROBLEM_BASE, Problem
from widgetry.services.unavailable import is_unavailable

logger = logging.getLogger(__name__)

PATTERN_MISMATCH = "Expected `str` matching regex"
DECODER_RECURSION = re.compile(r"recursion depth exceeded while (?:deserializing|decoding)")
"""How msgspec and the json module say a document is nested too deeply for them."""
MSGSPEC_ERROR = re.compile(r"^(?P<reason>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.DOTALL)
SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    412: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "invalid",
    429: "too-many-requests",
    500: "internal",
    503: "unavailable",
}


def problem_exception(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemDetailsException:
    return ProblemDetailsException(
        status_code=status,
        type_=PROBLEM_BASE + (slug or SLUGS.get(status, "error")),
        title=title or HTTPStatus(status).phrase,
        detail=detail,
        headers=headers,
        extra=extra or None,
    )


def invalid(detail: str, invalid_params: list[dict[str, str]]) -> ProblemDetailsException:
    return problem_exception(422, detail, title="Invalid request", invalid_params=invalid_params)


def from_http_exception(exc: HTTPException) -> ProblemDetailsException:
    if exc.status_code == 400 and isinstance(exc, ClientException):  # the DTO decoder raises a plain 400
        return from_validation(exc)
    return problem_exception(exc.status_code, exc.detail, headers=exc.headers)


def in_words(reason: str, field: str) -> str:
    """A broken pattern said as the rule it stands for (msgspec names the regex itself)."""
    if reason.startswith(PATTERN_MISMATCH) and (words := PATTERNS_IN_WORDS.get(field)):
        return f"must be {words}"
    return reason


def from_validation(exc: ClientException) -> ProblemDetailsException:
    """A body that cannot be read as JSON is 400; anything else that breaks a rule is 422 with `invalid_params`."""
    if unreadable(exc):
        return not_json(exc.detail)
    items = [item for item in (exc.extra if isinstance(exc.extra, list) else []) if isinstance(item, dict)]
    params = [
        {"name": str(item.get("key") or item.get("source") or "body"), "reason": str(item.get("message", ""))}
        for item in items
    ]
    if not params and (found := MSGSPEC_ERROR.match(exc.detail)):
        # The DTO's msgspec decoder reports one error as text: "Expected `int`, got `str` - at `$.price_cents`".
        field = found["path"] or "body"
        params = [{"name": field, "reason": in_words(found["reason"], field)}]
    return invalid(
        "The request does not meet the rules of the API.", params or [{"name": "body", "reason": exc.detail}]
    )


def unreadable(exc: BaseException) -> bool:
    """Whether the error comes from a body msgspec could not read at all (malformed, cut short, not UTF-8), rather
    than from one it read that breaks a rule: Litestar reports both as one `ClientException`, the decoder's error
    as its cause."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, msgspec.DecodeError):
            return not isinstance(cause, msgspec.ValidationError)
        cause = cause.__cause__
    return False


def not_json(reason: str) -> ProblemDetailsException:
    return problem_exception(
        400, "The request body is not valid JSON.", invalid_params=[{"name": "body", "reason": reason}]
    )


def from_recursion(exc: RecursionError) -> ProblemDetailsException:
    """A body nested deeper than the decoder recurses (msgspec, like the json module, stops at Python's recursion
    limit, about 1,000 levels less the stack in use) is the client's to fix; any other recursion is the service's."""
    if not DECODER_RECURSION.search(str(exc)):
        return from_unexpected(exc)
    return problem_exception(
        400,
        "The request body is nested too deeply to be read.",
        invalid_params=[{"name": "body", "reason": "nested deeper than about 1,000 levels"}],
    )


def from_problem(exc: Problem) -> ProblemDetailsException:
    return ProblemDetailsException(
        status_code=exc.status, type_=PROBLEM_BASE + exc.slug, title=exc.title, detail=exc.detail
    )


def from_unavailable(exc: Exception) -> ProblemDetailsException:
    logger.warning("a backing service is unavailable: %r", exc)
    return problem_exception(
        503, "A backing service (database or Redis) is unavailable; try again shortly.", headers={"Retry-After": "1"}
    )


def from_unexpected(exc: Exception) -> ProblemDetailsException:
    if is_unavailable(exc):
        return from_unavailable(exc)
    logger.exception("unhandled error", exc_info=exc)
    return problem_exception(500, "An unexpected error occurred; it has been logged.")


def problem_details_plugin() -> ProblemDetailsPlugin:
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            exception_to_problem_detail_map={
                HTTPException: from_http_exception,
                Problem: from_problem,
                RecursionError: from_recursion,
                # Errors from the database and Redis come wrapped in many ways (see `is_unavailable`): each is
                # classified by its chain of causes, as unavailable (503, try again) or unexpected (500).
                Exception: from_unexpected,
            }
        )
    )
