"""The webhook receiver used by worker tests, driven by real httpx clients (and a real client
process killed mid-request): what it counts, which faults it injects, and when it saw each
request begin and end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.support.http_receiver import Receiver, Request, closed_port_url

pytestmark = pytest.mark.integration


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def post(
    client: httpx.Client, rx: Receiver, key: str, faults: list[str] | None = None
) -> httpx.Response:
    body: dict[str, object] = {"job": key} if faults is None else {"job": key, "faults": faults}
    return client.post(rx.url(), json=body, headers={"Idempotency-Key": key})


def settled(rx: Receiver, key: str, count: int = 1) -> bool:
    """True once ``key`` has ``count`` requests and none is still pending."""
    found = rx.requests(key)
    return len(found) == count and all(r.outcome != "pending" for r in found)


def test_counts_requests_per_key_over_one_keep_alive_connection(rx: Receiver) -> None:
    with httpx.Client(timeout=5) as client:
        answers = [post(client, rx, key) for key in ("a", "b", "a", "a", "b")]
        anonymous = client.post(rx.url("/other"), content=b"not json")
    assert [a.status_code for a in answers] == [200] * 5
    assert answers[3].json() == {"received": True, "key": "a", "n": 2}
    assert anonymous.status_code == 200
    assert rx.counts() == Counter({"a": 3, "b": 2, "": 1})
    assert rx.keys() == {"a", "b", ""}
    assert [r.n for r in rx.requests("a")] == [0, 1, 2]
    assert len({r.connection for r in rx.requests()}) == 1  # httpx reused its connection
    first = rx.requests("a")[0]
    assert (first.method, first.path, first.body) == ("POST", "/hook", {"job": "a"})
    assert first.headers["idempotency-key"] == "a"
    assert first.headers["content-type"] == "application/json"
    assert (first.fault, first.status, first.outcome) == ("ok", 200, "answered")
    assert first.ended is not None and first.started <= first.ended
    other = rx.requests("")[0]
    assert (other.path, other.body) == ("/other", None)


def test_connection_close_gets_a_new_connection_each_time(rx: Receiver) -> None:
    with httpx.Client(timeout=5, headers={"Connection": "close"}) as client:
        answers = [post(client, rx, "k") for _ in range(2)]
    assert [a.headers["connection"] for a in answers] == ["close", "close"]
    assert len({r.connection for r in rx.requests("k")}) == 2


@pytest.mark.parametrize("code", [500, 503, 408, 404, 422])
def test_a_status_fault_answers_that_status(rx: Receiver, code: int) -> None:
    with httpx.Client(timeout=5) as client:
        first = post(client, rx, "k", [str(code)])
        second = post(client, rx, "k", [str(code)])
    assert (first.status_code, second.status_code) == (code, 200)
    assert "retry-after" not in first.headers
    assert [(r.fault, r.status, r.outcome) for r in rx.requests("k")] == [
        (str(code), code, "answered"),
        ("ok", 200, "answered"),
    ]


@pytest.mark.parametrize(("fault", "retry_after"), [("429", "1"), ("429:2", "2"), ("429:0", "0")])
def test_429_carries_retry_after(rx: Receiver, fault: str, retry_after: str) -> None:
    with httpx.Client(timeout=5) as client:
        answer = post(client, rx, "k", [fault])
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == retry_after
    assert rx.requests("k")[0].status == 429


@pytest.mark.parametrize("fault", ["delay:2", "hang"])
def test_a_client_that_times_out_ends_the_interval(rx: Receiver, fault: str) -> None:
    with httpx.Client(timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
        post(client, rx, "k", [fault])
    rx.wait_for(lambda r: settled(r, "k"), timeout=2)
    (record,) = rx.requests("k")
    assert (record.fault, record.status, record.outcome) == (fault, None, "client_gone")
    assert record.ended is not None
    assert 0.25 <= record.ended - record.started <= 0.8  # the client's 0.3 s, not the 2 s delay


def test_a_delay_that_the_client_waits_out_is_answered(rx: Receiver) -> None:
    with httpx.Client(timeout=5) as client:
        answer = post(client, rx, "k", ["delay:0.3"])
    (record,) = rx.requests("k")
    assert answer.status_code == 200 and record.outcome == "answered"
    assert record.ended is not None and record.ended - record.started >= 0.3


def test_close_drops_the_connection_without_an_answer(rx: Receiver) -> None:
    with httpx.Client(timeout=5) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            post(client, rx, "k", ["close", "ok"])
        after = post(client, rx, "k", ["close", "ok"])
    assert after.json() == {"received": True, "key": "k", "n": 1}
    closed, answered = rx.requests("k")
    assert (closed.status, closed.outcome) == (None, "closed")
    assert (answered.status, answered.outcome) == (200, "answered")
    assert closed.connection != answered.connection


def test_the_tests_plan_overrides_the_body_and_the_default_is_a_fallback() -> None:
    with Receiver(default_faults=["502"]) as rx, httpx.Client(timeout=5) as client:
        rx.set_faults("planned", ["500", "500"])
        planned = [post(client, rx, "planned", ["503"]).status_code for _ in range(3)]
        from_body = [post(client, rx, "body", ["503", "408"]).status_code for _ in range(3)]
        default = [post(client, rx, "plain").status_code for _ in range(2)]
    assert planned == [500, 500, 200]
    assert from_body == [503, 408, 200]
    assert default == [502, 200]


def test_an_unknown_fault_is_a_loud_400(rx: Receiver) -> None:
    with httpx.Client(timeout=5) as client:
        typo = post(client, rx, "typo", ["5OO"])
        number = client.post(rx.url(), json={"faults": [503]}, headers={"Idempotency-Key": "n"})
    assert typo.status_code == 400 and "5OO" in typo.json()["error"]
    assert number.status_code == 400
    assert rx.requests("n")[0].fault == "<not a string: 503>"
    for bad in ("5OO", "delay", "delay:-1", "429:0.5", "199", "600", "hang:1"):
        with pytest.raises(ValueError, match="unknown fault"):
            rx.set_faults("k", [bad])
    with pytest.raises(TypeError, match="not the string"):
        rx.set_faults("k", "503")


async def test_overlaps_finds_concurrent_attempts_of_one_key_only(rx: Receiver) -> None:
    async with httpx.AsyncClient(timeout=5) as client:

        async def send(key: str) -> int:
            body = {"faults": ["delay:0.2", "delay:0.2"]}
            answer = await client.post(rx.url(), json=body, headers={"Idempotency-Key": key})
            return answer.status_code

        assert list(await asyncio.gather(send("same"), send("same"))) == [200, 200]
        assert list(await asyncio.gather(send("x"), send("y"))) == [200, 200]
        for _ in range(3):
            await send("sequential")
    pairs = rx.overlaps()
    assert [(a.key, b.key) for a, b in pairs] == [("same", "same")]
    assert {pairs[0][0].n, pairs[0][1].n} == {0, 1}
    assert pairs[0][0].connection != pairs[0][1].connection


async def test_a_pending_request_overlaps_a_later_one(rx: Receiver) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        headers = {"Idempotency-Key": "k"}
        hung = asyncio.create_task(
            client.post(rx.url(), json={"faults": ["hang"]}, headers=headers)
        )
        await rx.wait_for_async(lambda r: r.counts()["k"] == 1, timeout=5)
        assert rx.overlaps() == []
        assert (await client.post(rx.url(), headers=headers)).status_code == 200
        pairs = rx.overlaps()
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
    assert [(a.outcome, b.outcome) for a, b in pairs] == [("pending", "answered")]
    await rx.wait_for_async(lambda r: settled(r, "k", 2), timeout=2)
    assert rx.requests("k")[0].outcome == "client_gone"


def test_a_client_killed_mid_request_ends_the_interval(rx: Receiver) -> None:
    code = (
        "import sys, httpx; httpx.post(sys.argv[1], json={'faults': ['hang']},"
        " headers={'Idempotency-Key': 'killed'}, timeout=30)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, rx.url()], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        rx.wait_for(lambda r: r.counts()["killed"] == 1 or proc.poll() is not None, timeout=20)
        assert proc.poll() is None, proc.communicate()[1].decode()
        time.sleep(0.2)  # a kill long after the request arrived, so "ended" can only be the kill
        assert rx.requests("killed")[0].outcome == "pending"
        killed_at = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        rx.wait_for(lambda r: settled(r, "killed"), timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    record: Request = rx.requests("killed")[0]
    assert (record.outcome, record.status) == ("client_gone", None)
    assert record.ended is not None and killed_at <= record.ended <= killed_at + 1.0


async def test_stopping_ends_open_requests() -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        with Receiver() as short:
            url = short.url()
            hung = asyncio.create_task(
                client.post(url, json={"faults": ["hang"]}, headers={"Idempotency-Key": "k"})
            )
            await short.wait_for_async(lambda r: r.counts()["k"] == 1, timeout=5)
        with pytest.raises(httpx.RemoteProtocolError):
            await hung
        with pytest.raises(httpx.ConnectError):
            await client.post(url)
    (record,) = short.requests("k")
    assert (record.outcome, record.status) == ("stopped", None)


def test_reset_forgets_records_and_restarts_the_count(rx: Receiver) -> None:
    with httpx.Client(timeout=5) as client:
        post(client, rx, "k", ["503"])
        rx.reset()
        assert rx.requests() == [] and rx.counts() == Counter()
        assert post(client, rx, "k", ["503"]).status_code == 503  # n is 0 again
    assert [r.n for r in rx.requests("k")] == [0]


def test_wait_for_names_what_it_waited_for(rx: Receiver) -> None:
    def nobody_called(receiver: Receiver) -> bool:
        return receiver.counts()["x"] > 0

    with pytest.raises(AssertionError, match="nobody_called"):
        rx.wait_for(nobody_called, timeout=0.05)
    with pytest.raises(AssertionError, match=r'counts\(\)\["y"\] == 5'):
        rx.wait_for(lambda r: r.counts()["y"] == 5, timeout=0.05)
    with pytest.raises(AssertionError, match="the third attempt"):
        rx.wait_for(nobody_called, timeout=0.05, what="the third attempt")


def test_nothing_listens_at_the_closed_port_url() -> None:
    with httpx.Client(timeout=5) as client, pytest.raises(httpx.ConnectError):
        client.post(closed_port_url(), json={})
