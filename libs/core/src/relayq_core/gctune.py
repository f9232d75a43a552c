"""Keeping Python's garbage collector out of the latency tail.

A service's start-up leaves tens of thousands of long-lived objects (modules, grpc, protobuf,
asyncpg, Celery), and every full collection walks all of them: about 30–45 ms in ingest and in a
worker process on this kind of machine, every few seconds under load. A submit or a job that
lands in such a pause waits for it; at 12,000 jobs/min that was a visible share of the p99
(docs/benchmarks.md). :func:`freeze_startup_heap` moves everything alive at that point into the
permanent generation, which collections skip; what the service allocates afterwards is still
collected as usual. Call it once start-up is over (and in each forked child, after its own
set-up).
"""

from __future__ import annotations

import gc

#: Allocations between young-generation collections (Python's default is 700). Request-sized
#: garbage is freed by reference counting; a larger young generation means fewer collections
#: for the same work.
GEN0_THRESHOLD = 10_000


def freeze_startup_heap() -> int:
    """Collects once, freezes the survivors, raises the young-generation threshold; returns
    how many objects are now frozen."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    return gc.get_freeze_count()
