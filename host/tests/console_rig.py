"""Shared by the console tests: `sealink console` prepared and started as a user would (its own
process), and Debian's headless Chromium driven by Playwright. The `console` fixture (conftest)
starts one per test. The names are those they had in test_console, kept so that moving them
here changed no test."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from conftest import GatewayFiles, sealink
from playwright.async_api import Browser, Page, async_playwright
from sealink.approvals import ACTIONS, ApproverKey
from sealink_sim.broker import Mosquitto

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
    tmp_path: Path,
    files: GatewayFiles,
    broker: Mosquitto,
    approver: bool,
    extra: str = "",
    tables: str = "",
) -> Path:
    """The console's TOML; with `approver`, the console may change seals; `extra`: more lines
    of its [console] table; `tables`: more tables (a [fleet])."""
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

{tables}
"""
    )
    return config


def _prepare(
    tmp_path: Path,
    files: GatewayFiles,
    broker: Mosquitto,
    approver: bool,
    extra: str = "",
    tables: str = "",
) -> Path:
    """The console's files, made with its own commands as an operator would."""
    config = _write_config(tmp_path, files, broker, approver, extra, tables)
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


@contextlib.contextmanager
def started(
    tmp_path: Path,
    files: GatewayFiles,
    broker: Mosquitto,
    test: str,
    approver: bool = False,
    tables: str = "",
    extra: str = "",
) -> Iterator[ConsoleRig]:
    """`sealink console` prepared (_prepare) and running, its screenshots' folder made for
    `test` (its name)."""
    config = _prepare(tmp_path, files, broker, approver, extra, tables)
    shots = ARTIFACTS / test
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    print(f"console screenshots: {shots}")
    process, url = _start(config)
    rig = ConsoleRig(config, url, process, shots)
    try:
        yield rig
    finally:
        _stop(rig.process, rig.config.with_name("console.log"))


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
