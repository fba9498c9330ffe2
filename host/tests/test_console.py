"""`sealink console` in a real browser: Debian's headless Chromium driven by Playwright, the
console as a user starts it (`sealink console --config`, its own process), a real Mosquitto,
a running gateway and a simulated seal over a pty.

Screenshots of each step go to build/artifacts/console/<test>/ (printed by each test).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from conftest import DEVICE, GatewayFiles, PtyLink, run, running, sealink
from playwright.async_api import Browser, Page, async_playwright
from sealink.approvals import ACTIONS, ApproverKey
from sealink.config import PortConfig
from sealink_sim.broker import Mosquitto
from sealink_sim.simdevice import SimDevice
from sealproto import messages
from sealproto.messages import K_TYPE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "artifacts" / "console"
WAIT_MS = 15_000
PASSWORD = "correct horse battery"
APPROVER = "ops-console"
USERS = {"alice": "approver", "oscar": "operator", "vera": "viewer"}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (tools/setup-system.sh installs it)"
)


@dataclass
class ConsoleRig:
    config: Path
    url: str
    process: subprocess.Popen[str]
    shots: Path

    def audit(self) -> list[dict[str, object]]:
        done = sealink("console", "audit", "--json", "--config", str(self.config))
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]


def _approver(tmp_path: Path, files: GatewayFiles) -> str:
    """An approver key for the console, registered with the gateway (SPEC §11.5)."""
    key = ApproverKey.generate()
    key.save(tmp_path / "approver.key")
    ledger = files.ledger()
    try:
        ledger.add_approver(APPROVER, key.public_raw(), ACTIONS)
    finally:
        ledger.close()
    return f'approver = "{APPROVER}"\napprover_key_file = "approver.key"'


def _write_config(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto, approver: bool, extra: str = ""
) -> Path:
    """The console's TOML; with `approver`, the console may change seals; `extra`: more lines
    of its [console] table."""
    pub = tmp_path / "gw-test.pub.pem"
    pub.write_bytes(files.key.public_pem())
    config = tmp_path / "console.toml"
    config.write_text(
        f"""
[console]
listen = "127.0.0.1:0"
data_dir = "console-data"
secret_key_file = "console.secret"
{_approver(tmp_path, files) if approver else ""}
{extra}

[mqtt]
host = "127.0.0.1"
port = {broker.port}
prefix = "sealink-test"

[[gateways]]
id = "gw-test"
public_key = "{pub.name}"
"""
    )
    return config


def _prepare(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto, approver: bool, extra: str = ""
) -> Path:
    """The console's files, made with its own commands as an operator would."""
    config = _write_config(tmp_path, files, broker, approver, extra)
    done = sealink("console", "init", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "console.secret").stat().st_mode & 0o077 == 0
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    for name, role in USERS.items():
        done = sealink(
            "console", "user", "add", name, "--role", role,
            "--password-file", str(password), "--config", str(config),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    return config


def _start(config: Path) -> tuple[subprocess.Popen[str], str]:
    """`sealink console --config` in its own process, and the URL it printed once bound. Its
    log goes to `console.log` beside the config, named for a failing test to read; a pipe
    nobody reads would also stop the console once some 64 KB of log lines filled it."""
    log_path = config.with_name("console.log")
    print(f"console log: {log_path}")
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sealink.cli", "console", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=Path(__file__).parent,
        )
    assert process.stdout is not None
    line = process.stdout.readline()  # the console prints its URL once bound, or exits
    if "listening on " not in line:
        _stop(process, log_path)
        raise AssertionError(f"console did not start: {line!r}; log {log_path}")
    threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
    return process, line.rsplit(" ", 1)[1].strip()


def _drain(out: IO[str]) -> None:
    for _ in out:
        pass


def _stop(process: subprocess.Popen[str], log_path: Path) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    err = log_path.read_text(errors="replace")
    assert "Traceback" not in err, err


