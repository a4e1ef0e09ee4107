"""The worker processes `widgetry workers run` forks, watched and stopped with the first one.

litestar-saq runs the first queue's worker in the command's own process and forks one process for each other queue
(a partition's) and for each `--processes` beyond the first. It means to stop them from a SIGTERM handler, which its
first worker's event loop replaces with its own (`loop.add_signal_handler`): a SIGTERM stopped the first worker
alone, and the command then waited forever to join the others. Nor does it notice one that dies, whose partition
then had nobody to take its jobs while the command looked healthy. `WorkerProcesses` does both; and a forked
process whose parent is killed outright (SIGKILL, no handler runs) stops by itself (`stop_when_orphaned`), where it
went on taking jobs beside the processes a restart brings.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0
"""How long the forked processes have, together, to stop after SIGTERM before those still running are killed (their
jobs are retried: the sweep finds them)."""
WATCH_INTERVAL_S = 1.0
ORPHAN_CHECK_S = 1.0
STARTUP_GRACE_S = 10.0
"""By then litestar-saq has forked every process (it forks them as it starts, before its first worker runs)."""


class WorkerProcesses:
    """Around litestar-saq's `workers run`, which forks `forked` worker processes: one that ends while the command
    runs stops the command (SIGTERM to itself, so its own worker stops as on any SIGTERM), which then exits non-zero
    and lets a supervisor start it again; as the command ends, every forked process is stopped."""

    def __init__(self, forked: int) -> None:
        self.forked = forked
        self.died: list[tuple[int | None, int | None]] = []
        """(pid, exit code) of each forked worker process that ended on its own (pid `None`: one that ended before
        it was first seen)."""
        self._stopping = threading.Event()
        self._watch = threading.Thread(target=self._watch_forked, name="widgetry-worker-processes", daemon=True)

    def __enter__(self) -> WorkerProcesses:
        if self.forked:
            self._watch.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        if self._watch.is_alive():
            self._watch.join()
        stop_forked()

    def _watch_forked(self) -> None:
        watched: dict[int | None, multiprocessing.Process] = {}
        started = time.monotonic()
        while not self._stopping.wait(WATCH_INTERVAL_S):
            try:
                alive = multiprocessing.active_children()  # also reaps those that ended
            except RuntimeError:  # the set of children changed size meanwhile: a fork under way; look again
                continue
            watched.update({child.pid: child for child in alive})
            died = [(child.pid, child.exitcode) for child in watched.values() if child.exitcode is not None]
            if len(alive) < self.forked and time.monotonic() - started > STARTUP_GRACE_S:
                # Fewer than forked, long after the forks: one ended before this loop first saw it.
                died += [(None, None)] * (self.forked - len(alive) - len(died))
            if died and not self._stopping.is_set():
                self.died = died
                logger.error("worker process(es) %s ended on their own: stopping the others", died)
                os.kill(os.getpid(), signal.SIGTERM)
                return


def stop_forked() -> None:
    """SIGTERM to every forked worker process, which stops its worker as the first one stopped; those still running
    `STOP_TIMEOUT_S` later are killed. An interrupt while waiting kills the rest at once."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    try:
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()


async def stop_when_orphaned(stop: Callable[[], None]) -> None:
    """In a process `workers run` forked: waits until the process that forked it is gone, then calls `stop` (the
    worker's own stop signal, as on SIGTERM). Nothing to do in any other process."""
    if (parent := multiprocessing.parent_process()) is None:
        return
    while parent.is_alive():
        await asyncio.sleep(ORPHAN_CHECK_S)
    logger.error("the worker process that forked this one (%s) is gone: stopping", parent.pid)
    stop()
