"""Latency histograms with fixed buckets, so the histograms of many processes merge by adding counts.

Buckets are 0.1 ms wide up to 10 s, then each is 1% wider than the one before: every latency is kept to within
0.1 ms or 1%, a process ships a sparse map of counts instead of its samples, and merging loses nothing.
"""

from __future__ import annotations

import math

import msgspec

BUCKETS_PER_MS = 10
"""0.1 ms resolution in the linear range."""
LINEAR_LIMIT_MS = 10_000.0
LINEAR_BUCKETS = int(LINEAR_LIMIT_MS * BUCKETS_PER_MS)
LOG_GROWTH = 1.01
_LOG_GROWTH = math.log(LOG_GROWTH)


def bucket_of(ms: float) -> int:
    if ms < LINEAR_LIMIT_MS:
        return max(0, int(ms * BUCKETS_PER_MS))
    return LINEAR_BUCKETS + int(math.log(ms / LINEAR_LIMIT_MS) / _LOG_GROWTH)


def upper_edge(bucket: int) -> float:
    """The largest latency a bucket holds (its exclusive upper bound)."""
    if bucket < LINEAR_BUCKETS:
        return (bucket + 1) / BUCKETS_PER_MS
    return LINEAR_LIMIT_MS * LOG_GROWTH ** (bucket - LINEAR_BUCKETS + 1)


class Histogram(msgspec.Struct):
    counts: dict[int, int] = msgspec.field(default_factory=dict)
    """Samples per bucket; only buckets that have any."""
    count: int = 0
    max_ms: float = 0.0
    """The exact largest sample: percentiles never exceed it."""

    def record(self, ms: float) -> None:
        bucket = bucket_of(ms)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.count += 1
        if ms > self.max_ms:
            self.max_ms = ms

    def merge(self, other: Histogram) -> None:
        for bucket, count in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + count
        self.count += other.count
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, percent: float) -> float | None:
        """The latency that `percent`% of samples are at or under: the upper edge of its bucket, so it is never
        understated and overstated by at most the resolution (and never above the largest sample); `None` without
        samples."""
        if not self.count:
            return None
        rank = max(1, math.ceil(percent / 100 * self.count))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(upper_edge(bucket), self.max_ms)
        return self.max_ms

    def summary(self) -> dict[str, float | int | None]:
        """p50/p95/p99/max in ms (rounded to 0.01) and the sample count."""
        figures = {f"p{p}": self.percentile(p) for p in (50, 95, 99)}
        figures["max"] = self.max_ms if self.count else None
        return {name: None if value is None else round(value, 2) for name, value in figures.items()} | {
            "count": self.count
        }
