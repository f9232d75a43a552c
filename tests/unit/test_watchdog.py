"""The consumption watchdog's decision: stalled only when it should have been receiving."""

from __future__ import annotations

from collections.abc import Sequence

from worker_svc.watchdog import StallDetector


def feed(detector: StallDetector, samples: Sequence[tuple[float, int | None, int]]) -> list[bool]:
    """(time, depth, busy) samples with capacity 2 and no message received since t=0."""
    return [
        detector.observe(t, last_received=0.0, depth=depth, busy=busy, capacity=2)
        for t, depth, busy in samples
    ]


def test_a_waiting_queue_and_a_free_slot_for_the_whole_stall_time_is_a_stall() -> None:
    assert feed(StallDetector(10), [(5, 3, 0), (10, 3, 1), (14, 1, 0), (15, 2, 0)]) == [
        False,
        False,
        False,
        True,
    ]


def test_an_empty_queue_is_not_a_stall() -> None:
    assert feed(StallDetector(10), [(t, 0, 0) for t in range(0, 60, 5)]) == [False] * 12


def test_a_node_whose_slots_are_all_busy_is_not_a_stall() -> None:
    assert feed(StallDetector(10), [(t, 50, 2) for t in range(0, 60, 5)]) == [False] * 12


def test_an_unreachable_broker_restarts_the_clock() -> None:
    """Reconnecting is Celery's job: the stall time counts from when it could consume again."""
    samples = [(0, 3, 0), (8, None, 0), (12, 3, 0), (20, 3, 0), (22, 3, 0)]
    assert feed(StallDetector(10), samples) == [False, False, False, False, True]


def test_a_message_received_restarts_the_clock() -> None:
    detector = StallDetector(10)
    assert not detector.observe(0, last_received=0, depth=5, busy=0, capacity=1)
    assert not detector.observe(9, last_received=8, depth=5, busy=0, capacity=1)
    assert not detector.observe(17, last_received=8, depth=5, busy=0, capacity=1)
    assert detector.observe(18, last_received=8, depth=5, busy=0, capacity=1)


def test_a_moment_without_a_free_slot_restarts_the_clock() -> None:
    samples = [(0, 3, 0), (9, 3, 2), (10, 3, 0), (19, 3, 0), (20, 3, 1)]
    assert feed(StallDetector(10), samples) == [False, False, False, False, True]
