"""Loopback ports for the private services the rig starts (Mosquitto, swtpm)."""

from __future__ import annotations

import socket

__all__ = ["accepts", "free_port"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 when asked (a service may still lose it to another
    process: the callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    """Something listens on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
