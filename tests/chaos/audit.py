"""The chaos run's final audit: the ledger, the effects, the DLQ and the metrics, compared.

The effects it counts on can show a double application: ``demo.transfer`` keeps a journal with
no unique key and balances that must equal what the succeeded transfers moved, and the
webhook receiver counts every request per key and the time each was in flight
(:func:`audit_webhooks`). ``demo.charge`` (whose table has the key as primary key) is checked
too, but proves nothing by itself. ``tests/chaos/test_chaos.py`` runs this audit once against a
deliberately broken worker and expects it to report the double applications.

What "agree" means for the metrics, precisely. Each worker delivery increments
``relayq_job_runs_total{outcome}`` once, right *after* the PostgreSQL commit that records the
same outcome in the ledger. So, per outcome, the fleet's counter M and the ledger's count L
obey ``L - slack <= M <= L``, where the slack is the number of deliveries that may have been
cut between their commit and their increment: one per SIGKILLed pool process, ``concurrency``
per SIGKILLed node (a whole node's pool), and every pool slot of the fleet per Postgres
restart (a commit whose reply was lost with the connection is retried as a failure, never
counted). M sums every node incarnation: live nodes as they serve ``/metrics`` (checked against
their files), killed ones from the multiprocess files they left behind, which is exactly what
they would have served.

The ledger's side of each outcome:

- ``succeeded``: attempts recorded ``succeeded`` (one per succeeded job);
- ``retried``: attempts recorded ``failed`` or ``timed_out`` with a countdown (a retry was
  scheduled);
- ``dead_lettered``: jobs dead-lettered (each staged exactly once);
- ``duplicate``: the sum of ``duplicate_deliveries``;
- ``worker_lost``: attempts recorded ``worker_lost``.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc
from tests.chaos.load import JobPlan, LoadReport
from tests.support.http_receiver import Receiver

OUTCOMES = ("succeeded", "retried", "dead_lettered", "duplicate", "worker_lost")
TERMINAL = ("succeeded", "dead_lettered")


def runs_from_files(directory: Path) -> Counter[str]:
    """``relayq_job_runs_total`` by outcome, from a node's multiprocess metric files."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    out: Counter[str] = Counter()
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "relayq_job_runs_total":
                out[sample.labels["outcome"]] += int(sample.value)
    return out


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name from a Prometheus text endpoint (empty when it does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def runs_from_scrape(url: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for labels, value in scrape(url).get("relayq_job_runs_total", []):
        out[labels["outcome"]] += int(value)
    return out


@dataclass
class Audit:
    """Every figure the run reports, and every problem found."""

    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


async def non_terminal(database_url: str, keys: list[str]) -> int:
    """How many of these jobs are not finished (or not in the ledger at all)."""
    conn = await asyncpg.connect(database_url)
    try:
        finished = await conn.fetchval(
            "SELECT count(*) FROM relayq_jobs WHERE idempotency_key = ANY($1::text[])"
            " AND state IN ('succeeded', 'dead_lettered')",
            keys,
        )
    finally:
        await conn.close()
    return len(keys) - int(finished)


async def states(database_url: str, keys: list[str]) -> dict[str, str]:
    """The ledger's state of each of these jobs, by key."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT idempotency_key, state FROM relayq_jobs"
            " WHERE idempotency_key = ANY($1::text[])",
            keys,
        )
    finally:
        await conn.close()
    return {r["idempotency_key"]: r["state"] for r in rows}


async def audit_ledger(
    audit: Audit,
    database_url: str,
    jobs: list[JobPlan],
    load: LoadReport,
    *,
    max_worker_losses: int = 2,
    kill_capacity: int = 0,
) -> Counter[str]:
    """Lost, stuck, wrong outcomes, effects applied twice; the ledger's outcome counts.

    A job the injector's kills hit ``max_worker_losses`` times is dead-lettered as a poison job
    (reason ``worker_lost``), as documented: not a wrong outcome, as long as the ledger's worker
    losses altogether stay within what the kills can explain (``kill_capacity``: one running job
    per killed pool process). A loss counted while the first delivery lived would break that.
    """
    by_key = {j.key: j for j in jobs}
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT job_id, idempotency_key, task, state, attempt_count, worker_losses,"
            " duplicate_deliveries FROM relayq_jobs"
        )
        charges = await conn.fetch(
            "SELECT idempotency_key, count(*) AS n, sum(amount_cents) AS amount"
            " FROM demo_charges GROUP BY idempotency_key"
        )
        per_job = await conn.fetch(
            "SELECT job_id, count(*) FILTER (WHERE outcome = 'succeeded') AS succeeded,"
            " count(*) FILTER (WHERE error_type = 'UniqueViolationError') AS blocked"
            " FROM relayq_job_attempts GROUP BY job_id"
        )
        journal = await conn.fetch(
            "SELECT idempotency_key, count(*) AS n FROM demo_transfers GROUP BY idempotency_key"
        )
        accounts = sorted(
            {j.payload["from"] for j in jobs if j.task == "demo.transfer"}
            | {j.payload["to"] for j in jobs if j.task == "demo.transfer"}
        )
        balances = await conn.fetch(
            "SELECT account, balance_cents FROM demo_accounts WHERE account = ANY($1::text[])",
            accounts,
        )
        attempts = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE outcome = 'succeeded') AS succeeded,"
            " count(*) FILTER (WHERE outcome IN ('failed', 'timed_out')"
            " AND countdown_seconds > 0) AS retried,"
            " count(*) FILTER (WHERE outcome = 'worker_lost') AS worker_lost,"
            " count(*) FILTER (WHERE outcome = 'interrupted') AS interrupted"
            " FROM relayq_job_attempts"
        )
    finally:
        await conn.close()
    assert attempts is not None
    ledger = {r["idempotency_key"]: r for r in rows}
    unknown = set(ledger) - set(by_key)
    audit.check(not unknown, f"{len(unknown)} ledger rows nobody submitted: {sorted(unknown)[:5]}")
    lost = [k for k in by_key if k not in ledger]
    unacknowledged = [k for k in by_key if k not in load.job_ids]
    mismatched = [
        k
        for k in by_key
        if k in ledger and k in load.job_ids and ledger[k]["job_id"] != load.job_ids[k]
    ]
    stuck = [k for k in by_key if k in ledger and ledger[k]["state"] not in TERMINAL]
    differs = [
        k
        for k, j in by_key.items()
        if k in ledger and ledger[k]["state"] in TERMINAL and ledger[k]["state"] != j.expect
    ]
    poisoned = [
        k
        for k in differs
        if ledger[k]["state"] == "dead_lettered"
        and int(ledger[k]["worker_losses"]) >= max_worker_losses
    ]
    wrong = [k for k in differs if k not in poisoned]
    total_losses = sum(int(r["worker_losses"]) for r in rows)
    charged = {r["idempotency_key"]: r for r in charges}
    charge_jobs = [j for j in jobs if j.task == "demo.charge"]
    applied_twice = [k for k, r in charged.items() if r["n"] != 1]
    not_applied = [
        j.key
        for j in charge_jobs
        if j.key in ledger and ledger[j.key]["state"] == "succeeded" and j.key not in charged
    ]
    wrong_amount = [
        j.key
        for j in charge_jobs
        if j.key in charged and charged[j.key]["amount"] != j.payload["amount_cents"]
    ]
    succeeded_ids = {r["job_id"] for r in rows if r["state"] == "succeeded"}
    runs = {r["job_id"]: r for r in per_job}
    not_once = [j for j in succeeded_ids if runs.get(j) is None or runs[j]["succeeded"] != 1]
    blocked = sum(int(r["blocked"]) for r in per_job)
    # demo.transfer: one journal row per succeeded transfer, none for any other, and balances
    # equal to what the succeeded transfers moved.
    journaled = {r["idempotency_key"]: int(r["n"]) for r in journal}
    transfers = [j for j in jobs if j.task == "demo.transfer"]
    done = [j for j in transfers if j.key in ledger and ledger[j.key]["state"] == "succeeded"]
    transferred_twice = [k for k, n in journaled.items() if n > 1]
    not_transferred = [j.key for j in done if j.key not in journaled]
    done_keys = {j.key for j in done}
    transferred_unfinished = [
        j.key for j in transfers if j.key in journaled and j.key not in done_keys
    ]
    expected: Counter[str] = Counter({a: 0 for a in accounts})
    for j in done:
        expected[j.payload["from"]] -= j.payload["amount_cents"]
        expected[j.payload["to"]] += j.payload["amount_cents"]
    actual = {r["account"]: int(r["balance_cents"]) for r in balances}
    wrong_balance = sorted(a for a in accounts if actual.get(a, 0) != expected[a])
    audit.figures |= {
        "lost": len(lost),
        "unacknowledged": len(unacknowledged),
        "stuck": len(stuck),
        "wrong_outcome": len(wrong),
        "poisoned_by_kills": len(poisoned),
        "applied_twice": len(applied_twice) + len(not_once) + blocked + len(transferred_twice),
        "charges": len(charged),
        "transfers": {
            "succeeded": len(done),
            "journal_rows": sum(journaled.values()),
            "accounts": len(accounts),
            "balance_total": sum(actual.values()),
            "wrong_balances": len(wrong_balance),
        },
        "states": dict(Counter(r["state"] for r in rows)),
        "worker_losses": total_losses,
        "duplicate_deliveries": sum(int(r["duplicate_deliveries"]) for r in rows),
        "attempts_interrupted": int(attempts["interrupted"]),
    }
    audit.check(not lost, f"lost (acknowledged, not in the ledger): {lost[:5]}")
    audit.check(not unacknowledged, f"never acknowledged to the client: {unacknowledged[:5]}")
    audit.check(not mismatched, f"the client's job id is not the ledger's: {mismatched[:5]}")
    audit.check(not stuck, f"stuck: {[(k, ledger[k]['state']) for k in stuck[:5]]}")
    audit.check(
        not wrong,
        f"wrong outcome: {[(k, by_key[k].task, ledger[k]['state']) for k in wrong[:5]]}",
    )
    audit.check(
        total_losses <= kill_capacity,
        f"{total_losses} worker losses counted, more than the {kill_capacity} the kills explain",
    )
    audit.check(not applied_twice, f"charged more than once: {applied_twice[:5]}")
    audit.check(not not_once, f"succeeded jobs without exactly one success: {not_once[:5]}")
    audit.check(blocked == 0, f"{blocked} second charges stopped only by the primary key")
    audit.check(not not_applied, f"succeeded charges without their row: {not_applied[:5]}")
    audit.check(not wrong_amount, f"charges with the wrong amount: {wrong_amount[:5]}")
    audit.check(
        not transferred_twice,
        f"transferred more than once (journal rows per key): "
        f"{[(k, journaled[k]) for k in transferred_twice[:5]]}",
    )
    audit.check(
        not not_transferred, f"succeeded transfers without their row: {not_transferred[:5]}"
    )
    audit.check(
        not transferred_unfinished,
        f"transfers journaled for jobs that did not succeed: {transferred_unfinished[:5]}",
    )
    audit.check(
        not wrong_balance,
        "balances differ from what the succeeded transfers moved: "
        f"{[(a, actual.get(a, 0), expected[a]) for a in wrong_balance[:5]]}",
    )
    return Counter(
        succeeded=int(attempts["succeeded"]),
        retried=int(attempts["retried"]),
        dead_lettered=sum(1 for r in rows if r["state"] == "dead_lettered"),
        duplicate=sum(int(r["duplicate_deliveries"]) for r in rows),
        worker_lost=int(attempts["worker_lost"]),
    )


async def audit_dlq(audit: Audit, address: str, database_url: str, jobs: list[JobPlan]) -> None:
    """Every dead-lettered job is in the DLQ, once, with its key and the expected reason."""
    by_key = {j.key: j for j in jobs}
    conn = await asyncpg.connect(database_url)
    try:
        dead = {
            r["job_id"]: r["idempotency_key"]
            for r in await conn.fetch(
                "SELECT job_id, idempotency_key FROM relayq_jobs WHERE state = 'dead_lettered'"
            )
        }
    finally:
        await conn.close()
    entries: dict[str, dead_letter_pb2.DeadLetter] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = dead_letter_pb2_grpc.DeadLetterServiceStub(channel)
        token = ""
        while True:
            page = await stub.ListDeadLetters(
                dead_letter_pb2.ListDeadLettersRequest(page_size=1000, page_token=token), timeout=30
            )
            for entry in page.dead_letters:
                entries[entry.job_id] = entry
            token = page.next_page_token
            if not token:
                break
        stats = await stub.GetDeadLetterStats(
            dead_letter_pb2.GetDeadLetterStatsRequest(), timeout=30
        )
    reasons = Counter(e.reason for e in entries.values())
    audit.figures["dlq"] = {
        "entries": len(entries),
        "active": stats.active,
        "by_reason": dict(reasons),
    }
    missing = sorted(set(dead) - set(entries))
    extra = sorted(set(entries) - set(dead))
    audit.check(not missing, f"dead-lettered in the ledger, not in the DLQ: {missing[:5]}")
    audit.check(not extra, f"in the DLQ, not dead-lettered in the ledger: {extra[:5]}")
    audit.check(
        stats.active == len(dead), f"DLQ stats say {stats.active} active, ledger {len(dead)}"
    )
    twice = [e.job_id for e in entries.values() if e.dead_letter_count != 1]
    audit.check(not twice, f"stored more than once: {twice[:5]}")
    wrong_key = [j for j, e in entries.items() if dead.get(j) not in (None, e.idempotency_key)]
    audit.check(not wrong_key, f"DLQ entries with another key: {wrong_key[:5]}")
    wrong_reason = [
        (e.idempotency_key, e.reason)
        for e in entries.values()
        if e.idempotency_key in by_key
        and e.reason not in (by_key[e.idempotency_key].reason, "worker_lost")
    ]
    audit.check(not wrong_reason, f"unexpected DLQ reasons: {wrong_reason[:5]}")


def audit_metrics(
    audit: Audit,
    ledger: Counter[str],
    live: dict[str, str],
    dead_dirs: list[Path],
    live_dirs: dict[str, Path],
    slack: int,
) -> None:
    """The fleet's ``relayq_job_runs_total`` against the ledger (see the module docstring)."""
    fleet: Counter[str] = Counter()
    for name, url in live.items():
        served = runs_from_scrape(url)
        on_disk = runs_from_files(live_dirs[name])
        audit.check(
            served == on_disk, f"{name} serves {dict(served)}, its files say {dict(on_disk)}"
        )
        fleet += served
    for directory in dead_dirs:
        fleet += runs_from_files(directory)
    audit.figures["metrics"] = {
        "job_runs": {o: fleet[o] for o in OUTCOMES},
        "ledger": {o: ledger[o] for o in OUTCOMES},
        "slack": slack,
        "node_incarnations": len(live) + len(dead_dirs),
    }
    for outcome in OUTCOMES:
        audit.check(
            ledger[outcome] - slack <= fleet[outcome] <= ledger[outcome],
            f"relayq_job_runs_total{{outcome={outcome}}} is {fleet[outcome]}, the ledger says "
            f"{ledger[outcome]} (slack {slack})",
        )


def audit_webhooks(
    audit: Audit, receiver: Receiver, jobs: list[JobPlan], states: dict[str, str]
) -> None:
    """Every webhook job reached the receiver, always with its own key, and a succeeded one was
    answered 2xx at least once; no two requests of one key were ever in flight at once (two
    attempts of one job running together); nothing arrived that no job sent.

    ``states``: the ledger's state of each job, by key.
    """
    hooks = {j.key: j for j in jobs if j.task == "demo.webhook"}
    requests = receiver.requests()
    by_key: dict[str, list[Any]] = {}
    for r in requests:
        by_key.setdefault(r.key, []).append(r)
    strangers = sorted(set(by_key) - set(hooks))
    never = [k for k in hooks if k not in by_key]
    wrong_key = [
        r.key for r in requests if not isinstance(r.body, dict) or r.body.get("key") != r.key
    ]
    unanswered = [
        k
        for k in hooks
        if states.get(k) == "succeeded"
        and not any(r.outcome == "answered" and r.status == 200 for r in by_key.get(k, []))
    ]
    overlaps = receiver.overlaps()
    audit.figures["webhooks"] = {
        "jobs": len(hooks),
        "requests": len(requests),
        "most_requests_for_one_key": max((len(v) for v in by_key.values()), default=0),
        "by_outcome": dict(Counter(r.outcome for r in requests)),
        "overlapping_pairs": len(overlaps),
    }
    audit.check(not strangers, f"the receiver got requests no job sent: {strangers[:5]}")
    audit.check(not never, f"webhook jobs that never reached the receiver: {never[:5]}")
    audit.check(
        not wrong_key, f"requests whose Idempotency-Key is not their job's: {wrong_key[:5]}"
    )
    audit.check(not unanswered, f"succeeded webhooks never answered 2xx: {unanswered[:5]}")
    audit.check(
        not overlaps,
        "two attempts of one job in flight at once: "
        f"{[(a.key, a.started, a.ended, b.started, b.ended) for a, b in overlaps[:3]]}",
    )
