"""Time limits with a real worker: a handler that never returns is stopped, counted and retried,
then dead-lettered with reason ``timeout`` (finding 2).

The test worker runs tests/data/retry-fast.toml, where ``demo.hang`` has a 1 s time limit and 1
retry, with ``RELAYQ_WORKER_KILL_GRACE_SECONDS=1``. Three kinds of hang:

- ``async``: lets itself be cancelled, so the runner's own timeout ends it (``kind=soft``);
- ``blocking``: blocks the event loop (synchronous I/O in a handler), and
- ``stubborn``: swallows every cancellation; for both, the supervisor records the attempt as
  timed out and kills the pool process (``kind=hard``), which Celery replaces.

In every case the attempts follow one another (none starts before the one before it ended) and
the node keeps running jobs.
"""

from __future__ import annotations

import urllib.request

import pytest

from relayq.v1 import dead_letter_pb2, dead_letter_pb2_grpc, job_pb2
from relayq_core.retry import load_policies
from relayq_core.settings import repo_root
from tests.conftest import Ingest
from tests.integration.jobs import finish, request

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

POLICY = load_policies(repo_root() / "tests" / "data" / "retry-fast.toml").for_task("demo.hang")


def samples(port: int, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def killed(port: int) -> float:
    return sum(
        v
        for labels, v in samples(port, "relayq_worker_attempts_killed_total").items()
        if dict(labels).get("reason") == "timeout"
    )


@pytest.mark.parametrize("mode", ["async", "blocking", "stubborn"])
async def test_a_hung_handler_is_stopped_retried_and_dead_lettered_as_timeout(
    mode: str,
    live_ingest: Ingest,
    dlq_client: dead_letter_pb2_grpc.DeadLetterServiceAsyncStub,
    worker_metrics_port: int,
) -> None:
    kills_before = killed(worker_metrics_port)
    reply = await live_ingest.stub.SubmitJob(request("demo.hang", {"mode": mode}))
    job = await finish(live_ingest, reply.job_id, timeout=60)
    attempts = POLICY.max_retries + 1
    assert job.state == job_pb2.JOB_STATE_DEAD_LETTERED
    assert [a.outcome for a in job.attempts] == ["timed_out"] * attempts
    assert job.worker_losses == 0  # a kill that the supervisor recorded is not a worker loss
    hard = mode != "async"
    for attempt in job.attempts:
        assert attempt.error_type == "JobTimeout"
        assert ("its process was killed" in attempt.error_message) is hard
        # Stopped at the limit (plus the grace, when it had to be killed), not much later.
        low = POLICY.timeout_seconds + (1.0 if hard else 0.0)
        assert low - 0.05 <= attempt.duration_seconds <= low + 1.5, attempt
    # One attempt at a time, in order, with the retry's backoff between them.
    first, second = job.attempts
    first_end = first.started_at.ToDatetime().timestamp() + first.duration_seconds
    gap = second.started_at.ToDatetime().timestamp() - first_end
    assert gap >= POLICY.bounds(1)[0] - 0.05, gap
    entry = (
        await dlq_client.GetDeadLetter(dead_letter_pb2.GetDeadLetterRequest(id=job.job_id))
    ).dead_letter
    assert entry.reason == "timeout" and entry.error_type == "JobTimeout"
    assert len(entry.attempts) == attempts
    assert killed(worker_metrics_port) - kills_before == (attempts if hard else 0)
    # The node survived (its pool process was replaced) and runs the next job.
    ok = await live_ingest.stub.SubmitJob(request("demo.echo", {"after": f"hang-{mode}"}))
    assert (await finish(live_ingest, ok.job_id, timeout=30)).state == job_pb2.JOB_STATE_SUCCEEDED
