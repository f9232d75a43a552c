"""A TCP proxy to PostgreSQL whose *new* connections can be made slow on demand: the failover or
connection storm in which opening a connection takes seconds while open ones work on."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit


class SlowAccept:
    """Forwards each new connection to PostgreSQL only after :attr:`delay` seconds (0 at first;
    set it at any time: it applies to connections opened from then on)."""

    def __init__(self, database_url: str) -> None:
        self._parts = urlsplit(database_url)
        self.target = (self._parts.hostname or "127.0.0.1", self._parts.port or 5432)
        self.delay = 0.0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """The database URL through this proxy."""
        netloc = f"127.0.0.1:{self.port}"
        if self._parts.username:
            netloc = f"{self._parts.username}@{netloc}"
        return urlunsplit(self._parts._replace(netloc=netloc))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(asyncio.CancelledError):
            if self.delay:
                await asyncio.sleep(self.delay)
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.append(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def close(self) -> None:
        for w in self._writers:
            w.close()
        if self.server is not None:
            self.server.close()
