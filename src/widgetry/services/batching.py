"""Group commit: work submitted while an earlier batch is being done waits for, and joins, the next batch.

Under load one transaction (and one round of network calls) carries many items, so the cost of each falls as the
load rises; an item submitted alone is done at once, alone. Intake records write requests this way, and workers
apply commands this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[list[T]], Awaitable[Sequence[R | Exception]]]
"""Does a batch; returns each item's outcome, in order: its result, or the error that stopped it. An error raised
stops the whole batch: every item gets it."""


class GroupCommit(Generic[T, R]):
    def __init__(self, flush: Flush[T, R], *, max_items: int, name: str) -> None:
        self._flush = flush
        self._max_items = max_items
        self._name = name
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Waits for the batch the item joins to be done, and returns its outcome (or raises its error)."""
        outcome: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, outcome))
        if not self._running:
            self._running = True
            # A task of its own: a submitter that goes away (a client hanging up, a job cancelled) must not cancel
            # the batch that the others wait on.
            task = asyncio.create_task(self._run(), name=self._name)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await outcome

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._max_items], self._waiting[self._max_items :]
                try:
                    outcomes = await self._flush([item for item, _ in batch])
                except Exception as error:  # noqa: BLE001 - handed to every submitter of the batch
                    outcomes = [error] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its submitter went away
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._running = False
