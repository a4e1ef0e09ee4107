"""Request and response shapes. Widget shapes are derived from the model; the command shape is the contract's
(docs/api.md)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from advanced_alchemy.extensions.litestar import SQLAlchemyDTO, SQLAlchemyDTOConfig
from litestar.connection import ASGIConnection
from litestar.dto.data_structures import DTOFieldDefinition
from litestar.exceptions import SerializationException, ValidationException
from litestar.openapi.spec import Reference, Schema
from litestar.params import KwargDefinition
from litestar.serialization import decode_json
from litestar.typing import FieldDefinition

from widgetry.api.problems import in_words
from widgetry.compat import DTOBackend, DTOCodegenBackend, SchemaCreator
from widgetry.domain.models import CommandRecord, Widget


class WidgetRead(SQLAlchemyDTO[Widget]):
    config = SQLAlchemyDTOConfig(exclude=set(Widget.PRIVATE_FIELDS))


class StrictJSONBackend(DTOCodegenBackend):
    """Decodes request bodies in msgspec's strict mode: JSON has numbers, so `"100"` is not a price.

    Litestar's DTOs decode leniently (strings to numbers), which would accept what the contract calls a wrong type.
    A body that breaks the rules is refused with every field at fault, where msgspec names only the first.
    """

    def parse_raw(self, raw: bytes, asgi_connection: ASGIConnection) -> Any:
        type_decoders = asgi_connection.route_handler.resolve_type_decoders()
        try:
            return decode_json(value=raw, target_type=self.annotation, type_decoders=type_decoders, strict=True)
        except SerializationException as error:
            if not isinstance(error.__cause__, msgspec.ValidationError):
                raise
            if not (faults := every_fault(raw, self.annotation)):
                raise
            raise ValidationException("The request does not meet the rules of the API.", extra=faults) from error


def every_fault(raw: bytes, struct: Any) -> list[dict[str, str]]:
    """Each rule of `struct` that the JSON object `raw` breaks, as `{"key", "message"}`, or `[]` when `raw` is not
    an object. msgspec stops at the first fault: here each field is converted alone to its own type in the struct
    (the rules derived from the model), and the object's own faults, a field missing or unknown, are the body's."""
    if not (isinstance(struct, type) and issubclass(struct, msgspec.Struct)):
        return []
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return []
    return faults_of(body, struct, strict=True) if isinstance(body, dict) else []


def faults_of(body: dict[str, Any], struct: type[msgspec.Struct], *, strict: bool) -> list[dict[str, str]]:
    """Each rule of `struct` that the object `body` breaks (see `every_fault`); `strict=False` takes text for numbers,
    as a CSV import's cells are."""
    fields = {field.encode_name: field for field in msgspec.structs.fields(struct)}
    faults = [
        {"key": "body", "message": f"Object missing required field `{name}`"}
        for name, field in fields.items()
        if field.required and name not in body
    ]
    if struct.__struct_config__.forbid_unknown_fields:
        faults += [
            {"key": "body", "message": f"Object contains unknown field `{name}`"} for name in body if name not in fields
        ]
    for name, value in body.items():
        if (field := fields.get(name)) is None:
            continue
        try:
            msgspec.convert(value, field.type, strict=strict)
        except msgspec.ValidationError as fault:
            faults.append({"key": name, "message": in_words(str(fault), name)})
    return faults


