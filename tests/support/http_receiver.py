"""A real HTTP receiver on 127.0.0.1 that counts requests per idempotency key, injects faults and
records when each request was at the receiver.

Worker subprocesses POST to it like to any webhook; tests read back what arrived. The fault for a
request comes from a plan: one set by the test with ``set_faults`` (wins), else the ``"faults"``
list in the JSON body, else the receiver's ``default_faults``. The n-th request (0-based) for a key
gets ``plan[n]``, and ``"ok"`` once the plan is exhausted, so a job's payload decides its own
faults deterministically, whichever worker process runs which attempt.

Spellings: ``"ok"`` (200), ``"<code>"`` (that status, 200-599), ``"429"`` / ``"429:<seconds>"``
(with ``Retry-After``, default 1), ``"delay:<seconds>"`` (then 200), ``"hang"`` (never answer) and
``"close"`` (close the connection without answering). An unknown spelling in a body gets a 400,
which is permanent for the worker, so a typo in a test fails loudly instead of looking like a retry.

While it delays or hangs, the receiver also waits for the client to leave (EOF or reset), so a
request's interval ``[started, ended]`` ends when the client gave up (its timeout, or the kernel
closing a SIGKILLed process's socket): ``overlaps()`` can then show whether two attempts of one job
were ever in flight at once. One caveat: a client that drops a connection and retries at once on a
new one may be seen arriving a moment before its first connection's EOF is read; the worker's
backoff keeps retries far apart from that.

The asyncio server runs on its own loop in a daemon thread, so synchronous tests and asyncio tests
(whose loop it must not share or block) can both use it. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, Literal, Self

Outcome = Literal["pending", "answered", "client_gone", "closed", "stopped"]

#: A request line plus headers larger than this is refused: no test sends one, a bug might.
MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Request:
    """One request as the receiver saw it. ``ended`` is None while it is ``"pending"``."""

    key: str  # the Idempotency-Key header, "" if absent
    n: int  # its index among this key's requests since the last reset()
    path: str
    method: str
    headers: dict[str, str] = field(hash=False)  # lower-case names
    body: Any = field(hash=False)  # parsed JSON, None if empty or not JSON
    fault: str
    status: int | None  # None if never answered
    outcome: Outcome
    started: float  # time.time() when the request was fully read
    ended: float | None  # time.time() when answered, or when the client's departure was seen
    connection: int  # serial number of the TCP connection that carried it


@dataclass(frozen=True)
class _Fault:
    kind: Literal["ok", "status", "delay", "hang", "close"]
    status: int = 200
    seconds: float = 0.0


_PLAIN = {name: _Fault(name) for name in ("ok", "hang", "close")}


def _parse_fault(spelling: str) -> _Fault:
    """Validate a fault spelling; raises ValueError for an unknown one."""
    name, colon, arg = spelling.partition(":")
    with contextlib.suppress(ValueError):
        if spelling in _PLAIN:
            return _PLAIN[spelling]
        if name == "delay" and colon and float(arg) >= 0:
            return _Fault("delay", seconds=float(arg))
        if name == "429" and (not colon or int(arg) >= 0):
            # Retry-After takes whole seconds (delta-seconds), so only integers are spelled.
            return _Fault("status", 429, float(int(arg) if colon else 1))
        if not colon and name.isdigit() and 200 <= int(name) <= 599:
            return _Fault("status", int(name))
    raise ValueError(f"unknown fault {spelling!r}")


def _plan(faults: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too: "503" would silently become the plan "5", "0", "3".
    if isinstance(faults, str):
        raise TypeError(f"a fault plan is a list of spellings, not the string {faults!r}")
    for spelling in faults:
        _parse_fault(spelling)
    return list(faults)


def closed_port_url(path: str = "/hook") -> str:
    """A URL on 127.0.0.1 where nothing listens (a port just freed; another process could take
    it in between, which a test would see as an unexpected answer, not a false pass)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


class _BadRequest(Exception):
    """The request could not be parsed."""


