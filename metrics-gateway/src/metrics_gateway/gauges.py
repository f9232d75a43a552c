"""Fleet gauges computed at scrape time, at a bounded cost.

Queue depth is one ``LLEN`` per catalogue queue on the broker: O(queues) per scrape, whatever
the backlog.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis


class QueueDepthCollector(Collector):
    """``relayq_queue_depth{queue}``: messages waiting in the broker."""

    def __init__(self, redis: Redis, queues: list[str]) -> None:
        self._redis = redis
        self._queues = queues

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "relayq_queue_depth", "Messages waiting in the broker, by queue", labels=["queue"]
        )
        pipe = self._redis.pipeline(transaction=False)
        for queue in self._queues:
            pipe.llen(queue)
        for queue, length in zip(self._queues, pipe.execute(), strict=True):
            depth.add_metric([queue], float(length))
        yield depth
