"""Reading an import's body (JSON or CSV) into rows: each row checked on its own against the widget's rules, so one
bad row is reported in the import's result instead of refusing the rest."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
from litestar.plugins.problem_details import ProblemDetailsException

from widgetry.api.problems import MSGSPEC_ERROR, in_words, invalid, not_json, problem_exception
from widgetry.api.schemas import WidgetCreate, faults_of
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


class JsonRow:
    """A row of a JSON import as decoded, not yet checked. A type of its own, so that msgspec hands each row to the
    import's counter as it parses (its `dec_hook`), and a body of more rows than an import may hold is refused at the
    first row past the cap instead of after all of them are built."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class ImportBody(msgspec.Struct, forbid_unknown_fields=True):
    widgets: Annotated[list[JsonRow], msgspec.Meta(min_length=1)]


class ParsedImport(msgspec.Struct, frozen=True):
    rows: list[ImportRow]
    rejected: list[dict[str, Any]]
    """Rows refused as they are, each `{"row", "sku", "reason"}`."""

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.rejected)


class Refused(msgspec.Struct, frozen=True):
    """A row that breaks a rule as it is, and why."""

    sku: str | None
    reason: str


def parse_import(media_type: str, body: bytes) -> ParsedImport:
    """The rows of a JSON (`{"widgets": [...]}`) or CSV body. The body as a whole must be well formed and hold 1 to
    10,000 widgets (else a 4xx problem); each row is then checked alone. Reading stops at the first row past the cap,
    so what an import costs in work and memory is bounded by the cap, not by how many rows its body holds."""
    checked_rows = _csv_rows(body) if media_type == CSV_MEDIA_TYPE else _json_rows(body)
    rows: list[ImportRow] = []
    rejected: list[dict[str, Any]] = []
    first_row_of: dict[str, int] = {}
    for number, row in enumerate(checked_rows, start=1):
        if isinstance(row, Refused):
            rejected.append({"row": number, "sku": row.sku, "reason": row.reason})
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


def _too_many() -> ProblemDetailsException:
    return problem_exception(413, f"An import holds at most {MAX_IMPORT_WIDGETS:,} widgets; this one holds more.")


def _checked(raw: Any, *, strict: bool) -> msgspec.Struct | Refused:
    try:
        return msgspec.convert(raw, WidgetRow, strict=strict)
    except msgspec.ValidationError as error:
        if not isinstance(raw, dict):
            return Refused(None, _reason(str(error)))
        sku = raw.get("sku") if isinstance(raw.get("sku"), str) else None
        # Every fault of the row, as `POST /widgets` names every fault of its body; msgspec stops at the first.
        faults = [
            fault["message"] if fault["key"] == "body" else f"{fault['key']}: {fault['message']}"
            for fault in faults_of(raw, WidgetRow, strict=strict)
        ]
        return Refused(sku, "; ".join(faults) or _reason(str(error)))


def _cells(count: int) -> str:
    return f"{count} cell" if count == 1 else f"{count} cells"


def _reason(error: str) -> str:
    """msgspec's message, with a broken pattern said in words: "name: must be 1 to 200 characters ..."."""
    if (found := MSGSPEC_ERROR.match(error)) and found["path"]:
        return f"{found['path']}: {in_words(found['reason'], found['path'])}"
    return error


def _json_rows(body: bytes) -> Iterator[msgspec.Struct | Refused]:
    counted = itertools.count(1)

    def count_row(_: type, value: Any) -> JsonRow:
        if next(counted) > MAX_IMPORT_WIDGETS:
            raise _too_many()
        return JsonRow(value)

    try:
        decoded = msgspec.json.Decoder(ImportBody, dec_hook=count_row).decode(body).widgets
    except msgspec.ValidationError as error:
        raise invalid(
            'The body must be {"widgets": [...]} with 1 to 10,000 widgets.', [{"name": "body", "reason": str(error)}]
        ) from error
    except msgspec.DecodeError as error:
        raise not_json(str(error)) from error
    # JSON has numbers, so `"100"` is a wrong type there.
    return (_checked(row.value, strict=True) for row in decoded)


def _csv_rows(body: bytes) -> Iterator[msgspec.Struct | Refused]:
    """The rows, each checked as it is read: a body of many rows is never held as rows."""
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(body), encoding="utf-8-sig", newline=""), strict=True)
    try:
        header = next(reader, [])
        unknown = [column for column in header if column not in CSV_COLUMNS]
        missing = [column for column in CSV_REQUIRED if column not in header]
        if unknown or missing or len(set(header)) != len(header):
            raise invalid(
                f"The first line must name the columns: {','.join(CSV_COLUMNS)} (internal_notes may be left out).",
                [{"name": "header", "reason": f"unknown {unknown}, missing {missing}, as given {header}"}],
            )
        sku_at = header.index("sku")
        for number, cells in enumerate(filter(None, reader), start=1):
            if number > MAX_IMPORT_WIDGETS:
                raise _too_many()
            if len(cells) != len(header):
                sku = cells[sku_at] if sku_at < len(cells) else None
                yield Refused(sku, f"{_cells(len(cells))} where the header names {len(header)} columns")
            else:
                # CSV has only text, so there `"100"` is a price.
                yield _checked(dict(zip(header, cells, strict=True)), strict=False)
    except UnicodeDecodeError as error:
        raise problem_exception(
            400, "A CSV import must be UTF-8.", invalid_params=[{"name": "body", "reason": str(error)}]
        ) from error
    except csv.Error as error:
        raise invalid(
            f"The CSV is malformed at line {reader.line_num}.", [{"name": "body", "reason": str(error)}]
        ) from error
