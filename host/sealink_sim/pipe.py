"""Byte pipes for benchmarks and tests: in-process queue pairs, and one end of a socketpair
whose other end may live in another process (a fleet of simulated devices), no device file."""

from __future__ import annotations

import asyncio
import socket

from sealink.errors import TransportError

__all__ = ["PipeTransport", "SocketTransport", "pipe_pair"]

_EOF = b""
_SOCKET_CHUNK = 1 << 16


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


class SocketTransport:
    """A connected stream socket (e.g. one end of socket.socketpair()) as a device link."""

    def __init__(self, name: str, sock: socket.socket) -> None:
        self.name = name
        self._sock = sock
        sock.setblocking(False)
        self._closed = False

    @property
    def mtu(self) -> int:
        return _SOCKET_CHUNK

    async def connect(self) -> None:
        if self._closed:
            raise TransportError(f"{self.name}: closed")

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise TransportError(f"{self.name}: closed")
        try:
            await asyncio.get_running_loop().sock_sendall(self._sock, data)
        except OSError as exc:
            raise TransportError(f"{self.name}: write failed: {exc}") from None

    async def receive(self) -> bytes:
        if self._closed:
            raise TransportError(f"{self.name}: closed")
        try:
            data = await asyncio.get_running_loop().sock_recv(self._sock, _SOCKET_CHUNK)
        except OSError as exc:
            raise TransportError(f"{self.name}: read failed: {exc}") from None
        if not data:
            raise TransportError(f"{self.name}: peer closed")
        return data

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()