class _Stream:
    """A StreamReader with a buffer of our own: waiting for EOF while we delay or hang must not
    swallow the bytes of a pipelined next request, and StreamReader cannot push bytes back."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buf = bytearray()

    async def _fill(self) -> bool:
        chunk = await self._reader.read(65536)
        self._buf += chunk
        return bool(chunk)

    async def head(self) -> bytes | None:
        """The request line and headers; None if the client left between requests."""
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > MAX_HEAD:
                raise _BadRequest("request head too large")
            if not await self._fill():
                return None
        head = bytes(self._buf[:end]).lstrip(b"\r\n")  # RFC 9112 tolerates leading CRLFs
        del self._buf[: end + 4]
        return head

    async def body(self, length: int) -> bytes | None:
        """Exactly ``length`` bytes; None if the client left before sending them."""
        while len(self._buf) < length:
            if not await self._fill():
                return None
        body = bytes(self._buf[:length])
        del self._buf[:length]
        return body

    async def until_gone(self) -> None:
        """Return once the client has closed or reset the connection."""
        with contextlib.suppress(ConnectionError):
            while await self._fill():
                pass


def _response(status: int, payload: object, keep: bool, extra: dict[str, str]) -> bytes:
    body = json.dumps(payload).encode()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Connection": "keep-alive" if keep else "close",
        **extra,
    }
    lines = [f"HTTP/1.1 {status} {phrase}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _describe(predicate: Callable[..., bool]) -> str:
    # A lambda's own source says more in a failure than "<lambda>".
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return getattr(predicate, "__qualname__", repr(predicate))


class Receiver:
    """A real HTTP/1.1 server on 127.0.0.1 (keep-alive aware) for webhook tests; use it as a
    context manager. Queries are thread-safe."""

    def __init__(self, default_faults: Sequence[str] = ()) -> None:
        self._default = _plan(default_faults)
        self._plans: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._records: dict[int, Request] = {}  # by serial, in arrival order
        self._counts: Counter[str] = Counter()
        self._serial = 0
        self._connections = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Listen on a free port; returns once the port is bound. A Receiver starts once."""
        if self._thread is not None:
            raise RuntimeError("this Receiver was already started")
        self._thread = threading.Thread(target=self._run, name="http-receiver", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError("the HTTP receiver did not start") from self._error

    def stop(self) -> None:
        """Stop listening, end every open connection (pending requests become ``"stopped"``)."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0)
            )
            self._port = self._server.sockets[0].getsockname()[1]
            self._loop = loop
        except BaseException as exc:  # handed to start(), which raises it in the test
            self._error = exc
        self._ready.set()
        if self._error is None:
            loop.run_forever()
        loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    # -- addresses ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on."""
        if self._port is None:
            raise RuntimeError("the receiver is not started")
        return self._port

    def url(self, path: str = "/hook") -> str:
        """The URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    # -- plans and records ------------------------------------------------------------------

    def set_faults(self, key: str, faults: Sequence[str]) -> None:
        """Give ``key`` this plan (indexed by the request's n); it overrides the body's plan."""
        plan = _plan(faults)
        with self._lock:
            self._plans[key] = plan

    def reset(self) -> None:
        """Forget every record and count (n restarts at 0); plans set by the test are kept."""
        with self._lock:
            self._records.clear()
            self._counts.clear()

    def requests(self, key: str | None = None) -> list[Request]:
        """Records in arrival order, all or one key's."""
        with self._lock:
            return [r for r in self._records.values() if key is None or r.key == key]

    def counts(self) -> Counter[str]:
        """Requests per key."""
        with self._lock:
            return Counter(self._counts)

    def keys(self) -> set[str]:
        """Every key seen."""
        with self._lock:
            return set(self._counts)

    def overlaps(self) -> list[tuple[Request, Request]]:
        """Pairs of requests with one key whose intervals intersect; a pending one ends "now"."""
        now = time.time()
        by_key: defaultdict[str, list[Request]] = defaultdict(list)
        for request in self.requests():
            by_key[request.key].append(request)
        pairs = []
        for group in by_key.values():
            group.sort(key=lambda r: r.started)
            for i, a in enumerate(group):
                a_end = now if a.ended is None else a.ended
                for b in group[i + 1 :]:
                    if b.started >= a_end:
                        break  # sorted by start: no later request can reach back into a
                    if a.started < (now if b.ended is None else b.ended):
                        pairs.append((a, b))
        return pairs

    def wait_for(
        self, predicate: Callable[[Receiver], bool], timeout: float, what: str = ""
    ) -> None:
        """Poll ``predicate(self)`` until true; AssertionError naming it after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise self._timed_out(predicate, timeout, what)
            time.sleep(0.01)

    async def wait_for_async(
        self, predicate: Callable[[Receiver], bool], timeout: float, what: str = ""
    ) -> None:
        """``wait_for`` for asyncio tests, which must not block their own loop while polling."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise self._timed_out(predicate, timeout, what)
            await asyncio.sleep(0.01)

    def _timed_out(self, predicate: Callable[..., bool], timeout: float, what: str) -> Exception:
        return AssertionError(
            f"timed out after {timeout} s waiting for {what or _describe(predicate)}; "
            f"requests per key: {dict(self.counts())}"
        )

    def _begin(
        self, conn: int, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, Request]:
        key = headers.get("idempotency-key", "")
        with self._lock:
            n = self._counts[key]
            self._counts[key] += 1
            plan: object = self._plans.get(key)
            if plan is None and isinstance(body, dict) and isinstance(body.get("faults"), list):
                plan = body["faults"]
            if plan is None:
                plan = self._default
            assert isinstance(plan, list)
            fault = plan[n] if n < len(plan) else "ok"
            if not isinstance(fault, str):
                fault = f"<not a string: {fault!r}>"  # strict: 503 and "503" must not both work
            self._serial += 1
            record = Request(
                key, n, path, method, headers, body, fault, None, "pending", time.time(), None, conn
            )
            self._records[self._serial] = record
            return self._serial, record

    def _finish(self, serial: int, status: int | None, outcome: Outcome) -> None:
        with self._lock:
            if (record := self._records.get(serial)) is not None:  # else reset() meanwhile
                self._records[serial] = replace(
                    record, status=status, outcome=outcome, ended=time.time()
                )

    # -- the server ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self._connections += 1
            conn = self._connections
        stream = _Stream(reader)
        try:
            while await self._one(stream, writer, conn):
                pass
        except _BadRequest as exc:
            writer.write(_response(400, {"error": str(exc)}, False, {}))
        except ConnectionError:
            pass  # the client left; whatever was in flight is already recorded
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one(self, stream: _Stream, writer: asyncio.StreamWriter, conn: int) -> bool:
        """Serve one request; False when the connection is to be closed."""
        head = await stream.head()
        if head is None:
            return False
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        try:
            method, path, version = request_line.split(" ")
            headers: dict[str, str] = {}
            for line in header_lines:
                name, value = (part.strip() for part in line.split(":", 1))
                name = name.lower()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if (length := int(headers.get("content-length", "0"))) < 0:
                raise ValueError(f"Content-Length {length}")
        except ValueError as exc:
            raise _BadRequest(f"malformed request: {exc}") from exc
        if "transfer-encoding" in headers:
            raise _BadRequest("Transfer-Encoding is not supported; send Content-Length")
        raw = await stream.body(length)
        if raw is None:
            return False
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        token = headers.get("connection", "").lower()
        keep = "close" not in token and (version == "HTTP/1.1" or "keep-alive" in token)

        serial, record = self._begin(conn, method, path, headers, body)
        try:
            try:
                fault = _parse_fault(record.fault)
            except ValueError as exc:
                fault = _Fault("status", 400)
                payload: dict[str, object] = {"error": str(exc)}
            else:
                payload = {"received": True, "key": record.key, "n": record.n}
                if fault.kind == "status":
                    payload = {"fault": record.fault, "key": record.key, "n": record.n}
            if fault.kind == "close":
                self._finish(serial, None, "closed")
                return False
            if fault.kind in ("delay", "hang") and await self._client_left(
                stream, fault.seconds if fault.kind == "delay" else None
            ):
                self._finish(serial, None, "client_gone")
                return False
            extra = {"Retry-After": str(int(fault.seconds))} if fault.status == 429 else {}
            # Recorded before the bytes leave: a client that has its answer must find it recorded.
            self._finish(serial, fault.status, "answered")
            writer.write(_response(fault.status, payload, keep, extra))
            await writer.drain()
            return keep
        except ConnectionError:
            self._finish(serial, None, "client_gone")
            return False
        except asyncio.CancelledError:
            self._finish(serial, None, "stopped")
            raise

    @staticmethod
    async def _client_left(stream: _Stream, seconds: float | None) -> bool:
        """Wait ``seconds`` (None: forever); True as soon as the client leaves instead."""
        gone = asyncio.ensure_future(stream.until_gone())
        try:
            done, _ = await asyncio.wait({gone}, timeout=seconds)
            return bool(done)
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone
