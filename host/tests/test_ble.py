"""The gateway over BLE: bleak's public API on a bumble central (sealink.transport.blebumble),
a simulated seal as a bumble GATT peripheral (sealink_sim.bleseal), both on one in-process
virtual link; real HCI, L2CAP, ATT and GATT between them, a real Mosquitto behind.

No kernel Bluetooth exists here, so the system backend (BlueZ) is tested only for the error a
gateway without an adapter gives.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEVICE, GatewayFiles, run, running, until
from sealink.config import PortConfig
from sealink.errors import TransportError, TransportUnavailableError
from sealink.gateway.service import Gateway
from sealink.transport import open_transport
from sealink.transport.ble import BleTransport, advertises
from sealink.transport.blebumble import close_hosts
from sealink_sim.bleseal import BleSeal, advertising_data
from sealink_sim.broker import Mosquitto
from sealink_sim.observer import Observer
from sealproto.gatt import NAME_MAX

_links = itertools.count()
# These check what a machine without Bluetooth says; one with BlueZ would really scan.
_no_bluez = pytest.mark.skipif(
    Path("/run/dbus/system_bus_socket").exists(), reason="this machine has a D-Bus system bus"
)


def _link() -> str:
    # One virtual link per test: nothing from an earlier test's seals is heard.
    return f"test-ble-{next(_links)}"


def _port(link: str, device: str = DEVICE, **options: object) -> PortConfig:
    query = "".join(f"&{k}={v}" for k, v in options.items())
    return PortConfig(f"ble://{device}?backend=bumble&hci=virtual:{link}{query}", "ble")


async def _published(gateway: Gateway, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while await gateway.db(gateway.ledger.unpublished_count):
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("mtu", [23, 247])
def test_events_reach_mqtt_over_ble_at_both_mtus(
    mtu: int, files: GatewayFiles, broker: Mosquitto, observer: Observer
) -> None:
    link, count = _link(), 40

    async def body() -> BleSeal:
        async with (
            BleSeal(DEVICE, files.device_keys[DEVICE], link=link, mtu=mtu) as seal,
            running(files.config(broker.port, ports=(_port(link),))) as gateway,
        ):
            await asyncio.wait_for(seal.sim.welcomed.wait(), 20)
            assert seal.connection is not None and seal.connection.att_mtu == mtu
            await seal.sim.stamp(count)
            await seal.sim.wait_acked(count, timeout=30)
            stored = await gateway.db(lambda: list(gateway.ledger.events(DEVICE)))
            assert [e["event"] for e in stored] == seal.sim.journal
            await _published(gateway)
        await close_hosts()
        return seal

    seal = run(body())
    assert seal.connections == 1 and seal.unheard == 0
    # Both ways the stream went in chunks of at most ATT MTU - 3, full ones where there was
    # more (the host's frames, ACKs and the WELCOME, are all longer than 20 bytes, none 244).
    assert seal.largest_notification == mtu - 3
    assert seal.largest_write == 20 if mtu == 23 else seal.largest_write < mtu - 3
    assert seal.notified >= seal.notified_bytes / (mtu - 3)
    tally = observer.wait_for(DEVICE, count, timeout=15)
    assert (tally.verified, tally.invalid, tally.chain_breaks, tally.lost) == (count, 0, 0, 0)
    assert observer.problems == []


def test_a_disconnect_mid_transfer_reconnects_and_loses_nothing(
    seed: int, files: GatewayFiles, broker: Mosquitto, observer: Observer
) -> None:
    link, count = _link(), 120
    cut_after = 30 + seed % 40  # acked events before the seal drops the link

    async def body() -> BleSeal:
        async with (
            BleSeal(DEVICE, files.device_keys[DEVICE], link=link, mtu=23) as seal,
            running(files.config(broker.port, ports=(_port(link),))) as gateway,
        ):
            sim = seal.sim
            await asyncio.wait_for(sim.welcomed.wait(), 20)
            sim.record(count)
            await sim.send_backlog()
            await sim.wait_acked(cut_after, timeout=30)
            assert sim.acked < count, "the transfer ended before the cut"
            await seal.drop()
            await until(lambda: seal.connections == 2, 20, "the gateway to reconnect")
            await asyncio.wait_for(sim.welcomed.wait(), 20)
            await sim.wait_acked(count, timeout=60)
            stored = await gateway.db(lambda: list(gateway.ledger.events(DEVICE)))
            assert [e["event"] for e in stored] == sim.journal
            await _published(gateway)
        await close_hosts()
        return seal

    seal = run(body(), timeout=120)
    assert seal.connections == 2 and seal.unheard == 0
    tally = observer.wait_for(DEVICE, count, timeout=20)
    assert (tally.verified, tally.invalid, tally.chain_breaks, tally.lost) == (count, 0, 0, 0)


def test_a_seal_that_is_not_there_is_retried_without_wedging(
    files: GatewayFiles, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    link = _link()
    absent = _port(link, "seal-absent", scan_s=0.5)

    async def body() -> None:
        caplog.set_level(logging.WARNING, "sealink.gateway")
        async with (
            BleSeal(DEVICE, files.device_keys[DEVICE], link=link) as seal,
            running(files.config(broker.port, ports=(absent, _port(link)))),
        ):
            # The missing seal's port keeps failing; the present one is served meanwhile.
            await asyncio.wait_for(seal.sim.welcomed.wait(), 20)
            await seal.sim.stamp(5)
            await seal.sim.wait_acked(5, timeout=20)
            await until(
                lambda: sum("not advertising" in str(r.__dict__) for r in caplog.records) >= 2,
                20,
                "two failed searches for the absent seal",
            )
        await close_hosts()

    run(body())


@_no_bluez
def test_without_an_adapter_the_error_says_so() -> None:
    async def body() -> str:
        transport = open_transport("ble", f"ble://{DEVICE}?scan_s=0.5", baudrate=115200)
        with pytest.raises(TransportUnavailableError) as err:
            await transport.connect()
        return str(err.value)

    message = run(body(), timeout=30)
    assert "no Bluetooth adapter" in message and "backend=bumble" in message


def test_a_bumble_controller_that_is_not_there_is_unavailable() -> None:
    async def body() -> None:
        transport = BleTransport(f"ble://{DEVICE}?backend=bumble&hci=serial:/nonexistent/tty")
        with pytest.raises(TransportUnavailableError, match="no BLE controller"):
            await transport.connect()

    run(body(), timeout=30)


def test_a_bad_url_is_a_transport_error_not_a_traceback() -> None:
    with pytest.raises(TransportError, match="the id is"):
        open_transport("ble", "ble://a/b")


@_no_bluez
def test_sealink_run_without_an_adapter_logs_and_keeps_running_without_a_traceback(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto
) -> None:
    config = tmp_path / "sealink.toml"
    config.write_text(
        f"""
[gateway]
id = "gw-ble"
key_file = "{files.key_file}"
ledger = "{files.ledger_path}"
link_keys = "{files.link_keys}"

[mqtt]
port = {broker.port}

[[ports]]
url = "ble://{DEVICE}?scan_s=0.5"
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sealink.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=4)  # it keeps running, retrying the port
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert "no Bluetooth adapter" in output, output
    assert "Traceback" not in output, output


def test_the_advertisement_carries_the_device_id() -> None:
    adv, scan = advertising_data(DEVICE)
    assert DEVICE.encode() in adv and len(adv) <= 31 and len(scan) <= 31
    long_id = "seal-" + "x" * 27  # 32 bytes: more than a legacy advertisement holds
    adv, _ = advertising_data(long_id)
    assert len(adv) <= 31 and long_id[:NAME_MAX].encode() in adv
    assert advertises(long_id, long_id[:NAME_MAX]) and advertises(DEVICE, DEVICE)
    assert not advertises(DEVICE, DEVICE[:-1] + "9") and not advertises(DEVICE, None)
