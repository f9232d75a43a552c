"""kombu's Redis transport, without ack emulation, with a fix that keeps a worker alive when
Redis restarts.

**No ack emulation** (``broker_transport_options["ack_emulation"] = False``, set by the worker
app). kombu emulates AMQP acknowledgements on Redis by copying every delivered message into an
``unacked`` hash and sorted set and removing it at the ack: two ``MULTI … EXEC`` transactions per
job, about 45 % of a Celery consumer's CPU (docs/benchmarks.md), so that a node that dies holding
messages gets them back once the visibility timeout (an hour) has passed. relayq does not need
it: the ledger knows which jobs wait for a message, and the reconciler re-publishes the jobs of
a node that died holding them (queue turnover, unheld running jobs, lost retries:
``relayq_core/reconcile.py``), within ``deadline_seconds`` instead of an hour. A pool process
that dies still gets its message handed back at once, from the consumer's memory
(``task_reject_on_worker_lost``), and a warm shutdown hands back what it had not started.

When the broker connection drops, Celery's consumer releases the connection (which detaches
the transport from it) and then closes it again. The second close reaches the channel's
"restore unacknowledged messages" step, which needs the detached connection's parameters:
``AttributeError: 'NoneType' object has no attribute 'hostname'`` escapes, Celery calls it an
unrecoverable error, and the node exits (kombu 5.7, Celery 5.7). It happens whenever the node
holds unacknowledged messages — a job running, a retry waiting — that is, almost always under
load (``tests/integration/test_worker_lifecycle.py`` reproduces it).

The same detached channel crashes the node again when a job that was running during the loss
finishes and its message is acknowledged (``AttributeError: 'NoneType' object has no attribute
'client'``). Celery's answer is ``worker_cancel_long_running_tasks_on_connection_loss``: kill
such jobs. relayq keeps them running instead (their outcome lands in the ledger) and makes the
detached channel's restore, ack and reject give up quietly: the broker cannot be told anything
on that connection anyway. Without ack emulation (:class:`LedgerQoS`, what the worker runs) the
messages left Redis when they were delivered, so nothing redelivers them: the reconciler
(overdue retries, unheld running jobs) re-publishes the jobs that still need it. (:class:`QoS`,
for a consumer with the emulation on, leaves them in Redis's unacked hash, which kombu
redelivers after the visibility timeout.) A finished job's message re-published is a
duplicate, which the worker's claim turns into a no-op.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from relayq_core.logging import get_logger

log = get_logger(__name__)


def _detached(channel: Any) -> bool:
    """Whether Celery has released the channel's connection (after a broker connection loss)."""
    connection = channel.connection
    return connection is None or connection.client is None


class QoS(kombu_redis.QoS):
    """Redis QoS that leaves a detached channel's messages in Redis instead of crashing."""

    def restore_unacked(self, client: Any = None) -> Any:
        if client is None and _detached(self.channel):
            log.warning(
                "broker_restore_skipped",
                messages=len(self._delivered),
                detail="the broker connection is gone; Redis's unacked hash keeps them",
            )
            self._delivered.clear()
            return None
        return super().restore_unacked(client)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: Any) -> None:
        if _detached(self.channel):
            # A job that started before the connection dropped finished after it: its
            # outcome is in the ledger, its message stays in the unacked hash and, when
            # redelivered, finds the job finished (a duplicate, a no-op).
            log.info("broker_ack_skipped", detail="the message's connection is gone")
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if _detached(self.channel):
            log.info("broker_reject_skipped", detail="the message's connection is gone")
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]


class LedgerQoS(virtual.QoS):
    """The in-memory QoS the worker runs with: kombu's ack emulation is off (see below).

    A delivered message is acknowledged, rejected or handed back (warm shutdown, a pool process
    lost with ``task_reject_on_worker_lost``) from memory; on a detached channel the hand-back
    is skipped instead of crashing the node, and the reconciler brings those jobs back.
    """

    def restore_unacked(self) -> Any:
        if _detached(self.channel):
            log.warning(
                "broker_restore_skipped",
                messages=len(self._delivered),
                detail="the broker connection is gone; the reconciler re-publishes their jobs",
            )
            self._delivered.clear()
            return []
        return super().restore_unacked()  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if requeue and _detached(self.channel):
            log.info("broker_requeue_skipped", detail="the message's connection is gone")
            requeue = False
        super().reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]


class Channel(kombu_redis.Channel):
    """The Redis channel with :class:`QoS` (ack emulation on) or :class:`LedgerQoS` (off)."""

    # kombu types it as its Redis QoS; without ack emulation it is the in-memory one.
    QoS: type[virtual.QoS] = QoS  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        if not self.ack_emulation:
            self.QoS = LedgerQoS


class Transport(kombu_redis.Transport):
    """The Redis transport with :class:`Channel` (``broker_transport`` of the worker app)."""

    Channel = Channel


#: What the worker app sets as ``broker_transport``.
TRANSPORT = f"{__name__}:Transport"
