"""In-process byte pipes: a transport pair for benchmarks and tests, no OS device involved."""

from __future__ import annotations

import asyncio

from ._errors import TransportError

__all__ = ["PipeTransport", "pipe_pair"]

_EOF = b""


class PipeTransport:
    def __init__(self, name: str, inbox: asyncio.Queue[bytes], outbox: asyncio.Queue[bytes]):
        self.name = name
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False

    @property
    def mtu(self) -> int:
        return 1 << 16

    async def connect(self) -> None:
        self._closed = False

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise TransportError(f"{self.name}: closed")
        self._outbox.put_nowait(bytes(data))

    async def receive(self) -> bytes:
        if self._closed:
            raise TransportError(f"{self.name}: closed")
        data = await self._inbox.get()
        if data == _EOF:
            self._closed = True
            raise TransportError(f"{self.name}: peer closed")
        return data

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.put_nowait(_EOF)


def pipe_pair(name: str = "pipe") -> tuple[PipeTransport, PipeTransport]:
    """(host end, device end): what one end sends, the other receives, in order."""
    a: asyncio.Queue[bytes] = asyncio.Queue()
    b: asyncio.Queue[bytes] = asyncio.Queue()
    return PipeTransport(f"{name}:host", a, b), PipeTransport(f"{name}:device", b, a)
