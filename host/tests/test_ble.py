"""The gateway over BLE: bleak's public API on a bumble central (sealink.transport.blebumble),
a simulated seal as a bumble GATT peripheral (sealink_sim.bleseal), both on one in-process
virtual link; real HCI, L2CAP, ATT and GATT between them, a real Mosquitto behind.

No kernel Bluetooth exists here, so the system backend (BlueZ) is tested only for the error a
gateway without an adapter gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bumble.controller import Controller
from bumble.transport.tcp_server import open_tcp_server_transport_with_socket
from conftest import DEVICE, GatewayFiles, run, running, until
from sealink.config import PortConfig
from sealink.errors import TransportError, TransportUnavailableError
from sealink.gateway.service import Gateway
from sealink.transport import open_transport
from sealink.transport.ble import BleTransport, advertises
from sealink.transport.blebumble import BumbleScanner, close_hosts, virtual_link
from sealink_sim.bleseal import BleSeal, advertising_data
from sealink_sim.broker import Mosquitto
from sealink_sim.observer import Observer
from sealproto.gatt import NAME_MAX, SERVICE_UUID

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
    config = _config_file(tmp_path, files, broker, f"ble://{DEVICE}?scan_s=0.5")
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


def _config_file(tmp_path: Path, files: GatewayFiles, broker: Mosquitto, url: str) -> Path:
    """A `sealink run` config with one port."""
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
url = "{url}"
"""
    )
    return config


def test_the_advertisement_carries_the_device_id() -> None:
    adv, scan = advertising_data(DEVICE)
    assert DEVICE.encode() in adv and len(adv) <= 31 and len(scan) <= 31
    long_id = "seal-" + "x" * 27  # 32 bytes: more than a legacy advertisement holds
    adv, _ = advertising_data(long_id)
    assert len(adv) <= 31 and long_id[:NAME_MAX].encode() in adv
    assert advertises(long_id, long_id[:NAME_MAX]) and advertises(DEVICE, DEVICE)
    assert not advertises(DEVICE, DEVICE[:-1] + "9") and not advertises(DEVICE, None)