@pytest.fixture
def console(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto, request: pytest.FixtureRequest
) -> Iterator[ConsoleRig]:
    # Indirect parametrisation (True) gives the console an approver key (test_console_approvals).
    config = _prepare(tmp_path, files, broker, getattr(request, "param", False))
    shots = ARTIFACTS / request.node.name
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    print(f"console screenshots: {shots}")
    process, url = _start(config)
    rig = ConsoleRig(config, url, process, shots)
    try:
        yield rig
    finally:
        _stop(rig.process, rig.config.with_name("console.log"))


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def _login(page: Page, rig: ConsoleRig, name: str, password: str = PASSWORD) -> None:
    await page.goto(f"{rig.url}/login")
    await page.fill("#name", name)
    await page.fill("#password", password)
    await page.click("#login")


async def _shot(page: Page, rig: ConsoleRig, step: str) -> None:
    await page.screenshot(path=str(rig.shots / f"{step}.png"), full_page=True)


def _alarm(code: int) -> dict[int, int]:
    return {
        K_TYPE: messages.ALARM,
        messages.AL_CODE: code,
        messages.AL_TIME: 0,
        messages.AL_DETAIL: 0,
    }


def test_operator_logs_in_watches_impressions_and_acknowledges_a_forced_stamp(
    console: ConsoleRig, files: GatewayFiles, broker: Mosquitto, pty_link: PtyLink
) -> None:
    config = files.config(broker.port, ports=(PortConfig(pty_link.host_path),))

    async def body() -> None:
        async with (
            browser() as chromium,
            running(config),
            SimDevice(DEVICE, files.device_keys[DEVICE], pty_link.device_end) as sim,
        ):
            await asyncio.wait_for(sim.welcomed.wait(), 10)
            page = await chromium.new_page()
            await _login(page, console, "oscar", "not the password")
            await page.wait_for_selector("#error", timeout=WAIT_MS)
            assert "/login" in page.url
            await _shot(page, console, "01-wrong-password")
            await _login(page, console, "oscar")
            await page.wait_for_selector("#impressions", state="attached", timeout=WAIT_MS)
            await page.wait_for_selector(".live.on", timeout=WAIT_MS)
            await _shot(page, console, "02-logged-in")

            await sim.stamp(1, permit=7, operator=42, time_s=1_790_000_000)
            row = await page.wait_for_selector(
                f'tr.impression[data-device="{DEVICE}"][data-counter="1"]', timeout=WAIT_MS
            )
            text = await row.inner_text()
            for shown in ("impression", "7", "42", "verified", "gw-test"):
                assert shown in text, text
            await _shot(page, console, "03-live-impression")

            await page.click("text=Devices")
            await page.wait_for_selector(".live.on", timeout=WAIT_MS)
            await sim.send_status(ST_BATTERY=3712, ST_BACKLOG=0, ST_FREE=321)
            health = await page.wait_for_selector(
                f'#device-{DEVICE}:has-text("3712")', timeout=WAIT_MS
            )
            text = await health.inner_text()
            assert "online" in text and "321" in text and "simdevice" in text, text
            await _shot(page, console, "04-device-health")

            await page.click("text=Alarms")
            await page.wait_for_selector(".live.on", timeout=WAIT_MS)
            # A forced stamp, as the firmware makes one: a FORCED record, then ALARM FORCED_STAMP.
            await sim.stamp(1, kind=messages.KIND_FORCED)
            await sim.send_session(_alarm(messages.AL_FORCED_STAMP))
            alarm = await page.wait_for_selector(
                'tr.alarm:has-text("forced_stamp")', timeout=WAIT_MS
            )
            await _shot(page, console, "05-forced-stamp-alarm")
            assert "device" in await alarm.inner_text()  # raised by the seal itself (source)
            await page.click('tr.alarm:has-text("forced_stamp") .ack-button')
            acked = await page.wait_for_selector(
                'tr.alarm:has-text("forced_stamp") .by', timeout=WAIT_MS
            )
            assert await acked.inner_text() == "oscar"
            await _shot(page, console, "06-acknowledged")
            key = await page.get_attribute('tr.alarm:has-text("forced_stamp")', "data-key")

            # CSRF: the same session, the same form, without the token, is refused.
            refused = await page.request.post(
                f"{console.url}/alarms/ack", form={"key": key}, max_redirects=0
            )
            assert refused.status == 403

            await page.goto(f"{console.url}/search?device={DEVICE}")
            assert await page.locator("#results tr.impression").count() == 2
            await page.goto(f"{console.url}/search?device=no-such-seal")
            assert await page.locator("#results tr.impression").count() == 0
            await _shot(page, console, "07-search")

    run(body(), timeout=80)
    rows = console.audit()
    actions = [(r["user"], r["action"], r["outcome"]) for r in rows]
    assert ("oscar", "login", "failed") in actions
    assert ("oscar", "login", "ok") in actions
    assert ("oscar", "ack", "ok") in actions
    assert ("oscar", "ack", "refused") in actions, actions  # the POST without a CSRF token


