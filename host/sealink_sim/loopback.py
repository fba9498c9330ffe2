"""Loopback ports for the private services the rig starts (Mosquitto, PostgreSQL, swtpm), and
the life of such a service's process.

`LoopbackServer` is what Mosquitto and PostgresCluster share: a work dir of its own (removed on
close when the server made it), a port on 127.0.0.1 it picks and tries again elsewhere when
another process took it first, its log, `stop()` (the clean shutdown), `kill()` (a crash:
SIGKILL of its whole process group) and `restart()` on the same port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from sealink.errors import SealinkError

__all__ = ["LoopbackServer", "accepts", "free_port"]

_PORT_ATTEMPTS = 5


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


class LoopbackServer:
    """Subclasses say how to start their process (`_spawn`), what ready means beyond accepting
    connections (`_ready`), and what comes before the first start and after each one."""

    name: ClassVar[str]
    error: ClassVar[type[SealinkError]]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    stop_timeout_s: ClassVar[float] = 10.0
    log_name: ClassVar[str]

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None,
        port: int | None,
        start_timeout_s: float,
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"sealink-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or 0
        self._fixed_port = port is not None
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / self.log_name

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # what a subclass provides

    def _prepare(self) -> None:
        """Once before each start (e.g. a new data directory)."""

    def _spawn(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _ready(self) -> bool:
        return True

    def _started(self) -> None:
        """After each start that became ready."""

    # the life of the process

    def start(self) -> Self:
        """Start (or restart, on the same port) and return once it is ready."""
        if self.running:
            return self
        self._prepare()
        attempts = 1 if self._fixed_port or self.port else _PORT_ATTEMPTS
        for _ in range(attempts):
            if not self.port:
                self.port = free_port()
            self._proc = self._spawn()
            if self._wait_ready():
                self._started()
                return self
            if not self._fixed_port and (self._proc is None or self._proc.poll() is not None):
                self.port = 0  # most likely another process took the port: try another
        raise self.error(
            f"{self.name} did not accept connections on 127.0.0.1:{self.port} within "
            f"{self.start_timeout_s} s; see {self.log_path}"
        )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if accepts(self.port) and self._ready():
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def stop(self, timeout_s: float | None = None) -> None:
        """The server's clean shutdown (its `stop_signal`); SIGKILL if it takes too long."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL of the server and every process it started: a crash."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # started in a session of its own
        proc.wait()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} 127.0.0.1:{self.port} {state} log={self.log_path}>"
