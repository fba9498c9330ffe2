"""A seal's retained status tells an operator whether it is alive (issue 12, SPEC §11.2): named
by the gateway that reports it, offline when the seal goes silent while its link stays up (a
serial port does when the seal loses power), online when it is heard again, and offline when its
gateway stops. Flags and alarm codes carry their SPEC names.

A real gateway and a real Mosquitto; the seal is simulated (SimDevice) on an in-process pipe
link, the observer reads the signed retained status as any consumer does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from conftest import DEVICE, GatewayFiles, run, running
from sealink.gateway.checks import alarm_name, flag_names
from sealink_sim.broker import Mosquitto
from sealink_sim.observer import Observer
from sealink_sim.pipe import pipe_pair
from sealink_sim.simdevice import SimDevice
from sealproto import messages, timers

# 0.02 STATUS intervals: a seal unheard for 1.2 s is offline (the field's default is 3 minutes).
_MULTIPLE = 0.02
_WAIT_S = 20.0


def _status(observer: Observer) -> dict[str, Any]:
    return observer.device(DEVICE).status or {}


def _wait_status(observer: Observer, what: str, **expected: Any) -> dict[str, Any]:
    observer.wait_until(
        lambda o: all(_status(o).get(k) == v for k, v in expected.items()),
        _WAIT_S,
        f"{DEVICE}'s status {what} ({expected})",
    )
    return _status(observer)


async def _in_thread(observer: Observer, what: str, **expected: Any) -> dict[str, Any]:
    """_wait_status off the event loop, which the gateway and the seal run on."""
    return await asyncio.to_thread(_wait_status, observer, what, **expected)


def test_a_silent_seal_goes_offline_comes_back_and_its_gateway_says_when_it_stops(
    files: GatewayFiles, broker: Mosquitto, observer: Observer
) -> None:
    config = dataclasses.replace(
        files.config(broker.port), offline_after_status_intervals=_MULTIPLE
    )
    flags = messages.F_LOCKED | messages.F_LOW_BATTERY
    seen: dict[str, dict[str, Any]] = {}

    async def body() -> None:
        async with running(config) as gateway:
            host, dev = pipe_pair("liveness")
            gateway.attach(host)
            async with SimDevice(DEVICE, files.device_keys[DEVICE], dev) as sim:
                await asyncio.wait_for(sim.welcomed.wait(), _WAIT_S)
                await sim.send_status(ST_FLAGS=flags, ST_BATTERY=3300)
                seen["online"] = await _in_thread(
                    observer, "online with the STATUS", online=True, battery_mv=3300
                )
                # Nothing from the seal from now on; the link stays up.
                seen["silent"] = await _in_thread(
                    observer, "offline for silence", offline_reason="silent"
                )
                await sim.stamp(1)
                seen["back"] = await _in_thread(observer, "online again", online=True)
                await sim.wait_acked(1)
        seen["stopped"] = await _in_thread(
            observer, "offline as its gateway stopped", offline_reason="gateway_stopped"
        )

    run(body(), timeout=90)
    online, silent, back, stopped = (seen[k] for k in ("online", "silent", "back", "stopped"))
    assert online["gateway"] == files.config(broker.port).gateway_id
    assert online["flag_names"] == ["locked", "low_battery"]
    assert "offline_reason" not in online
    assert silent["online"] is False
    limit_ms = _MULTIPLE * timers.STATUS_INTERVAL_MS
    assert silent["time_ms"] - silent["last_seen_ms"] >= limit_ms
    # What the seal last said stays on an offline status.
    assert silent["battery_mv"] == 3300 and silent["flag_names"] == ["locked", "low_battery"]
    assert "offline_reason" not in back
    assert stopped["online"] is False and stopped["gateway"] == online["gateway"]
    assert observer.device(DEVICE).forged == 0


def test_flags_and_alarm_codes_have_their_spec_names() -> None:
    assert flag_names(0) == []
    assert flag_names(messages.F_TAMPERED | messages.F_NOT_ENROLLED) == [
        "tampered",
        "not_enrolled",
    ]
    # A bit this gateway does not know (reserved in version 3) is named by its number.
    assert flag_names(messages.F_CLOCK_UNSET | 1 << 12) == ["clock_unset", "bit12"]
    assert alarm_name(messages.AL_FORCED_STAMP) == "forced_stamp"
    assert alarm_name(messages.AL_RESERVE_EXHAUSTED) == "reserve_exhausted"
    assert alarm_name(99) == "code99"
