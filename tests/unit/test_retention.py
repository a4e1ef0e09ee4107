"""Commands are kept for the retention period after they finish, then forgotten by a cron job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from litestar import Litestar
from sqlalchemy import update

from tests.support import AUTH, WAIT
from tests.unit.state import CommandRecord, count, outbox
from widgetry.domain.models import EventRecord
from widgetry.workers.jobs import purge_expired


async def test_finished_commands_older_than_retention_are_purged_with_their_published_events(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    old = await client.post("/widgets", json={"sku": "OLD", "name": "x", "price_cents": 1}, headers=AUTH | WAIT)
    new = await client.post("/widgets", json={"sku": "NEW", "name": "x", "price_cents": 1}, headers=AUTH | WAIT)
    eight_days_ago = datetime.now(UTC) - timedelta(days=8)
    async with app.state.connections.alchemy.get_session() as session:
        await session.execute(
            update(CommandRecord).where(CommandRecord.sku == "OLD").values(finished_at=eight_days_ago)
        )
        await session.execute(update(EventRecord).where(EventRecord.sku == "OLD").values(occurred_at=eight_days_ago))
        await session.commit()

    purged = await purge_expired({"connections": app.state.connections})

    assert purged == {"commands": 1, "events": 1}
    assert (await client.get(old.headers["location"])).status_code == 404
    assert (await client.get(new.headers["location"])).json()["status"] == "succeeded"
    assert await count(app, CommandRecord) == 1
    assert [event.sku for event in await outbox(app)] == ["NEW"]
    assert (await client.get("/widgets/OLD")).status_code == 200
