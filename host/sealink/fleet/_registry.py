"""The fleet registry (SPEC §11.6): a seal revoked, reinstated or moved in PostgreSQL, and the
signed message that carries its state to every gateway, retained on
`<prefix>/fleet/registry/<seal>`.

A move places the seal on one gateway at where it stands in the fleet's record (the highest
counter held whole, chained, and that record's hash), so the new gateway takes up its chain
and every other holds it; every later message of the seal carries its placement. With the
enrolment authority configured (fleet.toml [authority]) a move also signs the seal's §5.11
certificate for the new gateway's acknowledgement key, pinned in fleet.toml, which the message
carries beside the placement (`enrolment`), so that the seal frees its journal on that
gateway's acknowledgements without a field engineer; `enrol` signs one for where a seal is.

A change is one transaction: the seal's row (state, seq, the signed message, not yet
published) and its `device_states` row (who, when, why). The message is then published
retained with QoS 1 and marked published on the broker's PUBACK; one the broker never
acknowledged (it was down) is published again by `sealink fleet run` (`unpublished`). seq is
max(last + 1, now in µs) taken under the row's lock, so it rises strictly per seal whichever
process or clock makes the change.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
import psycopg

from sealink.config import MqttConfig
from sealink.crypto import GatewayKey
from sealink.crypto.enrolment import Certificate, certify
from sealink.crypto.p256 import P256Key
from sealink.errors import FleetError
from sealink.fleet._config import FleetConfig
from sealink.fleet._store import Store
from sealink.mqtt.connection import Client, connect_failure, new_client, refusal
from sealink.mqtt.registry import Placement, RegistryEntry, build_entry, registry_topic

__all__ = [
    "Enrolling",
    "RegistryChange",
    "change_state",
    "enrol",
    "enrolling",
    "enrolling_if_authority",
    "mark_published",
    "move",
    "publish",
    "require_reason",
    "unpublished",
]

Connection = psycopg.Connection[tuple[Any, ...]]

_PUBLISH_TIMEOUT_S = 10.0
_GENESIS = bytes(32)
_ALARM = {"revoked": "revoked", "active": "reinstated"}


@dataclass(frozen=True)
class RegistryChange:
    device: str
    state: str
    seq: int
    topic: str
    message: bytes
    placement: Placement | None = None
    enrolment: Certificate | None = None


@dataclass(frozen=True)
class Enrolling:
    """What a certificate for `gateway` is signed with: the authority's key and the gateway's
    acknowledgement key (G) pinned in fleet.toml."""

    gateway: str
    authority: P256Key
    gateway_key: bytes


def enrolling_if_authority(config: FleetConfig, gateway: str) -> Enrolling | None:
    """As `enrolling`, but None without [authority]. With it, FleetError if G is not pinned:
    a move with the authority configured must not leave the seal enrolled with the gateway
    it left."""
    return None if config.authority_key_file is None else enrolling(config, gateway)


def enrolling(config: FleetConfig, gateway: str) -> Enrolling:
    """The authority and `gateway`'s G from fleet.toml; FleetError without [authority] or if
    G is not pinned."""
    if config.authority_key_file is None:
        raise FleetError("no enrolment authority: fleet.toml [authority] key_file")
    gateway_key = config.ack_key(gateway)
    if gateway_key is None:
        raise FleetError(f"{gateway}: no acknowledgement key in fleet.toml [authority.ack_keys] "
                         "(`sealink keys show` on that gateway: ack_key)")  # fmt: skip
    return Enrolling(gateway, P256Key.load(config.authority_key_file, "authority key"), gateway_key)


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
    with _change(store, device, reason) as (conn, row):
        if row.state == state:
            raise FleetError(f"{device} is {state} already")
        detail = {"state": state, "reason": reason, "by": by}
        return _sign(conn, key, fleet, prefix, row, state, reason, by, row.placement,
                     _ALARM[state], detail, row.enrolment)  # fmt: skip


def move(
    store: Store,
    key: GatewayKey,
    fleet: str,
    prefix: str,
    device: str,
    to: str,
    reason: str,
    by: str,
    enrolment: Enrolling | None = None,
) -> RegistryChange:
    """Place `device` on gateway `to` where it stands in the fleet's record: the highest
    counter the fleet holds with every counter before it, chained, and that record's hash;
    with `enrolment` (for `to`), enrol it there too. FleetError if `to` is not a gateway of
    the fleet, or the record is not whole (a counter missing, a fork, a broken chain): a
    placement must not vouch for what the fleet lacks."""
    assert enrolment is None or enrolment.gateway == to
    with _change(store, device, reason) as (conn, row):
        if conn.execute("SELECT 1 FROM gateways WHERE id = %s", (to,)).fetchone() is None:
            raise FleetError(f"{to}: not a gateway of this fleet (fleet.toml [gateways])")
        # The writers' per-seal lock (Store.write): no record of the seal lands meanwhile.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (device,))
        placement, came_from = _standing(conn, device, to)
        cert = None if enrolment is None else _certificate(conn, row, enrolment)
        detail = {"to": to, "from": came_from, "counter": placement.counter,
                  "record_sha256": placement.head.hex(), "reason": reason, "by": by,
                  "serial": cert.serial if cert else None}  # fmt: skip
        return _sign(conn, key, fleet, prefix, row, row.state, reason, by, placement,
                     "moved", detail, cert)  # fmt: skip


def enrol(
    store: Store,
    key: GatewayKey,
    fleet: str,
    prefix: str,
    device: str,
    enrolment: Enrolling,
    reason: str,
    by: str,
) -> RegistryChange:
    """Enrol `device` with the gateway it is placed on (a move made before the authority was
    configured, or that gateway's acknowledgement key replaced): its registry message again,
    the placement unchanged, with a new certificate. FleetError if it is placed elsewhere."""
    with _change(store, device, reason) as (conn, row):
        if row.placement is None or row.placement.gateway != enrolment.gateway:
            where = row.placement.gateway if row.placement else "no gateway by the fleet"
            raise FleetError(f"{device} is placed on {where}, not {enrolment.gateway}: "
                             f"`sealink fleet devices move {device} --to {enrolment.gateway}` "
                             "places and enrols it")  # fmt: skip
        cert = _certificate(conn, row, enrolment)
        detail = {"to": enrolment.gateway, "serial": cert.serial, "reason": reason, "by": by}
        return _sign(conn, key, fleet, prefix, row, row.state, reason, by, row.placement,
                     "enrolled", detail, cert)  # fmt: skip


@dataclass(frozen=True)
class _Row:
    device: str
    seal_key: bytes
    state: str
    seq: int
    placement: Placement | None
    enrolment: Certificate | None


def _certificate(conn: Connection, row: _Row, enrolment: Enrolling) -> Certificate:
    """A certificate of a serial above every one the fleet issued for the seal: the time in
    seconds, as `sealink authority` chooses it, or one more than the last."""
    last = conn.execute(
        "SELECT max(serial) FROM enrolments WHERE device = %s", (row.device,)
    ).fetchone()
    assert last is not None
    serial = max(int(last[0] or 0) + 1, int(time.time()))
    try:
        return certify(enrolment.authority, row.device, enrolment.gateway_key, serial)
    except ValueError as exc:
        raise FleetError(f"{row.device}: no certificate signed: {exc}") from None


def require_reason(reason: str) -> None:
    """Every signed change of the fleet (a seal's, §11.6; an approver's, §11.7) says why."""
    if not reason.strip():
        raise FleetError("a reason is required (--reason TEXT): it is kept on the record")


@contextlib.contextmanager
def _change(store: Store, device: str, reason: str) -> Iterator[tuple[Connection, _Row]]:
    """The seal's registry row, locked, in a transaction that commits what the body did."""
    require_reason(reason)
    try:
        with store.pool.connection() as conn, conn.transaction():
            found = conn.execute(
                "SELECT seal_key, state, registry_seq, gateway, placed_counter, placed_head, "
                "enrolment FROM devices WHERE id = %s FOR UPDATE",
                (device,),
            ).fetchone()
            if found is None or found[0] is None:
                raise FleetError(f"{device}: not in the registry with a seal key "
                                 "(`sealink fleet devices import` first)")  # fmt: skip
            placement = None
            if found[3] is not None:
                placement = Placement(str(found[3]), int(found[4]), bytes(found[5]))
            # Written by _sign from a certificate it signed: its bytes parse.
            cert = None if found[6] is None else Certificate.from_cbor(bytes(found[6]), device)
            yield conn, _Row(device, bytes(found[0]), str(found[1]), int(found[2] or 0),
                             placement, cert)  # fmt: skip
    except psycopg.Error as exc:
        raise FleetError(f"registry: {exc} (was `sealink fleet migrate` run?)") from None


def _standing(conn: Connection, device: str, to: str) -> tuple[Placement, str | None]:
    whole = conn.execute(
        "SELECT count(*), max(counter), bool_and(coalesce(chain_ok, false)), "
        "(SELECT count(*) FROM forks f WHERE f.device = %s) FROM records WHERE device = %s",
        (device, device),
    ).fetchone()
    assert whole is not None
    count, top, chained, forks = int(whole[0]), whole[1], whole[2], int(whole[3])
    if top is None:
        return Placement(to, 0, _GENESIS), None
    if count != top or not chained or forks:
        missing = top - count
        raise FleetError(
            f"{device}: the fleet's record of it is not whole ({missing} of counters 1..{top} "
            f"missing, {forks} forked, chain {'whole' if chained else 'broken or unjudged'}): "
            "`sealink fleet gaps`/`forks` say which; a move must not vouch for them"
        )
    head = conn.execute(
        "SELECT record_hash, gateway FROM records WHERE device = %s AND counter = %s",
        (device, top),
    ).fetchone()
    assert head is not None
    return Placement(to, int(top), bytes(head[0])), str(head[1])


def _sign(
    conn: Connection,
    key: GatewayKey,
    fleet: str,
    prefix: str,
    row: _Row,
    state: str,
    reason: str,
    by: str,
    placement: Placement | None,
    alarm: str,
    detail: dict[str, Any],
    enrolment: Certificate | None,
) -> RegistryChange:
    """Sign the seal's next registry message and record it: the seal's row, its history row,
    a certificate new in it, and the fleet event, in the caller's transaction (published
    after it commits)."""
    now_us = time.time_ns() // 1000
    seq = max(row.seq + 1, now_us)
    entry = RegistryEntry(fleet, row.device, state, reason, row.seal_key, now_us // 1000, seq,
                          now_us // 1000, placement, enrolment)  # fmt: skip
    message = build_entry(key, prefix, entry)
    gateway, counter = (placement.gateway, placement.counter) if placement else (None, None)
    encoded = enrolment.to_cbor() if enrolment else None
    conn.execute(
        "UPDATE devices SET state = %s, registry_seq = %s, registry_message = %s, "
        "registry_published = false, gateway = %s, placed_counter = %s, placed_head = %s, "
        "enrolment = %s WHERE id = %s",
        (state, seq, message, gateway, counter, placement.head if placement else None,
         encoded, row.device),
    )  # fmt: skip
    conn.execute(
        "INSERT INTO device_states (device, state, reason, by_whom, time_ms, seq, gateway, "
        "counter) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (row.device, state, reason, by, now_us // 1000, seq, gateway, counter),
    )
    if enrolment is not None and enrolment != row.enrolment:
        conn.execute(
            "INSERT INTO enrolments (device, serial, gateway, gateway_key, certificate, "
            "by_whom, reason, time_ms, seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (row.device, enrolment.serial, gateway, enrolment.gateway_key, encoded, by,
             reason, now_us // 1000, seq),
        )  # fmt: skip
    # Also where every other fleet event is read (`sealink fleet alarms`).
    conn.execute(
        "INSERT INTO alarms (time_ms, source, gateway, device, reason, detail, dedupe) "
        "VALUES (%s, 'fleet', %s, %s, %s, %s, %s)",
        (now_us // 1000, gateway, row.device, alarm, json.dumps({**detail, "seq": seq}),
         f"registry:{row.device}:{seq}"),
    )  # fmt: skip
    topic = registry_topic(prefix, row.device)
    return RegistryChange(row.device, state, seq, topic, message, placement, enrolment)


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


class Retained(Protocol):
    """A signed message the fleet keeps retained on its topic (a seal's, an approver's)."""

    @property
    def topic(self) -> str: ...

    @property
    def message(self) -> bytes: ...


def publish(broker: MqttConfig, changes: Sequence[Retained], client_id: str) -> None:
    """Publish retained (QoS 1) and wait for each PUBACK; FleetError if the broker does not
    take them (they stay unpublished in PostgreSQL for `sealink fleet run`)."""
    host, port = broker.host, broker.port
    client = new_client(broker, client_id, Client)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(refusal(reason))
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ValueError) as exc:
        failure = connect_failure(exc, broker.cert_file is not None)
        raise FleetError(f"broker {host}:{port} unreachable: {failure}") from None
    client.loop_start()
    try:
        if not connected.wait(_PUBLISH_TIMEOUT_S):
            raise FleetError(f"broker {host}:{port}: no CONNACK in {_PUBLISH_TIMEOUT_S} s")
        if refused:
            raise FleetError(f"broker {host}:{port}: {refused[0]}")
        infos: list[Any] = [client.publish(c.topic, c.message, qos=1, retain=True) for c in changes]
        for info in infos:
            info.wait_for_publish(_PUBLISH_TIMEOUT_S)
            if not info.is_published():
                raise FleetError(f"broker {host}:{port} did not acknowledge the registry message")
    finally:
        client.disconnect()
        client.loop_stop()
