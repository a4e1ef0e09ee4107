"""What a run writes: its skus, each one's create and updates, and the send time carried in every write.

Every write's `name` is `bench <send time in ns>`, and every `widget.*` event carries the widget's name: each
subscriber works out the POST -> event-seen latency of each delivery by itself, with no timestamps shipped around.
"""

from __future__ import annotations

import msgspec

NAME_PREFIX = "bench "
WIDGET_EVENTS = frozenset({"widget.created", "widget.updated"})
FAILED_EVENT = "command.failed"


class Workload(msgspec.Struct, frozen=True):
    run_id: str
    commands: int
    skus: int

    @property
    def sku_prefix(self) -> str:
        """Every sku of the run starts with this, and no other sku does: runs never collide."""
        return f"bench-{self.run_id}-"

    def sku(self, index: int) -> str:
        return f"{self.sku_prefix}{index}"

    def writes(self, index: int) -> int:
        """How many writes a sku gets: the commands spread evenly, a create then updates."""
        share, extra = divmod(self.commands, self.skus)
        return share + (index < extra)

    def part(self, part: int, parts: int) -> list[int]:
        """The skus one of `parts` writer processes owns (a sku's writes stay in one process, in order)."""
        return list(range(part, self.skus, parts))


def stamped_values(step: int, sent_ns: int) -> dict[str, object]:
    """A write's values: its send time in the name, and a price that tells the steps apart."""
    return {"name": f"{NAME_PREFIX}{sent_ns}", "price_cents": step}


def sent_ns_of(name: str | None) -> int | None:
    """The send time a write's name carries, or `None` for a name the bench did not write."""
    if not name or not name.startswith(NAME_PREFIX):
        return None
    try:
        return int(name[len(NAME_PREFIX) :])
    except ValueError:
        return None
