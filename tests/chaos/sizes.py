"""How big a chaos run is: the CI size (``make test``) and the full size (``make chaos``)."""

from __future__ import annotations

from dataclasses import dataclass

#: One-off faults, each at a fraction of the submit window (never before the previous ends).
REDIS_RESTART = "redis_restart"  # SIGTERM, restart with its AOF: nothing lost
REDIS_FLUSHALL = "redis_flushall"  # every key gone, connections kept
REDIS_DATA_LOSS = "redis_data_loss"  # restart without persistence: connections and data gone
POSTGRES_RESTART = "postgres_restart"  # fast shutdown, start again
DLQ_DOWN = "dlq_down"  # dlq-svc SIGKILLed, back after dlq_down_seconds
INGEST_KILL = "ingest_kill"  # ingest-svc SIGKILLed mid-load, back after a moment
DUPLICATES = "duplicate_messages"  # copies of accepted jobs' messages, as a broker may deliver

#: No periodic kill of this kind in a run.
NEVER = float("inf")


@dataclass(frozen=True)
class ChaosSize:
    """One run's load and faults."""

    name: str
    jobs: int
    #: The load lasts this long (rate = jobs / submit_seconds).
    submit_seconds: float
    batch: int
    #: SubmitJobs calls in flight at once.
    senders: int
    workers: int
    concurrency: int
    #: A random pool process of a random node is SIGKILLed this often...
    pool_kill_every: float
    #: ...and a whole node (main process and pool) this often; the harness starts a new one.
    node_kill_every: float
    dlq_down_seconds: float
    #: demo.charge holds its transaction open up to this long (random), so kills land mid-charge.
    hold_ms: int
    #: Jobs sent in one SubmitJobs call that ingest is SIGKILLed in the middle of.
    kill_batch: int
    faults: tuple[tuple[float, str], ...]
    #: After the load, how long every job may take to end.
    drain_timeout: float
    #: The DUPLICATES fault re-publishes this share of the jobs accepted so far.
    duplicate_share: float = 0.2


CI = ChaosSize(
    name="ci",
    jobs=400,
    submit_seconds=50,
    batch=10,
    senders=2,
    workers=2,
    concurrency=2,
    pool_kill_every=4,
    node_kill_every=20,
    dlq_down_seconds=12,
    hold_ms=400,
    kill_batch=100,
    faults=(
        (0.10, REDIS_RESTART),
        (0.20, DLQ_DOWN),
        (0.45, DUPLICATES),
        (0.58, POSTGRES_RESTART),
        (0.72, REDIS_DATA_LOSS),
        (0.86, INGEST_KILL),
    ),
    drain_timeout=120,
)

FULL = ChaosSize(
    name="full",
    jobs=20_000,
    submit_seconds=240,
    batch=50,
    senders=4,
    workers=3,
    concurrency=2,
    pool_kill_every=3,
    node_kill_every=25,
    dlq_down_seconds=60,
    hold_ms=50,
    kill_batch=500,
    faults=(
        (0.10, REDIS_RESTART),
        (0.22, POSTGRES_RESTART),
        (0.32, DLQ_DOWN),
        (0.45, DUPLICATES),
        (0.55, REDIS_FLUSHALL),
        (0.68, INGEST_KILL),
        (0.80, REDIS_DATA_LOSS),
    ),
    drain_timeout=900,
)

#: The audit's own check (test_chaos.py): a small load whose accepted jobs are all delivered a
#: second time, on one node, with no other fault. Run against a worker that skips the claim,
#: the audit must report the double applications.
AUDIT = ChaosSize(
    name="audit",
    jobs=100,
    submit_seconds=6,
    batch=10,
    senders=2,
    workers=1,
    concurrency=2,
    pool_kill_every=NEVER,
    node_kill_every=NEVER,
    dlq_down_seconds=0,
    hold_ms=0,
    kill_batch=0,
    faults=((0.9, DUPLICATES),),
    drain_timeout=90,
    duplicate_share=1.0,
)

SIZES = {size.name: size for size in (CI, FULL)}
