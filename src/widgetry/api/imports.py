"""Reading an import's body (JSON or CSV) into rows: each row checked on its own against the widget's rules, so one
bad row is reported in the import's result instead of refusing the rest."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any

import msgspec
from litestar.enums import MediaType

from widgetry.api.problems import MSGSPEC_ERROR, in_words, invalid, problem_exception
from widgetry.api.schemas import WidgetCreate
from widgetry.domain.models import Widget
from widgetry.services.imports import ImportRow

MAX_IMPORT_BYTES = 10 * 1024 * 1024
MAX_IMPORT_WIDGETS = 10_000
CSV_MEDIA_TYPE = "text/csv"
CSV_REQUIRED = ("sku", "name", "price_cents")


def _row_type() -> type[msgspec.Struct]:
    """A row's type, derived from the create body's fields and rules (the model's), so an import row is checked
    exactly as `POST /widgets` is. Optional fields are left out when absent: an import then leaves them as they are
    on a widget it updates."""
    fields: list[tuple[str, Any, Any]] = []
    for field in WidgetCreate.generate_field_definitions(Widget):
        if field.name in Widget.SERVER_FIELDS:
            continue
        if field.is_required:
            fields.append((field.name, field.annotation))  # type: ignore[arg-type]
        else:
            fields.append((field.name, field.annotation | msgspec.UnsetType, msgspec.UNSET))
    return msgspec.defstruct("WidgetRow", fields, forbid_unknown_fields=True, kw_only=True)


WidgetRow = _row_type()
CSV_COLUMNS = tuple(WidgetRow.__struct_fields__)


class ImportBody(msgspec.Struct, forbid_unknown_fields=True):
    widgets: Annotated[list[Any], msgspec.Meta(min_length=1)]


class ParsedImport(msgspec.Struct, frozen=True):
    rows: list[ImportRow]
    rejected: list[dict[str, Any]]
    """Rows refused as they are, each `{"row", "sku", "reason"}`."""

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.rejected)


def parse_import(media_type: str, body: bytes) -> ParsedImport:
    """The rows of a JSON (`{"widgets": [...]}`) or CSV body. The body as a whole must be well formed and hold 1 to
    10,000 widgets (else a 4xx problem); each row is then checked alone."""
    if media_type == CSV_MEDIA_TYPE:
        raw_rows, lenient = _csv_rows(body), True
    elif media_type in (MediaType.JSON, "application/json"):
        raw_rows, lenient = _json_rows(body), False
    else:
        raise problem_exception(
            415,
            f"An import is sent as application/json or {CSV_MEDIA_TYPE}, not {media_type or 'without a Content-Type'}.",
        )
    if len(raw_rows) > MAX_IMPORT_WIDGETS:
        raise problem_exception(413, f"An import holds at most {MAX_IMPORT_WIDGETS:,} widgets, not {len(raw_rows):,}.")
    rows: list[ImportRow] = []
    rejected: list[dict[str, Any]] = []
    first_row_of: dict[str, int] = {}
    for number, raw in enumerate(raw_rows, start=1):
        sku = raw.get("sku") if isinstance(raw, dict) and isinstance(raw.get("sku"), str) else None
        try:
            # JSON has numbers, so `"100"` is a wrong type there; CSV has only text, so there it is a price.
            row = msgspec.convert(raw, WidgetRow, strict=not lenient)
        except msgspec.ValidationError as error:
            rejected.append({"row": number, "sku": sku, "reason": _reason(str(error))})
            continue
        values = {name: value for name in CSV_COLUMNS if (value := getattr(row, name)) is not msgspec.UNSET}
        sku = values.pop("sku")
        if sku in first_row_of:
            rejected.append({"row": number, "sku": sku, "reason": f"the sku repeats row {first_row_of[sku]}"})
            continue
        first_row_of[sku] = number
        rows.append(ImportRow(row=number, sku=sku, values=values))
    if not rows:
        raise invalid(
            "No row of the import is a valid widget.",
            [{"name": f"widgets[{r['row']}]", "reason": r["reason"]} for r in rejected[:100]],
        )
    return ParsedImport(rows=rows, rejected=rejected)


def _reason(error: str) -> str:
    """msgspec's message, with a broken pattern said in words: "name: must be 1 to 200 characters ..."."""
    if (found := MSGSPEC_ERROR.match(error)) and found["path"]:
        return f"{found['path']}: {in_words(found['reason'], found['path'])}"
    return error


def _json_rows(body: bytes) -> list[Any]:
    try:
        return msgspec.json.decode(body, type=ImportBody).widgets
    except msgspec.ValidationError as error:
        raise invalid(
            'The body must be {"widgets": [...]} with 1 to 10,000 widgets.', [{"name": "body", "reason": str(error)}]
        ) from error
    except msgspec.DecodeError as error:
        raise problem_exception(
            400, "The request body is not valid JSON.", invalid_params=[{"name": "body", "reason": str(error)}]
        ) from error


def _csv_rows(body: bytes) -> list[dict[str, Any]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise invalid("A CSV import must be UTF-8.", [{"name": "body", "reason": str(error)}]) from error
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or []
        unknown = [column for column in header if column not in CSV_COLUMNS]
        missing = [column for column in CSV_REQUIRED if column not in header]
        if unknown or missing or len(set(header)) != len(header):
            raise invalid(
                f"The first line must name the columns: {','.join(CSV_COLUMNS)} (internal_notes may be left out).",
                [{"name": "header", "reason": f"unknown {unknown}, missing {missing}, as given {header}"}],
            )
        # A row with more cells than the header has them under the key `None`: the row is then refused.
        return [{str(key): value for key, value in row.items()} for row in reader]
    except csv.Error as error:
        raise invalid(
            f"The CSV is malformed at line {reader.line_num}.", [{"name": "body", "reason": str(error)}]
        ) from error