def test_a_viewer_cannot_acknowledge_and_a_disabled_account_is_out(
    console: ConsoleRig, files: GatewayFiles, broker: Mosquitto
) -> None:
    async def body() -> None:
        async with browser() as chromium:
            page = await chromium.new_page()
            await _login(page, console, "vera")
            await page.wait_for_selector("#impressions", state="attached", timeout=WAIT_MS)
            (cookie,) = await page.context.cookies()
            assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict"), cookie
            headers = (await page.request.get(f"{console.url}/alarms")).headers
            assert "frame-ancestors 'none'" in headers["content-security-policy"], headers
            csrf = await page.get_attribute("main", "data-csrf")
            # The server checks the role, whatever the page shows: a well-formed POST with
            # the viewer's own CSRF token is refused.
            refused = await page.request.post(
                f"{console.url}/alarms/ack", form={"key": "gw-test:1", "csrf": csrf},
                max_redirects=0,
            )  # fmt: skip
            assert refused.status == 403
            permit = {"device": DEVICE, "count": "1", "csrf": csrf or ""}
            refused = await page.request.post(
                f"{console.url}/permits/issue", form=permit, max_redirects=0
            )
            assert refused.status == 403
            await _shot(page, console, "01-viewer")
            copied = await page.context.cookies()
            await page.click("#logout")
            await page.wait_for_selector("#login", timeout=WAIT_MS)
            await page.goto(f"{console.url}/alarms")
            assert page.url.endswith("/login"), page.url  # the session ended with the logout
            await page.context.add_cookies(copied)  # a copy of the cookie is of no use now
            await page.goto(f"{console.url}/alarms")
            assert page.url.endswith("/login"), page.url
            await _login(page, console, "vera")
            await page.wait_for_selector("#impressions", state="attached", timeout=WAIT_MS)
            done = await asyncio.to_thread(
                sealink, "console", "user", "disable", "vera", "--config", str(console.config)
            )
            assert done.returncode == 0, done.stderr
            await page.goto(f"{console.url}/alarms")
            assert page.url.endswith("/login"), page.url

    run(body(), timeout=60)
    actions = [(r["user"], r["action"], r["outcome"]) for r in console.audit()]
    assert ("vera", "ack", "refused") in actions, actions
    assert ("vera", "permit", "refused") in actions, actions
    assert ("vera", "logout", "ok") in actions, actions


def test_failed_logins_are_throttled_and_no_password_goes_on_the_command_line(
    console: ConsoleRig, tmp_path: Path
) -> None:
    async def body() -> None:
        async with browser() as chromium:
            page = await chromium.new_page()
            for _ in range(5):
                await _login(page, console, "alice", "wrong password!")
                await page.wait_for_selector("#error", timeout=WAIT_MS)
            await _login(page, console, "alice")  # the right one, too late
            error = await page.wait_for_selector("#error", timeout=WAIT_MS)
            assert "Too many" in await error.inner_text()

    run(body(), timeout=60)
    outcomes = [r["outcome"] for r in console.audit() if r["action"] == "login"]
    assert outcomes.count("failed") == 5 and outcomes[-1] == "refused", outcomes
    done = sealink("console", "user", "add", "eve", "--role", "viewer", "--password", "x",
                   "--config", str(console.config))  # fmt: skip
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr
    env = {**os.environ}
    done = subprocess.run(
        [sys.executable, "-m", "sealink.cli", "console", "user", "add", "eve", "--role",
         "viewer", "--config", str(console.config)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "--password-file" in done.stderr, done.stderr
