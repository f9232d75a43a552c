"""The admin-token check and the replay pacer (pure)."""

from __future__ import annotations

import pytest

from dlq_svc.auth import ADMIN_METHODS, AdminTokenInterceptor, check_bearer, metadata_value
from dlq_svc.errors import PermissionDenied, Unauthenticated
from dlq_svc.replay import Pacer

TOKEN = "s3cret-token"


@pytest.mark.parametrize(
    ("metadata", "refusal"),
    [
        ((), Unauthenticated),
        ((("x-relayq-actor", "a"),), Unauthenticated),
        ((("authorization", "Basic " + TOKEN),), Unauthenticated),
        ((("authorization", "Bearer"),), Unauthenticated),
        ((("authorization", "Bearer   "),), Unauthenticated),
        ((("authorization", "Bearer wrong"),), PermissionDenied),
        ((("authorization", "Bearer " + TOKEN + "x"),), PermissionDenied),
        ((("authorization", "Bearer " + TOKEN[:-1]),), PermissionDenied),
        ((("authorization", "Bearer " + TOKEN),), None),
        ((("authorization", "bearer " + TOKEN),), None),
        ((("authorization", b"Bearer " + TOKEN.encode()),), None),
        ((("authorization", "Bearer " + "é" * 3),), PermissionDenied),
    ],
)
def test_check_bearer(metadata: tuple[tuple[str, str | bytes], ...], refusal: type | None) -> None:
    error = check_bearer(metadata, TOKEN)
    if refusal is None:
        assert error is None
    else:
        assert error is not None and isinstance(error, refusal)
        assert TOKEN not in error.message


def test_metadata_value_takes_the_first() -> None:
    assert metadata_value((("a", "1"), ("a", "2")), "a") == "1"
    assert metadata_value(None, "a") is None


def test_the_admin_methods_are_the_mutating_ones() -> None:
    assert {m.rsplit("/", 1)[1] for m in ADMIN_METHODS} == {
        "ReplayDeadLetters",
        "DropDeadLetters",
        "PurgeDeadLetters",
    }
    assert all(m.startswith("/relayq.v1.DeadLetterService/") for m in ADMIN_METHODS)


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError):
        AdminTokenInterceptor("")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


async def test_the_pacer_spaces_events_and_never_bursts() -> None:
    clock = FakeClock()
    pacer = Pacer(4, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await pacer.wait()
    assert clock.slept == [0.25, 0.25]
    clock.now += 10  # a slow stretch...
    await pacer.wait()
    await pacer.wait()
    assert clock.slept == [0.25, 0.25, 0.25], "...is not followed by a catch-up burst"


async def test_no_rate_means_no_waiting() -> None:
    clock = FakeClock()
    pacer = Pacer(None, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        await pacer.wait()
    assert clock.slept == []
