"""A pseudo-terminal pair standing in for a UART cable: the device end holds the master fd,
the gateway opens the slave by path through pyserial, as it would a USB-serial adapter."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import tty
from collections.abc import Iterator
from dataclasses import dataclass

from sealink.errors import TransportError

__all__ = ["FdTransport", "PtyLink", "open_pty_link"]


class FdTransport:
    """The device end of a pty (its master fd): what the board's UART would be."""

    def __init__(self, fd: int, name: str = "pty-master") -> None:
        self.fd = fd
        self.name = name
        os.set_blocking(fd, False)

    @property
    def mtu(self) -> int:
        return 4096

    async def connect(self) -> None:
        return None

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                await self._writable()

    async def _writable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_writer(self.fd, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_writer(self.fd)

    async def receive(self) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_reader(self.fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_reader(self.fd)
                continue
            except OSError as exc:
                raise TransportError(f"{self.name}: {exc}") from None
            if not data:
                raise TransportError(f"{self.name}: closed")
            return data

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


@dataclass
class PtyLink:
    device_end: FdTransport
    host_path: str
    master_fd: int


@contextlib.contextmanager
def open_pty_link() -> Iterator[PtyLink]:
    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    link = PtyLink(FdTransport(master), os.ttyname(slave), master)
    try:
        yield link
    finally:
        with contextlib.suppress(OSError):
            os.close(master)
        with contextlib.suppress(OSError):
            os.close(slave)
