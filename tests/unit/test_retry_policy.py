"""Retry policies: the countdowns they produce, and the errors a bad file gets."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayq_core.retry import PolicyError, RetryPolicy, load_policies
from relayq_core.settings import packaged_default
from worker_svc.runner import DeadLetter, Done, Failure, Outcome, Reason, Retry, RunResult, decide

policies = st.builds(
    RetryPolicy,
    base_delay_seconds=st.floats(0.01, 60),
    factor=st.floats(1, 4),
    max_delay_seconds=st.floats(60, 3600),
    max_retries=st.integers(0, 20),
    jitter=st.floats(0, 0.99),
)


@given(policy=policies, seed=st.integers(0, 2**32))
def test_every_countdown_lies_within_its_jitter_bounds(policy: RetryPolicy, seed: int) -> None:
    rng = random.Random(seed)
    for retry in range(1, policy.max_retries + 1):
        nominal = min(
            policy.base_delay_seconds * policy.factor ** (retry - 1), policy.max_delay_seconds
        )
        countdown = policy.countdown(retry, rng)
        assert nominal * (1 - policy.jitter) <= countdown <= nominal * (1 + policy.jitter)
        assert countdown <= policy.longest_countdown()


@given(policy=policies)
def test_the_schedule_grows_by_the_factor_until_the_cap(policy: RetryPolicy) -> None:
    delays = [policy.nominal_delay(n) for n in range(1, policy.max_retries + 2)]
    for before, after in zip(delays, delays[1:], strict=False):
        assert after >= before
        if after < policy.max_delay_seconds:
            assert after == pytest.approx(before * policy.factor)


def test_default_policy_is_the_briefs() -> None:
    policy = load_policies(packaged_default("retry.toml")).default
    assert [policy.nominal_delay(n) for n in range(1, 6)] == [2, 4, 8, 16, 32]
    assert policy.max_retries == 5 and policy.jitter == 0.2
    assert sum(policy.nominal_delay(n) for n in range(1, 6)) == 62


def test_overrides_inherit_the_default(tmp_path: Path) -> None:
    path = tmp_path / "retry.toml"
    path.write_text('[default]\nmax_retries = 7\n[tasks."a.b"]\nbase_delay_seconds = 0.5\n')
    loaded = load_policies(path)
    assert loaded.for_task("a.b") == RetryPolicy(base_delay_seconds=0.5, max_retries=7)
    assert loaded.for_task("other.task") == RetryPolicy(max_retries=7)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[default]\nbase_delay = 1\n", "default: unknown keys ['base_delay']"),
        ("[default]\njitter = 1.5\n", "default: jitter must be in [0, 1)"),
        ("[default]\nmax_retries = 2.5\n", "default.max_retries: must be a number"),
        ('[tasks."a.b"]\nfactor = 0.5\n', 'tasks."a.b": factor must be >= 1'),
        ("[default]\nmax_delay_seconds = 1\nbase_delay_seconds = 5\n", "max_delay_seconds must"),
        ("surprise = 1\n", "unknown top-level keys ['surprise']"),
        ("[default\n", "not valid TOML"),
    ],
)
def test_bad_files_name_file_key_and_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "retry.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as err:
        load_policies(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def failed(retryable: bool) -> RunResult:
    return RunResult(Outcome.FAILED, attempt=1, failure=Failure("E", "m", "", retryable))


def test_decide() -> None:
    policy = RetryPolicy(max_retries=2)
    assert isinstance(decide(failed(True), policy, 0), Retry)
    second = decide(failed(True), policy, 1)
    assert isinstance(second, Retry) and second.failures == 2
    low, high = policy.bounds(2)
    assert low <= second.countdown <= high
    assert decide(failed(True), policy, 2) == DeadLetter(Reason.RETRIES_EXHAUSTED)
    assert decide(failed(False), policy, 0) == DeadLetter(Reason.PERMANENT_ERROR)
    assert decide(RunResult(Outcome.POISON), policy, 0) == DeadLetter(Reason.WORKER_LOST)
    assert decide(RunResult(Outcome.SUCCEEDED, result=1), policy, 0) == Done(1)
