"""Structured logs: structlog through Litestar's plugin, JSON lines in production, pretty in a terminal.

structlog's own lines (those about each command) and the standard library's (`logging.getLogger`: SAQ, SQLAlchemy,
Litestar) are rendered by the same processors and go to the same stream, stderr. structlog's are written directly:
through the standard library's machinery (a record, its queue handler, `ProcessorFormatter`) a line costs three
times as much (29 µs against 9 µs here), and there are three lines per command.
Each line's `event` says what happened; lines about a command carry its `command_id`.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any
from urllib.parse import unquote_plus

import structlog
from litestar.logging.config import LoggingConfig, StructLoggingConfig
from litestar.plugins.structlog import StructlogConfig, StructlogPlugin

from widgetry.settings import LogFormat, Settings

TIMESTAMP = structlog.processors.TimeStamper(fmt="iso", utc=True)


def _drop_color_message(_logger: object, _method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """Uvicorn passes its message again with terminal colour codes as an extra; the line has it already."""
    event.pop("color_message", None)
    return event


QUERY_PARAMETER = re.compile(r"(?<=[?&;])([^=&;#\s\"']+)=([^&;#\s\"']*)")
CREDENTIAL_NAME = re.compile(r"key|token|secret|passw|pwd|auth|credential|signature|session", re.IGNORECASE)
"""Query parameter names that may carry a credential (`api_key`, `key`, `token`, `access_token`, ...). Keys are
refused in the query string, yet the request line that carried one is logged, by uvicorn's access log first."""
REDACTED = "[redacted]"


def _redact_parameter(found: re.Match[str]) -> str:
    name = found[1]
    return f"{name}={REDACTED}" if CREDENTIAL_NAME.search(unquote_plus(name)) else found[0]


def redact_credentials(_logger: object, _method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """Replaces the value of every credential-like query parameter in the line's text (message, fields, traceback)."""
    for name, value in event.items():
        if isinstance(value, str) and "=" in value:
            event[name] = QUERY_PARAMETER.sub(_redact_parameter, value)
    return event


def writes_json(settings: Settings) -> bool:
    if settings.log_format is LogFormat.AUTO:
        return not sys.stderr.isatty()
    return settings.log_format is LogFormat.JSON


def _render(settings: Settings) -> list[structlog.typing.Processor]:
    """The last processors of every line, structlog's and the standard library's alike."""
    if writes_json(settings):
        return [structlog.processors.format_exc_info, redact_credentials, structlog.processors.JSONRenderer()]
    # The console renderer formats exceptions itself, with their traceback.
    return [
        redact_credentials,
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty() and settings.log_format is LogFormat.AUTO),
    ]


def _standard_library_formatter(settings: Settings) -> dict[str, Any]:
    """The `logging` formatter that renders the standard library's records as structlog renders its own lines."""
    return {
        "()": structlog.stdlib.ProcessorFormatter,
        "foreign_pre_chain": [
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            TIMESTAMP,
            structlog.stdlib.ExtraAdder(),
            _drop_color_message,
        ],
        "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_render(settings)],
    }


def uvicorn_log_config(settings: Settings) -> dict[str, Any]:
    """Uvicorn's own lines (start-up, access, shutdown) in the same format as the rest. Written straight to stderr
    rather than through the app's queue of log records, which stops with the app: uvicorn's last lines come after."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": _standard_library_formatter(settings)},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "structured", "stream": "ext://sys.stderr"}
        },
        "loggers": {name: {"handlers": ["stderr"], "propagate": False} for name in ("uvicorn", "uvicorn.access")},
    }


def structlog_plugin(settings: Settings) -> StructlogPlugin:
    render = _render(settings)
    level = logging.getLevelNamesMapping()[settings.log_level]
    standard_library = LoggingConfig(
        formatters={"standard": _standard_library_formatter(settings)},
        root={"handlers": ["queue_listener"], "level": settings.log_level},
        loggers={
            "litestar": {"level": settings.log_level, "handlers": ["queue_listener"], "propagate": False},
            # aiosqlite logs each statement with its parameters at the debug level: what widgets hold, their internal
            # notes among it, would reach the log.
            "aiosqlite": {"level": "INFO"},
            # SAQ logs three INFO lines per job (queued, processing, finished): at hundreds of commands a second, a
            # measurable share of the web and worker processes' time, saying nothing the command records do not.
            # Its warnings and errors (failed jobs, sweeps) still show.
            "saq": {"level": "WARNING"},
        },
    )
    return StructlogPlugin(
        StructlogConfig(
            structlog_logging_config=StructLoggingConfig(
                processors=[
                    structlog.contextvars.merge_contextvars,
                    structlog.processors.add_log_level,
                    TIMESTAMP,
                    *render,
                ],
                logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
                wrapper_class=structlog.make_filtering_bound_logger(level),
                standard_lib_logging_config=standard_library,
                pretty_print_tty=not writes_json(settings),
            ),
            # Litestar's request logging writes a line per request with its headers and body: a real share of a
            # write's cost at a thousand a second. Each command's own lines say what a request did.
            enable_middleware_logging=False,
        )
    )
