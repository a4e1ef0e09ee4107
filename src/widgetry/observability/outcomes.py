"""What happens to each command, counted (metrics) and told (log lines, each carrying its `command_id`): its outcome,
`command.applied` or `command.failed`, at INFO where it was applied, one line per command; the steps at DEBUG,
`command.accepted` in the web process and `event.published` for each of its events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import event
from sqlalchemy.orm import Session, attributes, sessionmaker

from widgetry.domain.models import CommandRecord
from widgetry.observability import tracing
from widgetry.observability.counts import OUTCOMES
from widgetry.services.commands import FINISHED_KEY, note_finished

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from widgetry.connections import Connections
    from widgetry.domain.models import EventRecord
    from widgetry.observability.counts import Counts
    from widgetry.services.publish import Publish

log = structlog.get_logger()
LOGGER = "widgetry.commands"
"""The `logger` these lines name, as the standard library's lines name theirs."""


def accepted(connections: Connections, record: CommandRecord) -> None:
    connections.counts.accepted(record.type)
    log.debug("command.accepted", logger=LOGGER, command_id=str(record.id), type=record.type, sku=record.sku)


def observed(connections: Connections) -> Publish:
    """The publisher, counting and telling each event it put on the stream."""
    publish, counts, settings = connections.publisher.publish, connections.counts, connections.settings

    async def publish_and_tell(records: Sequence[EventRecord]) -> list[str]:
        with tracing.span(settings, "widgetry publish", events=len(records)):
            stream_ids = await publish(records)
        counts.published(len(stream_ids))
        for record, stream_id in zip(records, stream_ids, strict=True):
            log.debug(
                "event.published",
                logger=LOGGER,
                command_id=str(record.command_id),
                event_type=record.type,
                sku=record.sku,
                stream_id=stream_id,
            )
        return stream_ids

    return publish_and_tell


def observe(sessions: async_sessionmaker[AsyncSession], counts: Counts) -> None:
    """Counts and tells each command's outcome once a session made by `sessions` commits it.

    A command finishes wherever a session commits its status (a batch applied, an import ended, a job given up on):
    watching the sessions sees each one exactly once, whichever service did it, and only once it is committed. The
    listeners go on these sessions' own class, never on SQLAlchemy's `Session`, so an app counts only what its own
    sessions commit, into its own counts."""
    factory = _sync_sessions(sessions)
    event.listen(factory, "after_flush", _note_finished)
    event.listen(factory, "after_soft_rollback", _forget_finished)

    @event.listens_for(factory, "after_commit")
    def count_finished(session: Session) -> None:
        if session.in_nested_transaction() or not (finished := session.info.pop(FINISHED_KEY, None)):
            return
        for command_id, (command_type, status, seconds) in finished.items():
            counts.finished(command_type, status, seconds)
            log.info(
                f"command.{OUTCOMES[status]}",
                logger=LOGGER,
                command_id=str(command_id),
                type=command_type,
                seconds=seconds,
            )


def _sync_sessions(sessions: async_sessionmaker[AsyncSession]) -> sessionmaker[Session]:
    """The factory of the `Session`s that `sessions`' async sessions run on, where SQLAlchemy fires their events:
    Advanced Alchemy configures one of its own (with its listeners); failing that, one is made for them alone."""
    factory = sessions.kw.get("sync_session_class")
    if not isinstance(factory, sessionmaker):
        factory = sessionmaker(class_=factory or Session)
        sessions.configure(sync_session_class=factory)
    return factory


def _note_finished(session: Session, _context: Any) -> None:
    for record in session.dirty:
        if (
            isinstance(record, CommandRecord)
            and record.status in OUTCOMES
            and attributes.get_history(record, "status").added
        ):
            note_finished(session, record)


def _forget_finished(session: Session, previous: Any) -> None:
    if not previous.nested:
        session.info.pop(FINISHED_KEY, None)
