"""A private PostgreSQL cluster on a loopback port, for the fleet tests, the demo and benchmarks.

Like the Mosquitto fixture: its own directory (a fresh `initdb` cluster, its log, and the unix
socket directory inside the data directory, so it never touches /var/run/postgresql), its own
port on 127.0.0.1, trust authentication for local connections only. `kill()` is SIGKILL of the
postmaster (a crash: PostgreSQL recovers from its WAL at the next `start()`).

    with PostgresCluster() as pg:
        conn = psycopg.connect(pg.dsn)

PostgreSQL refuses to run as root: as root the cluster belongs to the `postgres` user (Debian's
package creates it) and the server runs as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from sealink.errors import FleetError

from sealink_sim.loopback import LoopbackServer

__all__ = ["PG_BIN", "PostgresCluster"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian 12's postgresql (15)
_DATABASE = "sealink"


class PostgresCluster(LoopbackServer):
    """A real PostgreSQL server with its own data dir, on 127.0.0.1:port. `stop()` is the fast
    shutdown (SIGINT): running transactions are rolled back, the rest is on disk; `kill()` is
    a crash, recovered from the WAL at the next start."""

    name = "postgres"
    error = FleetError
    stop_signal = signal.SIGINT
    stop_timeout_s = 30.0
    log_name = "postgres.log"

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        bin_dir: Path = PG_BIN,
        start_timeout_s: float = 30.0,
    ) -> None:
        if not (bin_dir / "initdb").exists():
            raise FleetError(
                f"{bin_dir}/initdb not found: install postgresql (apt install postgresql)"
            )
        # By default a temp dir of its own (sealink-postgres-*), not under pytest's tmp_path:
        # that is 0700 root, which the `postgres` user cannot enter.
        super().__init__(workdir, port, start_timeout_s)
        self.bin_dir = bin_dir
        self._user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={self._user} dbname={_DATABASE}"

    @property
    def url(self) -> str:
        return f"postgresql://{self._user}@127.0.0.1:{self.port}/{_DATABASE}"

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            user=self._user,
        )
        if done.returncode != 0:
            raise FleetError(f"{args[0]} failed: {done.stderr.strip() or done.stdout.strip()}")

    def _initdb(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.workdir, self._user, self._user)
        self._run(
            "initdb", "-D", str(self.data_dir), "-A", "trust", "-U", self._user, "-E", "UTF8",
            "--no-locale",
        )  # fmt: skip

    def _prepare(self) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"), "-D", str(self.data_dir),
                    "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                    "-c", f"unix_socket_directories={self.data_dir}",
                    "-c", "max_connections=50",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=self._user,
            )  # fmt: skip

    def _ready(self) -> bool:
        done = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    def _started(self) -> None:
        with contextlib.suppress(FleetError):  # it exists after a restart
            self._run(
                "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self._user, _DATABASE
            )

    def database(self, name: str) -> str:
        """A new, empty database of this cluster (one per test); returns its DSN."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self._user, name)
        return f"host=127.0.0.1 port={self.port} user={self._user} dbname={name}"
