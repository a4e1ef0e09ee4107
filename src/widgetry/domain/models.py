"""The database model: the one definition of a widget's fields, the durable command record and the outbox."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

import msgspec
from advanced_alchemy.base import BigIntAuditBase, BigIntBase, DefaultBase, UUIDv7Base
from advanced_alchemy.types import JsonB
from advanced_alchemy.types.datetime import DateTimeUTC
from litestar.params import KwargDefinition
from sqlalchemy import BigInteger, Dialect, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(?!\n)$"  # the lookahead: Python's `$` also matches before a final "\n"
NAME_MAX_LENGTH = 200
PRICE_MAX_CENTS = 10**12
NOTES_MAX_LENGTH = 10_000

# The rules live on the model's own annotations, so the DTOs and the OpenAPI schema derive them from here.
# Length rules are written as patterns because Litestar drops `max_length` from partial (PATCH) DTOs.
Sku = Annotated[str, KwargDefinition(pattern=SKU_PATTERN)]
# 1..200 characters once surrounding white space is trimmed (the service stores the trimmed name). No NUL
# characters anywhere: PostgreSQL cannot store them in text or JSON.
Name = Annotated[str, KwargDefinition(pattern=r"^\s*[^\s\x00](?:[^\x00\n]{0,198}[^\s\x00])?\s*$")]
PriceCents = Annotated[int, KwargDefinition(ge=0, le=PRICE_MAX_CENTS)]
Notes = Annotated[str, KwargDefinition(pattern=rf"^[^\x00]{{0,{NOTES_MAX_LENGTH}}}(?![\s\S])")]
PATTERNS_IN_WORDS = {
    "sku": "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
    "name": f"1 to {NAME_MAX_LENGTH} characters once trimmed, on one line",
    "internal_notes": f"at most {NOTES_MAX_LENGTH:,} characters",
}
"""What the patterns above ask, in words, for the people whose input breaks them (none allows a NUL character)."""


class Widget(BigIntAuditBase):
    """A catalogue entry. `version` starts at 1 and the service bumps it on every change; SQLAlchemy's UPDATE checks
    it still has the value it was read with (an optimistic lock), so a batch can change one widget several times
    and write it once."""

    __tablename__ = "widgets"

    SURROGATE_FIELDS = frozenset({"id"})
    """The database's own key: no route takes it (a widget is named by its sku), so no view shows it."""
    PRIVATE_FIELDS = SURROGATE_FIELDS | {"internal_notes"}
    """Never leave the service but through the admin view: excluded from the public read DTO and from event payloads
    alike."""
    SERVER_FIELDS = frozenset({"id", "version", "created_at", "updated_at"})
    """Set by the service, never by a client."""

    sku: Mapped[Sku] = mapped_column(String(64), unique=True)
    name: Mapped[Name] = mapped_column(String(NAME_MAX_LENGTH))
    price_cents: Mapped[PriceCents] = mapped_column(BigInteger)
    internal_notes: Mapped[Notes] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"version_id_col": version, "version_id_generator": False}

    def public(self) -> dict[str, Any]:
        """The public shape as JSON-ready builtins (times as RFC 3339 strings), as events carry it."""
        return msgspec.to_builtins(self.to_dict(exclude=set(self.PRIVATE_FIELDS)))


class WidgetHead(DefaultBase):
    """Per-sku command counters; outlives deletes so a re-created sku keeps counting.

    `accepted_seq` numbers commands as they are accepted; `applied_seq` is the fence a re-run job checks.
    """

    __tablename__ = "widget_heads"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    accepted_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    applied_seq: Mapped[int] = mapped_column(BigInteger, default=0)


class CommandRecord(UUIDv7Base):
    """A command as accepted: kept after it finishes (retention in settings), the source of truth, not Redis."""

    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_sku_seq", "sku", "seq", unique=True),)

    type: Mapped[str] = mapped_column(String(32))
    sku: Mapped[str | None] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonB)
    status: Mapped[str] = mapped_column(String(16), index=True)
    accepted_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JsonB, default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(JsonB, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True, default=None)
    fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    """A digest of the command (type, sku, payload): a reused idempotency key must come with the same one."""
    parent_id: Mapped[UUID | None] = mapped_column(default=None, index=True)
    """Set on an import's rows: each row is a command of its own (its sku's next seq, its own fence), applied in
    batches by the import's job; the import is the command a client sees."""
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonB, default=None)
    """An import's outcome: widgets applied, and each row that was not with its reason."""
    recoveries: Mapped[int] = mapped_column(default=0, server_default="0")
    """How often the recovery pass has queued it again: past a cap, a command that never finishes (one that kills
    its worker each time, say) ends `failed` instead of going round for ever."""


class EventRecord(BigIntBase):
    """The outbox: one row per event, written in the transaction that made the change.

    `id` orders events as committed; `stream_id` is set once the event is on the Redis stream.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index(
            "ix_events_unpublished",
            "id",
            postgresql_where=text("stream_id IS NULL"),
            sqlite_where=text("stream_id IS NULL"),
        ),
        # What the publish after each job reads: its skus' entries only. Published rows leave the partial indexes
        # only when vacuum gets to them, and a scan of all unpublished entries would read every one left behind.
        Index(
            "ix_events_unpublished_sku",
            "sku",
            "id",
            postgresql_where=text("stream_id IS NULL"),
            sqlite_where=text("stream_id IS NULL"),
        ),
    )

    event_id: Mapped[UUID] = mapped_column(unique=True)
    type: Mapped[str] = mapped_column(String(32))
    sku: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int | None] = mapped_column(BigInteger)
    command_id: Mapped[UUID] = mapped_column(index=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    data: Mapped[dict[str, Any]] = mapped_column(JsonB)
    stream_id: Mapped[str | None] = mapped_column(String(32), default=None)


class Scope(StrEnum):
    """What a key may do beyond reading."""

    WRITE = "write"
    """Send commands."""
    ADMIN = "admin"
    """Read widgets' internal fields, open the queue's UI (`/saq`), and `/metrics` when reads are protected."""


class ScopeSet(TypeDecorator[frozenset[Scope]]):
    """A key's scopes in one column, space-separated as OAuth writes them (RFC 6749, 3.3): stored and compared the
    same way on SQLite and PostgreSQL, and readable in either one's shell."""

    impl = String(100)
    cache_ok = True

    def process_bind_param(self, value: frozenset[Scope] | None, dialect: Dialect) -> str | None:
        return None if value is None else " ".join(scope for scope in Scope if scope in value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> frozenset[Scope] | None:
        return None if value is None else frozenset(Scope(scope) for scope in value.split())


class ApiKey(UUIDv7Base):
    """A key made by `widgetry keys create`: only its digest is stored, the key itself is shown once. Revoked keys
    stay, so their names and fingerprints still mean something in the list."""

    __tablename__ = "api_keys"

    name: Mapped[str] = mapped_column(String(100), unique=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    """The hex SHA-256 of the key: its fingerprint, as the rate limits and idempotency keys know it."""
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    """When a web process last checked it against this table: to within the key cache's lifetime."""
    revoked_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    scopes: Mapped[frozenset[Scope]] = mapped_column(ScopeSet, server_default=Scope.WRITE.value)
    """Keys made before scopes existed could write, and keep that."""
