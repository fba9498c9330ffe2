"""A quarantine set or released shows in the seal's retained status at once (SPEC §11.2), not at
the seal's next STATUS: the console, `sealink watch` and any other consumer see it together.

A real gateway and a real Mosquitto; the seal is simulated (SimDevice) on an in-process pipe
link and sends one STATUS only, before the quarantine; the release is an operator's
`sealink devices release` from its own process, as in the field.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import DEVICE, GatewayFiles, run, running, sealink
from sealink_sim.broker import Mosquitto
from sealink_sim.observer import Observer
from sealink_sim.pipe import pipe_pair
from sealink_sim.simdevice import SimDevice, make_event

_WAIT_S = 20.0


async def _status(observer: Observer, what: str, **expected: Any) -> dict[str, Any]:
    def status() -> dict[str, Any]:
        return observer.device(DEVICE).status or {}

    await asyncio.to_thread(
        observer.wait_until,
        lambda o: all(status().get(k) == v for k, v in expected.items()),
        _WAIT_S,
        f"{DEVICE}'s status {what} ({expected})",
    )
    return status()


def test_a_quarantine_and_its_release_are_published_in_the_status_at_once(
    files: GatewayFiles, broker: Mosquitto, observer: Observer
) -> None:
    conf = files.root / "sealink.toml"
    conf.write_text(
        '[gateway]\nid = "gw-test"\nkey_file = "gateway.key"\nledger = "ledger.sqlite"\n'
    )
    seen: dict[str, dict[str, Any]] = {}

    async def body() -> None:
        async with running(files.config(broker.port)) as gateway:
            host, dev = pipe_pair("quarantine")
            gateway.attach(host)
            async with SimDevice(DEVICE, files.device_keys[DEVICE], dev) as sim:
                await asyncio.wait_for(sim.welcomed.wait(), _WAIT_S)
                seen["hello"] = await _status(observer, "at HELLO", online=True)
                await sim.send_status(ST_BATTERY=3300)
                await sim.stamp(1)
                await sim.wait_acked(1)
                await _status(observer, "with its STATUS", battery_mv=3300, quarantined=False)
                # A record that does not chain: the gateway quarantines the seal.
                await sim.send_payload(make_event(sim.key, sim.next_counter, b"\x42" * 32))
                seen["held"] = await _status(observer, "quarantined", quarantined=True)
                released = await asyncio.to_thread(
                    sealink, "devices", "release", DEVICE, "--config", str(conf), "--note", "ok"
                )
                assert released.returncode == 0, released.stderr
                seen["released"] = await _status(observer, "released", quarantined=False)

    run(body(), timeout=90)
    assert seen["hello"]["quarantined"] is False  # said from the HELLO on, not only by STATUS
    # No STATUS came between: what the seal last said stays, the gateway changed one field.
    assert seen["held"]["battery_mv"] == 3300 and seen["held"]["online"] is True
    assert seen["released"]["time_ms"] > seen["held"]["time_ms"]
    assert observer.device(DEVICE).forged == 0
