"""A raw TCP server in front of a serial port: a tiny ser2net, for `socket://` board URLs.

QA benches expose boards with ser2net (raw TCP or RFC 2217); the suite's own test of the
`--board serial:socket://HOST:PORT` path puts this bridge in front of an emulated board's pty.
One client at a time, as ser2net does; bytes are forwarded unchanged both ways.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Any

import serial

__all__ = ["TcpSerialBridge"]


class TcpSerialBridge:
    def __init__(self, serial_url: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.serial_url = serial_url
        self._server = socket.create_server((host, port))
        self.address = self._server.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tcp-bridge", daemon=True)
        self._port: Any = None

    @property
    def url(self) -> str:
        return f"socket://{self.address[0]}:{self.address[1]}"

    def start(self) -> TcpSerialBridge:
        self._port = serial.serial_for_url(self.serial_url, timeout=0)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)  # it polls the stop flag every 0.1 s
        self._server.close()
        if self._port is not None:
            self._port.close()

    def __enter__(self) -> TcpSerialBridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._server], [], [], 0.1)
            if not readable:
                continue
            client, _ = self._server.accept()
            with client:
                self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        serial_fd = self._port.fileno()
        while not self._stop.is_set():
            readable, _, _ = select.select([client, serial_fd], [], [], 0.1)
            if client in readable:
                data = client.recv(4096)
                if not data:
                    return  # the client went away; wait for the next one
                self._port.write(data)
            if serial_fd in readable:
                data = self._port.read(4096)
                if data:
                    with contextlib.suppress(OSError):
                        client.sendall(data)
