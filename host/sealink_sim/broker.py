"""A private Mosquitto broker on a loopback port, for tests, the demo and benchmarks.

Each broker gets its own directory with a generated config, a persistence file and a log, so a
`stop()` followed by `start()` on the same object restarts it on the same port with its queued
QoS 1 messages (Mosquitto saves its database on a clean shutdown and every `autosave_s`).
`kill()` is SIGKILL: whatever was not yet saved is gone, as after a real crash.

    with Mosquitto() as broker:
        client.connect("127.0.0.1", broker.port)

By default the listener is plain TCP and anonymous. Keyword options make it a locked-down broker
as a site runs one: `tls` (a TLS listener, client certificates optionally required), `users`
(logins only; the password file is made with mosquitto_passwd) and `acl_file`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sealink.errors import BrokerError

from sealink_sim.loopback import accepts, free_port

__all__ = ["MOSQUITTO", "BrokerTls", "Mosquitto"]

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"  # in the mosquitto package too
_PORT_ATTEMPTS = 5


@dataclass(frozen=True)
class BrokerTls:
    """The broker's TLS listener: its certificate and key, and the CA its clients' certificates
    must chain to (when `require_certificate`)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


class Mosquitto:
    """A real Mosquitto process with its own config, data dir and log, on 127.0.0.1."""

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        autosave_s: int = 1,
        executable: str = MOSQUITTO,
        start_timeout_s: float = 10.0,
        tls: BrokerTls | None = None,
        users: Mapping[str, str] | None = None,
        acl_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if not Path(executable).exists():
            raise BrokerError(f"{executable} not found: install mosquitto (apt install mosquitto)")
        self.tls = tls
        self.users = dict(users) if users is not None else None
        self.acl_file = Path(acl_file) if acl_file is not None else None
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sealink-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.executable = executable
        self.autosave_s = autosave_s
        self.start_timeout_s = start_timeout_s
        self.port = port or 0
        self._fixed_port = port is not None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def password_path(self) -> Path:
        return self.workdir / "passwd"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _write_config(self) -> None:
        self.data_dir.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            *self._access_lines(),
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "persistence_file mosquitto.db",
            f"autosave_interval {self.autosave_s}",
            # A disconnected persistent session (the observer, the gateway) keeps its queue.
            "max_queued_messages 0",
            "max_inflight_messages 0",
            # Nagle on the broker side adds milliseconds to every small QoS 1 exchange.
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root Mosquitto would switch to the "mosquitto" user, who cannot write here.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def _access_lines(self) -> list[str]:
        lines = []
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {str(self.tls.require_certificate).lower()}",
            ]
        if self.users is None:
            lines.append("allow_anonymous true")
        else:
            self._write_passwords(self.users)
            lines += ["allow_anonymous false", f"password_file {self.password_path}"]
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        return lines

    def _write_passwords(self, users: Mapping[str, str]) -> None:
        if not Path(MOSQUITTO_PASSWD).exists():
            raise BrokerError(f"{MOSQUITTO_PASSWD} not found: install mosquitto")
        self.password_path.unlink(missing_ok=True)
        self.password_path.touch(mode=0o600)
        for user, password in users.items():
            done = subprocess.run(
                [MOSQUITTO_PASSWD, "-b", str(self.password_path), user, password],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if done.returncode != 0:
                raise BrokerError(f"mosquitto_passwd failed for {user}: {done.stderr.strip()}")

    def start(self) -> Mosquitto:
        """Start (or restart, on the same port) and return once it accepts connections."""
        if self.running:
            return self
        attempts = 1 if self._fixed_port or self.port else _PORT_ATTEMPTS
        for _ in range(attempts):
            if not self.port:
                self.port = free_port()
            self._write_config()
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [self.executable, "-c", str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            if self._wait_ready():
                return self
            if not self._fixed_port and self._proc.poll() is not None:
                self.port = 0  # most likely another process took the port: try another
        raise BrokerError(
            f"mosquitto did not accept connections on 127.0.0.1:{self.port} within "
            f"{self.start_timeout_s} s; see {self.log_path}"
        )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if accepts(self.port):
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """Clean shutdown (SIGTERM): Mosquitto saves its persistence file first."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: a broker crash; messages not yet autosaved are lost."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def restart(self) -> Mosquitto:
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

    def __enter__(self) -> Mosquitto:
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
        return f"<Mosquitto 127.0.0.1:{self.port} {state} log={self.log_path}>"
