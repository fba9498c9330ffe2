"""Serial transport: any pyserial URL (a device path, rfc2217://, socket://, spy://, loop://).

A local serial port (and a pseudo-terminal, which is what an emulated board offers) has a file
descriptor: it is read and written non-blocking from the event loop itself (add_reader /
add_writer), the cheapest path. URL handlers without one (rfc2217, socket, spy wrappers) are
read and written in worker threads so the event loop never blocks on them.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import Any

import serial
import serial.serialposix

from sealink.errors import TransportError

__all__ = ["SerialTransport"]

_READ_CHUNK = 4096
_THREAD_POLL_S = 0.1


class SerialTransport:
    def __init__(self, url: str, baudrate: int = 115200, **options: Any) -> None:
        self.url = url
        self.name = f"serial:{url}"
        self.baudrate = baudrate
        self._options = options
        self._ser: Any = None
        self._fd: int | None = None
        self._closed = False

    @property
    def mtu(self) -> int:
        return _READ_CHUNK

    async def connect(self) -> None:
        try:
            self._ser = await asyncio.to_thread(
                serial.serial_for_url,
                self.url,
                baudrate=self.baudrate,
                timeout=_THREAD_POLL_S,
                write_timeout=None,
                **self._options,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"{self.name}: cannot open: {exc}") from None
        self._closed = False
        if isinstance(self._ser, serial.serialposix.Serial):
            self._fd = self._ser.fileno()
            os.set_blocking(self._fd, False)

    async def receive(self) -> bytes:
        if self._ser is None or self._closed:
            raise TransportError(f"{self.name}: not open")
        if self._fd is None:
            return await asyncio.to_thread(self._blocking_read)
        fd = self._fd
        woke = False
        while True:
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                data = b""
            except OSError as exc:
                # A pty whose other end closed reports EIO: the link is gone.
                raise TransportError(f"{self.name}: read failed: {exc}") from None
            if data:
                return data
            # A raw tty with VMIN=0 reads b"" when empty; b"" right after the fd polled
            # readable is a hangup.
            if woke:
                raise TransportError(f"{self.name}: end of stream (hangup)")
            await self._wait(fd, writable=False)
            woke = True

    def _blocking_read(self) -> bytes:
        # Bound to this link's port: a thread still reading when the port task connects again
        # must end, not read the next link's bytes.
        ser = self._ser
        while not self._closed and self._ser is ser:
            try:
                data: bytes = ser.read(max(1, ser.in_waiting))
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                raise TransportError(f"{self.name}: read failed: {exc}") from None
            if data:
                return data
        raise TransportError(f"{self.name}: closed")

    async def send(self, data: bytes) -> None:
        if self._ser is None or self._closed:
            raise TransportError(f"{self.name}: not open")
        if self._fd is None:
            try:
                await asyncio.to_thread(self._ser.write, data)
            except (serial.SerialException, OSError) as exc:
                raise TransportError(f"{self.name}: write failed: {exc}") from None
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await self._wait(self._fd, writable=True)
                continue
            except OSError as exc:
                raise TransportError(f"{self.name}: write failed: {exc}") from None
            view = view[written:]

    async def _wait(self, fd: int, writable: bool) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        add, remove = (
            (loop.add_writer, loop.remove_writer)
            if writable
            else (loop.add_reader, loop.remove_reader)
        )
        add(fd, wake)
        try:
            await ready
        finally:
            remove(fd)
        if self._closed:
            raise TransportError(f"{self.name}: closed")

    async def close(self) -> None:
        self._closed = True
        ser, self._ser, self._fd = self._ser, None, None
        if ser is not None:
            try:
                await asyncio.to_thread(ser.close)
            except (serial.SerialException, OSError) as exc:
                if getattr(exc, "errno", None) not in (errno.EIO, errno.EBADF):
                    raise TransportError(f"{self.name}: close failed: {exc}") from None
