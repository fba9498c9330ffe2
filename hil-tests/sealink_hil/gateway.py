"""The gateway service under test, as the separate process it is in production.

    sealink keys init --config gateway.toml
    sealink ledger init --config gateway.toml
    sealink devices add DEVICE --key-file DEVICE.key --config gateway.toml
    sealink run --config gateway.toml          (through sealink_hil.clockshift)

`kill()` is SIGKILL (a crash: whatever was not committed is gone); `start()` again runs on the
same ledger and key. `jump_clock()` steps the service's wall clock while it runs.

The ledger, the gateway key and the link key store live in `state_dir`. For an emulated board
that is the test's own folder; a bench board keeps its history from test to test and run to
run, so its gateway keeps one ledger for it too (`--hil-state`): a fresh ledger would meet a
seal that is ahead of it, which the gateway must refuse (SPEC §5: "STATUS: device acked beyond
the ledger").
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from sealink.config import ack_key_beside

__all__ = ["HostError", "HostProcess"]

_READY_LINE = "gateway started"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0


class HostError(AssertionError):
    """The gateway failed to start or to do what the test asked; the message names its log."""


class HostProcess:
    def __init__(
        self,
        workdir: Path,
        *,
        broker_port: int,
        log_path: Path,
        state_dir: Path | None = None,
        gateway_id: str = "gw-hil",
        prefix: str = "sealink",
        ack_key_tpm: str | None = None,
    ) -> None:
        self.workdir = workdir
        # The fleet's registry key (SPEC §11.6, `follow_fleet`): with it the gateway applies
        # the fleet's registry messages ([fleet] public_key).
        self.fleet_key: bytes | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir or workdir
        # The gateway key and the seals' link keys live here: owner-only, like the files.
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.broker_port = broker_port
        self.log_path = log_path
        self.gateway_id = gateway_id
        self.prefix = prefix
        self.config_path = workdir / "gateway.toml"
        self.key_path = self.state_dir / "gateway.key"
        self.link_keys_path = self.state_dir / "link-keys"
        # A key in a TPM (a TCTI) lives as long as that TPM: a test's swtpm, so its blob stays
        # in the test's folder, not in a bench board's lasting state.
        self.ack_key_tpm = ack_key_tpm
        self.ack_key_path = ack_key_beside(
            (workdir if ack_key_tpm else self.state_dir) / self.key_path.name
        )
        self.ledger_path = self.state_dir / "ledger.sqlite"
        # A ledger that does not exist yet holds nothing: no need to ask the CLI what it holds.
        self.fresh = not self.ledger_path.exists()
        self.clock_file = workdir / "clock-offset-s"
        self.clock_offset_s = 0.0
        self.ports: list[str] = []
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._write_config()

    # -- setup through the real CLI -------------------------------------------------------

    def _write_config(self) -> None:
        ports = "".join(f"\n[[ports]]\nurl = {json.dumps(url)}\n" for url in self.ports)
        tpm = f"ack_key_tpm = {json.dumps(self.ack_key_tpm)}\n" if self.ack_key_tpm else ""
        fleet = f'\n[fleet]\npublic_key = "{self.fleet_key.hex()}"\n' if self.fleet_key else ""
        self.config_path.write_text(
            f"[gateway]\nid = {json.dumps(self.gateway_id)}\n"
            f"key_file = {json.dumps(str(self.key_path))}\n"
            f"link_keys = {json.dumps(str(self.link_keys_path))}\n"
            f"ack_key_file = {json.dumps(str(self.ack_key_path))}\n{tpm}"
            f"ledger = {json.dumps(str(self.ledger_path))}\n\n"
            f'[mqtt]\nhost = "127.0.0.1"\nport = {self.broker_port}\nprefix = "{self.prefix}"\n'
            # Reconnect fast: a broker restart is a fault the suite injects on purpose.
            "reconnect_min_s = 0.1\nreconnect_max_s = 1.0\n"
            f'{ports}{fleet}\n[log]\nlevel = "info"\n'
        )

    def cli(self, *args: str, config: bool = True) -> str:
        """Run `sealink ARGS --config ...` (without --config: `config=False`); its output goes
        to the host log as well."""
        with_config = ("--config", str(self.config_path)) if config else ()
        result = subprocess.run(
            [sys.executable, "-m", "sealink.cli", *args, *with_config],
            capture_output=True,
            timeout=60,
            check=False,
        )
        with self.log_path.open("ab") as log:
            log.write(f"$ sealink {' '.join(args)}\n".encode() + result.stderr)
        if result.returncode != 0:
            raise HostError(
                f"sealink {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}; host log: {self.log_path}"
            )
        return result.stdout.decode()

    def init_keys(self) -> None:
        """The gateway's keys, made once per state folder: a bench gateway keeps its identity.
        `keys init` makes whichever is missing (the acknowledgement key of an older folder).
        Its ledger too: only `ledger init` makes one."""
        if not (self.key_path.exists() and self.ack_key_path.exists()):
            self.cli("keys", "init")
        if not self.ledger_path.exists():
            self.cli("ledger", "init")

    def public_key_pem(self) -> bytes:
        return self.cli("keys", "show", "--format", "pem").encode()

    def add_device(self, device_id: str, key: bytes, seal_key: bytes, port_url: str) -> None:
        """Register the device (unless this ledger already has it, with its link key in the
        key store) and listen on its port."""
        known = [] if self.fresh else [r for r in self.devices() if r["device"] == device_id]
        if not known or not known[0]["link_key"]:
            key_file = self.workdir / f"{device_id}.key"
            key_file.touch(mode=0o600)
            key_file.write_text(key.hex())
            # --replace: a ledger that knows the seal but lost its key keeps its history.
            replace = ["--replace"] if known else []
            self.cli(
                "devices",
                "add",
                device_id,
                "--key-file",
                str(key_file),
                "--seal-key",
                seal_key.hex(),
                *replace,
            )
        self.listen(port_url)

    def follow_fleet(self, fleet_key: bytes) -> None:
        """Apply the registry messages this fleet key signs (from the next start)."""
        self.fleet_key = fleet_key
        self._write_config()

    def listen(self, port_url: str) -> None:
        """Serve the board on this port too (from the next start)."""
        self.ports.append(port_url)
        self._write_config()

    def enrol(self, device_id: str, authority_key: Path) -> None:
        """Enrol the device with this gateway (SPEC §5.11) as a site does: the authority
        certifies the gateway's acknowledgement key, the gateway keeps the certificate and
        hands it to the seal at its next session."""
        ack_key = json.loads(self.cli("keys", "show"))["ack_key"]
        cert = self.workdir / f"{device_id}.cert"
        self.cli(
            "authority",
            "certify",
            "--key",
            str(authority_key),
            "--device",
            device_id,
            "--gateway-key",
            ack_key,
            "--out",
            str(cert),
            config=False,
        )
        self.cli("devices", "enrol", device_id, str(cert))

    def devices(self) -> list[dict[str, Any]]:
        """`sealink devices list`: device, last_counter, quarantined, ..."""
        return [json.loads(line) for line in self.cli("devices", "list").splitlines() if line]

    def ledger_counter(self, device_id: str) -> int:
        """L: the newest counter the ledger holds for the device (0: none)."""
        for row in self.devices():
            if row["device"] == device_id:
                return int(row.get("last_counter") or 0)
        return 0

    def events(self, device: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        """What the ledger stored (`sealink events list`): device, counter, received_ms, hash."""
        args = ["events", "list", "--json", "--since", str(since)]
        if device is not None:
            args += ["--device", device]
        return [json.loads(line) for line in self.cli(*args).splitlines() if line]

    def unpublished(self, device: str, above: int = 0) -> int:
        """Events of `device` past counter `above` stored but not yet PUBACKed: the backlog.

        No CLI command shows the outbox, so this reads the ledger read-only, as an operator's
        `sqlite3 -readonly` would: the gateway keeps writing, nothing here can disturb it.
        """
        uri = f"{self.ledger_path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
            row = db.execute(
                # The events' own rows, not their JSON companions (SPEC §11.2).
                "SELECT COUNT(*) FROM outbox WHERE published_ms IS NULL AND device = ? "
                "AND counter > ? AND topic LIKE '%/events'",
                (device, above),
            ).fetchone()
        return int(row[0])

    def issue_permit(self, device_id: str, count: int, valid_for_s: int = 86400) -> str:
        return self.cli(
            "permits", "issue", device_id, "--count", str(count), "--valid-for", str(valid_for_s)
        )

    # -- the service process --------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> HostProcess:
        if self.running:
            return self
        self.clock_file.write_text(repr(self.clock_offset_s))
        env = dict(os.environ)
        offset = self.log_mark()
        self._log = self.log_path.open("ab")
        self._log.write(f"--- sealink run (start {self.starts + 1}) ---\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sealink_hil.clockshift",
                str(self.clock_file),
                "run",
                "--config",
                str(self.config_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.starts += 1
        self.wait_for_log(_READY_LINE, offset, _START_TIMEOUT_S)
        return self

    def log_mark(self) -> int:
        """Where the host log ends now: `wait_for_log` looks only at what comes after."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def wait_for_log(self, text: str, offset: int, timeout_s: float) -> str:
        """Wait for a log line containing `text` after `offset`; return that line."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                for line in log.read().decode(errors="replace").splitlines():
                    if text in line:
                        return line
            if not self.running:
                raise HostError(f"sealink run exited before '{text}'; host log: {self.log_path}")
            if time.monotonic() > deadline:
                raise HostError(f"no '{text}' within {timeout_s} s; host log: {self.log_path}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the gateway crashes with whatever it had in memory."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: the clean shutdown a service manager does."""
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.write(f"--- sealink run ended ({sig.name}) ---\n".encode())
            self._log.close()
            self._log = None

    def jump_clock(self, offset_s: float) -> None:
        """Step the running service's wall clock by `offset_s` (cumulative, like NTP steps)."""
        self.clock_offset_s += offset_s
        text = repr(self.clock_offset_s)
        self.clock_file.write_text(text)
        applied = self.clock_file.with_name(self.clock_file.name + ".applied")
        deadline = time.monotonic() + 10
        while not (applied.exists() and applied.read_text() == text):
            if not self.running:
                return  # applied at the next start, from the same file
            if time.monotonic() > deadline:
                raise HostError(f"the clock step to {text} s was never applied; {self.log_path}")
            time.sleep(0.005)
