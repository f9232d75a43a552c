"""A TCP proxy to PostgreSQL for the delivery tests: new connections can be held back (a server
slow to accept), dropped unforwarded (the client process died before they were made), and the
whole path can go silent (a partition: nothing forwarded either way, nothing closed)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class Proxy:
    def __init__(self, database_url: str) -> None:
        self._parts = urlsplit(database_url)
        self.target = (self._parts.hostname or "127.0.0.1", self._parts.port or 5432)
        #: New connections are forwarded only after this many seconds.
        self.delay = 0.0
        #: The next new connection only is forwarded after this many seconds.
        self.delay_next = 0.0
        #: Nothing is forwarded in either direction, and nothing is closed (a silent network).
        self.frozen = False
        #: Freeze the moment the client sends these bytes (they are not forwarded).
        self.freeze_on: bytes | None = None
        self.froze = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._pending: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._clients: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        netloc = f"127.0.0.1:{self.port}"
        if self._parts.username:
            netloc = f"{self._parts.username}@{netloc}"
        return urlunsplit(self._parts._replace(netloc=netloc))

    def drop_pending(self) -> None:
        """The client process is gone: what it had not yet got through to the server never
        arrives (a connect still waiting on a SYN dies with the process)."""
        for task, writer in list(self._pending.items()):
            task.cancel()
            writer.transport.abort()
        self._pending.clear()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                if upstream and self.freeze_on is not None and self.freeze_on in data:
                    self.frozen = True
                    self.froze.set()
                while self.frozen:
                    await asyncio.sleep(0.05)  # held, never forwarded while frozen
                writer.write(data)
                await writer.drain()
            while self.frozen:
                await asyncio.sleep(0.05)  # a silent network carries no FIN either
        with contextlib.suppress(Exception):
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)
        if self._closed:
            writer.transport.abort()
            return
        with contextlib.suppress(asyncio.CancelledError):
            self._pending[task] = writer
            try:
                delay, self.delay_next = max(self.delay, self.delay_next), 0.0
                if delay:
                    await asyncio.sleep(delay)
                while self.frozen:
                    await asyncio.sleep(0.05)
            finally:
                self._pending.pop(task, None)
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.append(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False)
            )

    async def close(self) -> None:
        """Ends every connection, at once (as resets), and waits for their tasks: nothing of the
        proxy outlives it (a socket left to the garbage collector fails a later test)."""
        self._closed = True
        self.frozen = False
        self.drop_pending()
        if self.server is not None:
            self.server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=5)
        for w in self._writers:
            w.transport.abort()
