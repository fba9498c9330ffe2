"""The fleet registry (SPEC §11.6): a seal revoked or reinstated in PostgreSQL, and the signed
message that carries its state to every gateway, retained on `<prefix>/fleet/registry/<seal>`.

A change is one transaction: the seal's row (state, seq, the signed message, not yet
published) and its `device_states` row (who, when, why). The message is then published
retained with QoS 1 and marked published on the broker's PUBACK; one the broker never
acknowledged (it was down) is published again by `sealink fleet run` (`unpublished`). seq is
max(last + 1, now in µs) taken under the row's lock, so it rises strictly per seal whichever
process or clock makes the change.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from sealink.crypto import GatewayKey
from sealink.errors import FleetError
from sealink.fleet._store import Store
from sealink.mqtt.registry import RegistryEntry, build_entry, registry_topic

__all__ = ["RegistryChange", "change_state", "mark_published", "publish", "unpublished"]

_PUBLISH_TIMEOUT_S = 10.0
_ALARM = {"revoked": "revoked", "active": "reinstated"}


@dataclass(frozen=True)
class RegistryChange:
    device: str
    state: str
    seq: int
    topic: str
    message: bytes


def change_state(
    store: Store,
    key: GatewayKey,
    fleet: str,
    prefix: str,
    device: str,
    state: str,
    reason: str,
    by: str,
) -> RegistryChange:
    """Record `device`'s new state and sign its registry message; FleetError if the seal is
    not registered with a key, or is in that state already."""
    if not reason.strip():
        raise FleetError("a reason is required (--reason TEXT): it is kept on the record")
    now_us = time.time_ns() // 1000
    try:
        with store.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT seal_key, state, registry_seq FROM devices WHERE id = %s FOR UPDATE",
                (device,),
            ).fetchone()
            if row is None or row[0] is None:
                raise FleetError(f"{device}: not in the registry with a seal key "
                                 "(`sealink fleet devices import` first)")  # fmt: skip
            if row[1] == state:
                raise FleetError(f"{device} is {state} already")
            seq = max(int(row[2] or 0) + 1, now_us)
            entry = RegistryEntry(
                fleet, device, state, reason, bytes(row[0]), now_us // 1000, seq, now_us // 1000
            )
            message = build_entry(key, prefix, entry)
            conn.execute(
                "UPDATE devices SET state = %s, registry_seq = %s, registry_message = %s, "
                "registry_published = false WHERE id = %s",
                (state, seq, message, device),
            )
            conn.execute(
                "INSERT INTO device_states (device, state, reason, by_whom, time_ms, seq) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (device, state, reason, by, now_us // 1000, seq),
            )
            # Also where every other fleet event is read (`sealink fleet alarms`).
            detail = {"state": state, "reason": reason, "by": by, "seq": seq}
            conn.execute(
                "INSERT INTO alarms (time_ms, source, gateway, device, reason, detail, dedupe) "
                "VALUES (%s, 'fleet', NULL, %s, %s, %s, %s)",
                (now_us // 1000, device, _ALARM[state], json.dumps(detail),
                 f"registry:{device}:{seq}"),
            )  # fmt: skip
    except psycopg.Error as exc:
        raise FleetError(f"registry: {exc} (was `sealink fleet migrate` run?)") from None
    return RegistryChange(device, state, seq, registry_topic(prefix, device), message)


def unpublished(store: Store, prefix: str) -> list[RegistryChange]:
    """The registry messages the broker has not acknowledged yet."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, state, registry_seq, registry_message FROM devices "
            "WHERE NOT registry_published AND registry_message IS NOT NULL ORDER BY id"
        ).fetchall()
    return [
        RegistryChange(str(d), str(s), int(q), registry_topic(prefix, str(d)), bytes(m))
        for d, s, q, m in rows
    ]


def mark_published(store: Store, change: RegistryChange) -> None:
    """Published as of this seq (a later change is left to be published)."""
    with store.pool.connection() as conn:
        conn.execute(
            "UPDATE devices SET registry_published = true WHERE id = %s AND registry_seq = %s",
            (change.device, change.seq),
        )


def publish(host: str, port: int, changes: list[RegistryChange], client_id: str) -> None:
    """Publish retained (QoS 1) and wait for each PUBACK; FleetError if the broker does not
    take them (they stay unpublished in PostgreSQL for `sealink fleet run`)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    try:
        client.connect(host, port, keepalive=10)
    except OSError as exc:
        raise FleetError(f"broker {host}:{port} unreachable: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(_PUBLISH_TIMEOUT_S):
            raise FleetError(f"broker {host}:{port}: no CONNACK in {_PUBLISH_TIMEOUT_S} s")
        infos: list[Any] = [client.publish(c.topic, c.message, qos=1, retain=True) for c in changes]
        for info in infos:
            info.wait_for_publish(_PUBLISH_TIMEOUT_S)
            if not info.is_published():
                raise FleetError(f"broker {host}:{port} did not acknowledge the registry message")
    finally:
        client.disconnect()
        client.loop_stop()
