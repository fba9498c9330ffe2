"""The gateway as a systemd service: tools/install.sh into a temporary root, the unit checked by
systemd-analyze, and a real `sealink run` telling a notify socket it is ready, pinging its
watchdog and reloading its ports on SIGHUP without dropping a session."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DEVICE, GatewayFiles, run
from sealink.sdnotify import Notifier
from sealink_sim.broker import Mosquitto
from sealink_sim.ptylink import PtyLink, open_pty_link
from sealink_sim.simdevice import SimDevice

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "tools" / "sealink.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_allows_usb_and_on_board_uarts_and_is_a_notify_service_with_a_watchdog() -> None:
    unit = _unit_settings(UNIT.read_text())
    allowed = {rule.split()[0] for rule in unit["DeviceAllow"]}
    assert {"char-ttyUSB", "char-ttyACM", "char-ttyAMA", "char-ttyS"} <= allowed
    assert unit["DevicePolicy"] == ["closed"]
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] and unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["ExecStart"][0].startswith("/usr/local/bin/sealink run ")
    # the groups of DeviceAllow=char-ttyUSB/ttyACM exist only once their drivers are loaded
    assert "modprobe@usbserial.service" in " ".join(unit["Wants"] + unit["After"])


# install.sh --------------------------------------------------------------------------------


def _fresh_root(root: Path) -> None:
    """What a freshly imaged Raspberry Pi OS holds of users and groups (and no sealink)."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:pi\ntss:x:109:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\ndialout:*::pi\ntss:!::\n")
    for name in ("shadow", "gshadow"):
        os.chmod(etc / name, 0o640)


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    # The staged root holds only what install.sh put there, not systemd's own units (the
    # targets the unit is ordered against): only the errors of sealink.service itself count.
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--recursive-errors=no", f"--root={root}", "sealink.service"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )


