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

import os
import pwd
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sealink.errors import BrokerError

from sealink_sim.loopback import LoopbackServer

__all__ = ["MOSQUITTO", "BrokerTls", "Mosquitto"]

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"  # in the mosquitto package too


@dataclass(frozen=True)
class BrokerTls:
    """The broker's TLS listener: its certificate and key, and the CA its clients' certificates
    must chain to (when `require_certificate`)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


class Mosquitto(LoopbackServer):
    """A real Mosquitto process with its own config, data dir and log, on 127.0.0.1.
    `stop()` is SIGTERM: Mosquitto saves its persistence file first; `kill()` loses whatever
    was not yet autosaved."""

    name = "mosquitto"
    error = BrokerError
    log_name = "mosquitto.log"

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
        super().__init__(workdir, port, start_timeout_s)
        self.tls = tls
        self.users = dict(users) if users is not None else None
        self.acl_file = Path(acl_file) if acl_file is not None else None
        self.executable = executable
        self.autosave_s = autosave_s

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def password_path(self) -> Path:
        return self.workdir / "passwd"

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

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._write_config()  # each attempt: the port is in it
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [self.executable, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
