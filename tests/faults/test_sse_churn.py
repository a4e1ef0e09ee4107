"""SSE clients cut mid-stream resume without a gap or a duplicate.

20 clients follow `/events` during a 5,000-event run; each cuts its connection 25 times at random points and
resumes with the id of the last event it received (`Last-Event-ID`). Each must end with exactly the stream's
full sequence, in order.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import httpx
import msgspec
import pytest
from httpx_sse import aconnect_sse

from tests.faults.harness import FaultRun, assert_exactly_once, widget_writes

CLIENTS = 20
RESUMES = 25
SKUS = 600
PATCHES = 3
EVENTS = SKUS * (1 + PATCHES)
SEED = 20261127


class Follower:
    """One SSE client: follows the stream, cuts its connection after the events drawn for it, and resumes."""

    def __init__(self, url: str, cuts: list[int]) -> None:
        self.url = url
        self.cuts = cuts
        self.received: list[tuple[str, str]] = []
        self.connections = 0
        self.connected = asyncio.Event()

    async def follow(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as client:
            while len(self.received) < EVENTS:
                headers = {"Last-Event-ID": self.received[-1][0]} if self.received else {}
                async with aconnect_sse(client, "GET", f"{self.url}/events", headers=headers) as source:
                    source.response.raise_for_status()
                    self.connections += 1
                    self.connected.set()
                    async for event in source.aiter_sse():
                        if not event.data:
                            continue
                        self.received.append((event.id, msgspec.json.decode(event.data)["event_id"]))
                        if self.cuts and len(self.received) >= self.cuts[0]:
                            self.cuts.pop(0)
                            break  # leaving the block closes the connection mid-stream
                        if len(self.received) >= EVENTS:
                            return


@pytest.mark.parametrize("partitions", [1, 2], ids=["one-queue", "two-partitions"])
async def test_clients_cut_and_resumed_get_every_event_once_in_order(
    fault_run: Callable[..., FaultRun], partitions: int
) -> None:
    """On one queue with two worker processes, and on two partitions' queues with a worker process each: the events
    of both partitions interleave on the one stream, and a resume id still means the same place in it."""
    rng = random.Random(SEED)  # noqa: S311 - reproducible cut points, not secrets
    name, workers = ("sse-churn", 2) if partitions == 1 else (f"sse-churn-{partitions}-partitions", 1)
    async with fault_run(
        name,
        workers=workers,
        concurrency=20,
        clients=40,
        WIDGETRY_SSE_CONNECTIONS_PER_CLIENT=str(CLIENTS * 2),
        WIDGETRY_QUEUE_PARTITIONS=str(partitions),
    ) as run:
        url = run.stack.urls[0]
        followers = [Follower(url, sorted(rng.sample(range(1, EVENTS), RESUMES))) for _ in range(CLIENTS)]
        following = [asyncio.create_task(follower.follow()) for follower in followers]
        await asyncio.wait_for(asyncio.gather(*(f.connected.wait() for f in followers)), 30)
        await run.submitter.sequences(widget_writes(f"SSE-{n}", PATCHES) for n in range(SKUS))
        await run.settle()
        await asyncio.wait_for(asyncio.gather(*following), 120)

    expected = [event["event_id"] for event in (await run.ledger(reported=False)).events]
    received = [[event_id for _id, event_id in follower.received] for follower in followers]
    duplicated = sum(len(events) - len(set(events)) for events in received)
    missing = sum(len(set(expected) - set(events)) for events in received)
    ledger = await run.ledger(
        clients=CLIENTS,
        connections=sum(f.connections for f in followers),
        clients_exact=sum(events == expected for events in received),
        client_duplicates=duplicated,
        client_missing=missing,
        seed=SEED,
    )
    assert all(f.connections == RESUMES + 1 for f in followers)
    assert (duplicated, missing) == (0, 0)
    assert received == [expected] * CLIENTS
    assert_exactly_once(ledger, EVENTS)