def test_a_seal_copying_another_seals_name_is_refused_and_passed_over(
    files: GatewayFiles, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    # SPEC §6: a registered seal advertising this port's name is found first (it is alone on
    # the air); its HELLO names itself, so it gets no WELCOME, the link is dropped and the
    # port's next searches pass over it, though it keeps advertising the name, and find the
    # port's own seal.
    link, impostor_id = _link(), "seal-t-0002"
    impostor_key = files.add_device(impostor_id)

    async def body() -> BleSeal:
        caplog.set_level(logging.INFO, "sealink.gateway")
        async with (
            BleSeal(impostor_id, impostor_key, link=link, name=DEVICE) as impostor,
            running(files.config(broker.port, ports=(_port(link),))) as gateway,
        ):
            await until(
                lambda: impostor.connections == 1 and impostor.connection is None,
                20,
                "the gateway to connect to the impostor and drop it",
            )
            async with BleSeal(DEVICE, files.device_keys[DEVICE], link=link) as seal:
                await asyncio.wait_for(seal.sim.welcomed.wait(), 20)
                await seal.sim.stamp(3)
                await seal.sim.wait_acked(3, timeout=20)
            stored = await gateway.db(lambda: list(gateway.ledger.events(DEVICE)))
            assert [e["event"] for e in stored] == seal.sim.journal
            assert await gateway.db(lambda: list(gateway.ledger.events(impostor_id))) == []
            rejections = await gateway.db(gateway.ledger.rejections)
            refused = [r for r in rejections if r.reason == "wrong_device"]
            assert [(r.device, r.count) for r in refused] == [(None, 1)], rejections
            rows = await gateway.db(gateway.ledger.quarantined)
            assert [r.reason for r in rows if r.reason == "wrong_device"] == ["wrong_device"]
            assert gateway.registry.get(impostor_id).owner is None
        await close_hosts()
        return impostor

    impostor = run(body())
    assert impostor.connections == 1  # passed over while the port searched again
    closed = [r for r in caplog.records if r.getMessage() == "link closed"]
    assert any(f"HELLO of '{impostor_id}'" in str(r.__dict__) for r in closed), closed


def test_a_stopped_gateway_lets_go_of_its_bumble_controller(
    files: GatewayFiles, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    # The port's bumble host reaches its controller over TCP (bumble's tcp-client transport, as
    # it would a USB dongle through usb:0): the controller's end sees whether the gateway's
    # shutdown closed the host's HCI transport, which a process exit would hide.
    link = _link()

    async def body() -> None:
        caplog.set_level(logging.WARNING)
        async with (
            _tcp_dongle(link) as (hci, dongle),
            BleSeal(DEVICE, files.device_keys[DEVICE], link=link) as seal,
        ):
            url = f"ble://{DEVICE}?backend=bumble&hci={hci}"
            async with running(files.config(broker.port, ports=(PortConfig(url, "ble"),))):
                await asyncio.wait_for(seal.sim.welcomed.wait(), 20)
                await seal.sim.stamp(2)
                await seal.sim.wait_acked(2, timeout=20)
                assert dongle.transport is not None, "the gateway holds no controller"
            await until(lambda: dongle.transport is None, 10, "the gateway to close its HCI link")

    run(body())
    noise = [r for r in caplog.records if r.exc_info or "destroyed" in r.getMessage()]
    assert noise == [], noise


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_sealink_run_stopped_by_a_signal_closes_its_bumble_host_quietly(
    signal_name: str, tmp_path: Path, files: GatewayFiles, broker: Mosquitto
) -> None:
    link = _link()

    async def body() -> tuple[int | None, str, bool]:
        async with (
            _tcp_dongle(link) as (hci, dongle),
            BleSeal(DEVICE, files.device_keys[DEVICE], link=link) as seal,
        ):
            config = _config_file(
                tmp_path, files, broker, f"ble://{DEVICE}?backend=bumble&hci={hci}"
            )
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sealink.cli",
                "run",
                "--config",
                str(config),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                await asyncio.wait_for(seal.sim.welcomed.wait(), 30)
                await seal.sim.stamp(2)
                await seal.sim.wait_acked(2, timeout=20)
                proc.send_signal(getattr(signal, signal_name))
                async with asyncio.timeout(30):
                    output, _ = await proc.communicate()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await until(lambda: dongle.transport is None, 5, "the HCI link to close")
            return proc.returncode, output.decode(), seal.connection is None

    code, output, dropped = run(body(), timeout=90)
    assert code == 0, output
    assert "stopping" in output, output
    assert "Traceback" not in output and "destroyed" not in output, output
    assert dropped, "the seal still has a central"


@contextlib.asynccontextmanager
async def _tcp_dongle(link: str) -> AsyncIterator[tuple[str, Any]]:
    """A bumble controller on virtual link `link`, reached over TCP as a gateway reaches a
    USB dongle: yields the port's `hci=` spec and the controller's end of that link, whose
    `transport` is None while no host holds it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    spec = f"tcp-client:127.0.0.1:{listener.getsockname()[1]}"
    server = await open_tcp_server_transport_with_socket(listener)
    Controller("dongle", host_source=server.source, host_sink=server.sink, link=virtual_link(link))
    try:
        yield spec, server.sink
    finally:
        await server.close()


def test_an_active_scan_reports_the_scan_responses_service_uuid() -> None:
    # SPEC §6: the scan response holds the service UUID. bleak reports, with an active scan,
    # the advertisement merged with its scan response (bumble's accumulator merges the two).
    link = _link()

    async def body() -> list[tuple[bool, AdvertisementData]]:
        seen: list[tuple[bool, AdvertisementData]] = []

        def heard(_: BLEDevice, adv: AdvertisementData) -> None:
            seen.append((adv.platform_data[0].is_scan_response, adv))

        async with (
            BleSeal(DEVICE, bytes(32), link=link),
            BleakScanner(heard, backend=BumbleScanner, hci=f"virtual:{link}"),
        ):
            await until(lambda: any(response for response, _ in seen), 10, "a scan response")
        await close_hosts()
        return seen

    merged = [adv for response, adv in run(body()) if response]
    if all(SERVICE_UUID not in adv.service_uuids for adv in merged):
        # bumble 0.0.236's virtual controller answers a scan request with the advertising
        # data itself (controller.py: the SCAN_RSP report carries `data=pdu.data`), never the
        # scan response the peripheral set. Skip on that cause only; any other is a failure.
        adv_data, _ = advertising_data(DEVICE)
        doubled = 2 * [(t, bytes(v)) for t, v in _structures(adv_data)]
        got = [(t, bytes(v)) for t, v in merged[0].platform_data[0].data.ad_structures]
        assert got == doubled, got
        pytest.skip("bumble's virtual controller sends the advertising data as scan response")
    assert all(adv.service_uuids == [SERVICE_UUID] for adv in merged)
    assert all(adv.local_name == DEVICE for adv in merged)


def _structures(data: bytes) -> list[tuple[int, bytes]]:
    """The (type, value) AD structures of advertising data (Core Vol 3 Part C §11)."""
    out, at = [], 0
    while at < len(data):
        length = data[at]
        out.append((data[at + 1], data[at + 2 : at + 1 + length]))
        at += 1 + length
    return out