def _install(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "install", f"DESTDIR={root}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def _passwd(root: Path, name: str) -> list[str]:
    lines = (root / "etc" / "passwd").read_text().splitlines()
    return [line for line in lines if line.startswith(f"{name}:")]


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh adds a user and chowns: needs root")
@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="no systemd-analyze on this machine")
@pytest.mark.skipif(shutil.which("useradd") is None, reason="no useradd (shadow) here")
def test_make_install_into_a_temporary_root_makes_a_service_that_systemd_accepts(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    _fresh_root(root)
    # A real system has /bin/kill (procps), which the unit's ExecReload runs.
    (root / "bin").mkdir()
    shutil.copy2("/bin/kill", root / "bin" / "kill")
    unit = root / "etc" / "systemd" / "system" / "sealink.service"
    unit.parent.mkdir(parents=True)
    shutil.copy(UNIT, unit)
    refused = _verify(root)  # the unit alone: its command is not installed
    assert refused.returncode != 0 and "/usr/local/bin/sealink" in refused.stderr, refused
    unit.unlink()

    host_users = Path("/etc/passwd").read_text()
    done = _install(root)
    assert done.returncode == 0, done.stdout + done.stderr
    verified = _verify(root)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "sealink.service" not in verified.stderr, verified.stderr

    [user] = _passwd(root, "sealink")
    _, _, uid, gid, _, home, shell = user.split(":")
    assert home == "/var/lib/sealink" and shell in ("/usr/sbin/nologin", "/bin/false")
    groups = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in (root / "etc" / "group").read_text().splitlines()
    }
    assert "sealink" in groups["dialout"] and "sealink" in groups["tss"]
    assert Path("/etc/passwd").read_text() == host_users  # the staged root's users only
    for path, mode in (
        ("etc/sealink", 0o700),
        ("var/lib/sealink", 0o700),
        ("etc/sealink/sealink.toml", 0o600),
    ):
        info = (root / path).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, int(uid), int(gid))

    link = root / "usr" / "local" / "bin" / "sealink"
    assert os.readlink(link) == "/opt/sealink/bin/sealink"
    script = root / "opt" / "sealink" / "bin" / "sealink"
    assert script.read_text().splitlines()[0] == "#!/opt/sealink/bin/python"
    assert str(root) not in (root / "opt" / "sealink" / "bin" / "activate").read_text()
    python = root / "opt" / "sealink" / "bin" / "python"
    help_done = subprocess.run(
        [str(python), "-m", "sealink.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert help_done.returncode == 0 and "--config" in help_done.stdout, help_done.stderr
    assert "Type=notify" in unit.read_text()

    # Again, as an upgrade: the site's config stays, the user is not added twice.
    config = root / "etc" / "sealink" / "sealink.toml"
    config.write_text(config.read_text() + "# edited on site\n")
    again = _install(root)
    assert again.returncode == 0, again.stdout + again.stderr
    assert config.read_text().endswith("# edited on site\n")
    assert len(_passwd(root, "sealink")) == 1
    assert _verify(root).returncode == 0


def test_install_refuses_a_root_without_users_and_says_why(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "tools" / "install.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DESTDIR": str(tmp_path)},
    )
    assert done.returncode == 1
    assert done.stderr.startswith("install.sh: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "opt").exists()


# sd_notify -----------------------------------------------------------------------------------


def test_the_notifier_speaks_only_for_the_process_systemd_watches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@sealink-test")
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environ()
    assert notifier.watchdog_interval_s == 2.0
    # its children (the MQTT publisher) inherit no socket to speak for the service with
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    monkeypatch.setenv("NOTIFY_SOCKET", "@sealink-test")
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier.from_environ().watchdog_interval_s is None
    assert Notifier.from_environ().watchdog_interval_s is None  # nothing left: not under systemd
    Notifier.from_environ().notify(READY=1)  # and then it is silent


@contextlib.contextmanager
def _notify_socket(kind: str) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket as systemd's manager listens on, and $NOTIFY_SOCKET naming it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    with contextlib.ExitStack() as stack:
        stack.enter_context(sock)
        if kind == "abstract":
            name = f"sealink-test-{os.getpid()}-{id(sock)}"
            sock.bind("\0" + name)
            yield sock, "@" + name
        else:
            # a short directory: AF_UNIX paths are limited to 107 bytes
            folder = stack.enter_context(tempfile.TemporaryDirectory(dir="/tmp"))
            path = os.path.join(folder, "notify")
            sock.bind(path)
            yield sock, path


class _Notifications:
    """What the service told the socket, one dict per datagram."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received: list[dict[str, str]] = []

    async def next_where(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float, what: str
    ) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = await loop.sock_recv(self.sock, 4096)
                    message = dict(line.split("=", 1) for line in data.decode().splitlines())
                    self.received.append(message)
                    if predicate(message):
                        return message
        except TimeoutError:
            raise AssertionError(f"no {what} in {timeout} s; got {self.received}") from None


class _Log:
    """The JSON log lines of a `sealink run --log-json` subprocess, as they come."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace")
            self.text.append(text)
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(text))
            async with self._changed:
                self._changed.notify_all()

    async def until_closed(self) -> None:
        """Until the process closed its stderr (it has exited), or 10 s."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), 10)

    def where(self, msg: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            line
            for line in self.lines
            if line.get("msg") == msg and all(line.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(self, msg: str, timeout: float = 20, **fields: Any) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: bool(self.where(msg, **fields)))
        except TimeoutError:
            output = "".join(self.text)
            raise AssertionError(f"no log {msg!r} {fields} in {timeout} s:\n{output}") from None
        return self.where(msg, **fields)[-1]


def _write_config(
    path: Path, files: GatewayFiles, broker: Mosquitto, ports: list[str], level: str = "info"
) -> None:
    sections = "".join(f'\n[[ports]]\nurl = "{url}"\n' for url in ports)
    path.write_text(
        f"""
[gateway]
id = "gw-service"
key_file = "{files.key_file}"
ledger = "{files.ledger_path}"
link_keys = "{files.link_keys}"