class WidgetWriteDTO(SQLAlchemyDTO[Widget]):
    """Write bodies derived from the model, rules included, decoded strictly.

    The rules are moved from Litestar's `KwargDefinition` onto the field's own type as `msgspec.Meta`: Litestar
    places them around `T | UNSET` for partial DTOs, which msgspec rejects for `pattern`, `ge` and `le`.
    """

    @classmethod
    def generate_field_definitions(cls, model_type: type[Widget]) -> Generator[DTOFieldDefinition, None, None]:
        for field in super().generate_field_definitions(model_type):
            rules = _msgspec_rules(field.kwarg_definition)
            if rules:
                field = replace(
                    field,
                    annotation=Annotated[field.annotation, msgspec.Meta(**rules)],
                    kwarg_definition=None,
                    passthrough_constraints=False,
                )
            yield field

    @classmethod
    def create_for_field_definition(
        cls, field_definition: FieldDefinition, handler_id: str, backend_cls: type[DTOBackend] | None = None
    ) -> None:
        super().create_for_field_definition(field_definition, handler_id, backend_cls or StrictJSONBackend)

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: SchemaCreator
    ) -> Reference | Schema:
        """The body's schema, saying all that the decoder enforces. Litestar's leaves out that unknown fields are
        refused, that a partial update needs a field, and, on a partial DTO's fields, any rule whose bound is 0
        (`price_cents >= 0`: it skips falsy values): clients built from it would send bodies that are refused."""
        schema = super().create_openapi_schema(field_definition, handler_id, schema_creator)
        # A body with examples comes back wrapped (`allOf: [<the component>]`, examples beside it): the rules go on
        # the component itself.
        wrapped = isinstance(schema, Schema) and schema.all_of is not None and len(schema.all_of) == 1
        component = schema.all_of[0] if wrapped else schema  # type: ignore[union-attr,index]
        body = (
            schema_creator.schema_registry.from_reference(component).schema
            if isinstance(component, Reference)
            else component
        )
        if cls.config.forbid_unknown_fields:
            body.additional_properties = False
        if cls.config.partial:
            body.min_properties = 1
        for field in super().generate_field_definitions(cls.model_type):
            if isinstance(described := (body.properties or {}).get(field.name), Schema):
                for rule, value in _msgspec_rules(field.kwarg_definition).items():
                    if getattr(described, RULES[rule]) is None:
                        setattr(described, RULES[rule], value)
        return schema


def _msgspec_rules(definition: object) -> dict[str, Any]:
    if not isinstance(definition, KwargDefinition):
        return {}
    return {rule: value for rule in RULES if (value := getattr(definition, rule)) is not None}


RULES = {
    # The rules moved from Litestar's `KwargDefinition` onto `msgspec.Meta`, and their names in OpenAPI.
    "pattern": "pattern",
    "ge": "minimum",
    "gt": "exclusive_minimum",
    "le": "maximum",
    "lt": "exclusive_maximum",
    "min_length": "min_length",
    "max_length": "max_length",
}


class WidgetCreate(WidgetWriteDTO):
    config = SQLAlchemyDTOConfig(exclude=set(Widget.SERVER_FIELDS), forbid_unknown_fields=True)


class WidgetPatch(WidgetWriteDTO):
    """Any subset of the client-set fields but `sku`, which is in the path."""

    config = SQLAlchemyDTOConfig(exclude=set(Widget.SERVER_FIELDS | {"sku"}), partial=True, forbid_unknown_fields=True)


class CommandLinks(msgspec.Struct, frozen=True):
    self: str
    widget: str | None


class CommandResource(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    type: str
    status: str
    sku: str | None
    accepted_at: datetime
    finished_at: datetime | None
    progress: dict[str, int] | None
    error: dict[str, Any] | None
    result: dict[str, Any] | None = None
    """An import's outcome once finished: `total`, `created`, `updated`, `unchanged`, `failed`, and `errors` (each
    row not applied: `{"row", "sku", "reason"}`). Absent on other commands."""
    links: CommandLinks

    @classmethod
    def of(cls, record: CommandRecord) -> CommandResource:
        return cls(
            id=record.id,
            type=record.type,
            status=record.status,
            sku=record.sku,
            accepted_at=record.accepted_at,
            finished_at=record.finished_at,
            progress=record.progress,
            error=record.error,
            result=record.result,
            links=CommandLinks(self=command_url(record.id), widget=f"/widgets/{record.sku}" if record.sku else None),
        )


def command_url(command_id: UUID) -> str:
    return f"/commands/{command_id}"
