"""A software TPM 2.0 (swtpm) on loopback ports, for tests and benchmarks.

swtpm is a full TPM 2.0 (libtpms), not a mock: it makes its own seeds in its state folder, so
two of them are two different TPMs, and a key one made loads in no other. The TCTI reaches it
on `port` for commands and `port + 1` for control, as the TSS's swtpm TCTI expects.

    with SwTpm(tmp_path / "tpm") as tpm:
        key = TpmKey.create(tpm.tcti, path, "acknowledgement key")
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from sealink_sim.loopback import accepts

__all__ = ["SwTpm", "SwTpmError"]

_PORT_ATTEMPTS = 5
_SETUP = "swtpm is not installed: run `make setup` (Debian: apt-get install swtpm)"


class SwTpmError(RuntimeError):
    """swtpm is missing or did not come up; the message says which, and names its log."""


def _free_port_pair() -> int:
    """A port p with p + 1 free as well, on 127.0.0.1 (free when asked: swtpm may still lose
    it to another process, and start() then tries another)."""
    for _ in range(64):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if port >= 65535:
                continue
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise SwTpmError("no two consecutive free ports on 127.0.0.1")


class SwTpm:
    """One swtpm process with its own state folder and log, on 127.0.0.1."""

    def __init__(self, state_dir: Path, *, start_timeout_s: float = 10.0) -> None:
        self.state_dir = state_dir
        self.log_path = state_dir / "swtpm.log"
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> SwTpm:
        executable = shutil.which("swtpm")
        if executable is None:
            raise SwTpmError(_SETUP)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for _ in range(_PORT_ATTEMPTS):
            self.port = _free_port_pair()
            if self._started(executable):
                return self
        raise SwTpmError(
            f"swtpm did not start in {_PORT_ATTEMPTS} attempts; its log: {self.log_path}"
        )

    def _started(self, executable: str) -> bool:
        with self.log_path.open("ab") as log:
            self._proc = self._spawn(executable, log)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False  # most likely the port went to someone else meanwhile
            if accepts(self.port) and accepts(self.port + 1):
                return True
            time.sleep(0.02)
        self.stop()
        raise SwTpmError(f"swtpm did not listen in {self.start_timeout_s} s; log: {self.log_path}")

    def _spawn(self, executable: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                executable,
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.state_dir}",
                "--server",
                f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                # Powered on and TPM2_Startup sent by swtpm itself, as a platform's firmware
                # does before the OS gets its TPM.
                "--flags",
                "not-need-init,startup-clear",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> SwTpm:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
