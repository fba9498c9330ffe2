"""`sealink watch` (issue 12): the terminal view shows what a real gateway publishes, checked.

A real gateway and a real Mosquitto; the seal is simulated (SimDevice) on an in-process pipe
link. The textual app runs headless under its own test pilot, on the same event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from conftest import DEVICE, GatewayFiles, run, running, sealink
from sealink.console.feed import Feed
from sealink.console.terminal import WatchApp
from sealink_sim.broker import Mosquitto
from sealink_sim.pipe import pipe_pair
from sealink_sim.simdevice import SimDevice

_WAIT_S = 20.0


async def _until(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _WAIT_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {_WAIT_S} s waiting for {what}")
        await asyncio.sleep(0.02)


def _forge_status(port: int, topic: str) -> None:
    """What anyone with write access to the broker could publish: unsigned JSON."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, b'{"online": true, "battery_mv": 4200}', qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_watch_shows_verified_impressions_and_health_and_counts_a_forgery(
    files: GatewayFiles, broker: Mosquitto
) -> None:
    config = files.config(broker.port)
    feed = Feed(config.mqtt, {config.gateway_id: [files.key.public_raw()]}, "watch-test")
    app = WatchApp(feed)

    async def body() -> None:
        async with running(config) as gateway, app.run_test():
            host, dev = pipe_pair("watch")
            gateway.attach(host)
            async with SimDevice(DEVICE, files.device_keys[DEVICE], dev) as sim:
                await asyncio.wait_for(sim.welcomed.wait(), _WAIT_S)
                await sim.send_status(ST_BATTERY=3300)
                await sim.stamp(3)
                await sim.wait_acked(3)
                impressions = app.table("impressions")
                await _until(lambda: impressions.row_count == 3, "3 impressions")
                counters = [impressions.get_row_at(i)[2] for i in range(3)]
                assert counters == ["1", "2", "3"]
                assert {impressions.get_row_at(i)[1] for i in range(3)} == {DEVICE}
                devices = app.table("devices")
                await _until(
                    lambda: DEVICE in devices.rows and devices.get_row(DEVICE)[2] == "3300",
                    "the seal's status with its battery",
                )
                assert devices.get_row(DEVICE)[1] == "online"
                assert devices.get_row(DEVICE)[6] == config.gateway_id
                await asyncio.to_thread(
                    _forge_status, broker.port, f"{config.mqtt.prefix}/{DEVICE}/status"
                )
                await _until(lambda: app.rejected == 1, "the forgery rejected")
                # The forged status changed nothing shown as valid.
                assert devices.get_row(DEVICE)[2] == "3300"
                assert "status" in app.last_rejection

    run(body(), timeout=90)


def _config(tmp_path: Path, files: GatewayFiles) -> Path:
    path = tmp_path / "sealink.toml"
    path.write_text(
        f'[gateway]\nid = "gw-test"\nkey_file = "{files.key_file}"\n'
        f'ledger = "{files.ledger_path}"\n'
    )
    return path


def test_watch_refuses_to_start_without_a_terminal(tmp_path: Path, files: GatewayFiles) -> None:
    done = sealink("watch", "--config", str(_config(tmp_path, files)), env={**os.environ})
    assert done.returncode == 2
    assert "draws on a terminal" in done.stderr


def test_a_bad_gateway_key_is_named(tmp_path: Path, files: GatewayFiles) -> None:
    config = str(_config(tmp_path, files))
    done = sealink("watch", "--config", config, "--gateway-key", "gw-2")
    assert (done.returncode, done.stderr.strip()) == (
        2,
        "sealink: error: --gateway-key 'gw-2': expected ID=PEM-FILE",
    )
    not_pem = tmp_path / "key.pem"
    not_pem.write_text("hello")
    done = sealink("watch", "--config", config, "--gateway-key", f"gw-2={not_pem}")
    assert done.returncode == 2
    assert f"{not_pem}: not an Ed25519 public key PEM" in done.stderr
