"""`sealink console` in a real browser: Debian's headless Chromium driven by Playwright, the
console as a user starts it (`sealink console --config`, its own process), a real Mosquitto,
a running gateway and a simulated seal over a pty.

Screenshots of each step go to build/artifacts/console/<test>/ (printed by each test).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEVICE, GatewayFiles, PtyLink, run, running, sealink
from console_rig import CHROMIUM, WAIT_MS, ConsoleRig, _login, _shot, browser
from sealink.config import PortConfig
from sealink_sim.broker import Mosquitto
from sealink_sim.simdevice import SimDevice
from sealproto import messages
from sealproto.messages import K_TYPE

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (tools/setup-system.sh installs it)"
)


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
