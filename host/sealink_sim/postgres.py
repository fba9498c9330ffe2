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
import tempfile
import time
from pathlib import Path
from types import TracebackType

from sealink.errors import FleetError

from sealink_sim.loopback import accepts, free_port

__all__ = ["PG_BIN", "PostgresCluster"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian 12's postgresql (15)
_PORT_ATTEMPTS = 5
_DATABASE = "sealink"


class PostgresCluster:
    """A real PostgreSQL server with its own data dir, on 127.0.0.1:port."""

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
        self.bin_dir = bin_dir
        self._owns_workdir = workdir is None
        # Not under pytest's tmp_path: that is 0700 root, which the `postgres` user cannot enter.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sealink-postgres-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or 0
        self._fixed_port = port is not None
        self.start_timeout_s = start_timeout_s
        self._user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={self._user} dbname={_DATABASE}"

    @property
    def url(self) -> str:
        return f"postgresql://{self._user}@127.0.0.1:{self.port}/{_DATABASE}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

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

    def start(self) -> PostgresCluster:
        """Start (initdb first if new; a restart keeps the port) and create the database."""
        if self.running:
            return self
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        attempts = 1 if self._fixed_port or self.port else _PORT_ATTEMPTS
        for _ in range(attempts):
            if not self.port:
                self.port = free_port()
            if self._spawn():
                self._create_database()
                return self
            if not self._fixed_port:
                self.port = 0
        raise FleetError(
            f"postgres did not accept connections on 127.0.0.1:{self.port} within "
            f"{self.start_timeout_s} s; see {self.log_path}"
        )

    def _spawn(self) -> bool:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
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
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if accepts(self.port) and self._ready():
                return True
            time.sleep(0.05)
        self.kill()
        return False

    def _ready(self) -> bool:
        done = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    def _create_database(self) -> None:
        with contextlib.suppress(FleetError):  # it exists after a restart
            self._run(
                "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self._user, _DATABASE
            )

    def database(self, name: str) -> str:
        """A new, empty database of this cluster (one per test); returns its DSN."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self._user, name)
        return f"host=127.0.0.1 port={self.port} user={self._user} dbname={name}"

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (SIGINT): running transactions are rolled back, the rest is on disk."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL of the postmaster and its backends: a crash."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def __enter__(self) -> PostgresCluster:
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
        return f"<PostgresCluster 127.0.0.1:{self.port} {state} log={self.log_path}>"