[mqtt]
port = {broker.port}
prefix = "sealink-test"
{sections}
[log]
level = "{level}"
"""
    )


@contextlib.asynccontextmanager
async def _sealink_run(config: Path, env: dict[str, str]) -> AsyncIterator[tuple[Any, _Log]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sealink.cli",
        "run",
        "--config",
        str(config),
        "--log-json",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
        cwd=Path(__file__).parent,
    )
    assert proc.stderr is not None
    log = _Log(proc.stderr)
    try:
        yield proc, log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await log.until_closed()
    assert not any("Traceback" in line for line in log.text), "".join(log.text)


@pytest.mark.parametrize("kind", ["abstract", "path"])
def test_sealink_run_says_ready_once_its_port_and_broker_are_up_and_pings_the_watchdog(
    kind: str, tmp_path: Path, files: GatewayFiles, broker: Mosquitto, pty_link: PtyLink
) -> None:
    config = tmp_path / "sealink.toml"
    _write_config(config, files, broker, [pty_link.host_path])

    async def body() -> int | None:
        with _notify_socket(kind) as (sock, address):
            notes = _Notifications(sock)
            env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
            async with _sealink_run(config, env) as (proc, log):
                ready = await notes.next_where(lambda m: "READY" in m, 30, "READY=1")
                assert ready["READY"] == "1"
                assert ready["STATUS"].startswith("1/1 ports open"), ready
                assert ready["STATUS"].endswith("broker connected"), ready
                await log.wait_for("gateway started")
                for _ in range(2):
                    await notes.next_where(lambda m: m.get("WATCHDOG") == "1", 10, "WATCHDOG=1")
                proc.send_signal(signal.SIGTERM)
                await notes.next_where(lambda m: "STOPPING" in m, 20, "STOPPING=1")
                async with asyncio.timeout(30):
                    return await proc.wait()

    assert run(body(), timeout=90) == 0


def _holds_open(pid: int, path: str) -> bool:
    """Whether process `pid` has `path` open (a port it serves)."""
    fds = Path(f"/proc/{pid}/fd")
    return any(os.path.realpath(fd) == os.path.realpath(path) for fd in fds.iterdir())


def test_sighup_opens_an_added_port_keeps_the_running_session_and_refuses_a_broken_config(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto
) -> None:
    second = "seal-t-0002"
    files.add_device(second)
    config = tmp_path / "sealink.toml"

    async def body() -> None:
        with (
            open_pty_link() as link_a,
            open_pty_link() as link_b,
            _notify_socket("path") as (sock, address),
        ):
            notes = _Notifications(sock)
            _write_config(config, files, broker, [link_a.host_path])
            async with (
                _sealink_run(config, {"NOTIFY_SOCKET": address}) as (proc, log),
                SimDevice(DEVICE, files.device_keys[DEVICE], link_a.device_end) as seal_a,
            ):
                await notes.next_where(lambda m: "READY" in m, 30, "READY=1")
                await asyncio.wait_for(seal_a.welcomed.wait(), 20)
                await seal_a.stamp(3)
                await seal_a.wait_acked(3, timeout=20)

                # a port added, the log level raised
                _write_config(config, files, broker, [link_a.host_path, link_b.host_path], "debug")
                proc.send_signal(signal.SIGHUP)
                reloaded = await log.wait_for("reloaded")
                assert reloaded["added"] == [link_b.host_path] and reloaded["removed"] == []
                assert reloaded["log_level"] == "debug"
                reloading = await notes.next_where(lambda m: "RELOADING" in m, 10, "RELOADING=1")
                assert int(reloading["MONOTONIC_USEC"]) > 0
                await notes.next_where(lambda m: "READY" in m, 10, "READY=1 after the reload")
                async with SimDevice(second, files.device_keys[second], link_b.device_end) as b:
                    await asyncio.wait_for(b.welcomed.wait(), 20)
                    await b.stamp(2)
                    await b.wait_acked(2, timeout=20)
                # the first seal's session went on: no new handshake, its records still acked
                await seal_a.stamp(3)
                await seal_a.wait_acked(6, timeout=20)
                assert len(log.where("session open", device=DEVICE)) == 1, log.text

                # a config that does not load: logged, the running one kept
                config.write_text(config.read_text().replace("[gateway]", "[gateway"))
                proc.send_signal(signal.SIGHUP)
                refused = await log.wait_for("reload refused, the running config is kept")
                assert "not valid TOML" in refused["why"]
                await seal_a.stamp(1)
                await seal_a.wait_acked(7, timeout=20)

                # a port removed: closed, the other kept
                _write_config(config, files, broker, [link_a.host_path])
                proc.send_signal(signal.SIGHUP)
                reloaded = await log.wait_for("reloaded", removed=[link_b.host_path])
                assert reloaded["added"] == []
                assert not _holds_open(proc.pid, link_b.host_path)
                assert _holds_open(proc.pid, link_a.host_path)
                await seal_a.stamp(1)
                await seal_a.wait_acked(8, timeout=20)
                assert len(log.where("session open", device=DEVICE)) == 1, log.text

                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(30):
                    assert await proc.wait() == 0

    run(body(), timeout=120)
    ledger = files.ledger()
    try:
        assert [e["counter"] for e in ledger.events(DEVICE)] == list(range(1, 9))
        assert [e["counter"] for e in ledger.events(second)] == [1, 2]
    finally:
        ledger.close()
