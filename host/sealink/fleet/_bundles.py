"""Evidence bundles served from the fleet (issue 14): `GET /v1/records/{device}/{counter}/bundle`.

A record's bundle (SPEC §14.5) is kept in PostgreSQL once verified. One not kept yet is asked
of the gateway that countersigned the record, the way the gateway's approval systems ask (SPEC
§11.5, action `bundle`, signed by the fleet's approver key, which the gateway registered for
that action), and checked by the auditor's verifier (sealink_verify.bundle) under the keys the
fleet holds, not the bundle's own: the gateway's pinned key and the seal's registered key. It
must also be of the record the fleet holds (its SHA-256), not of another record for that
counter. A bundle that fails is refused and never kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from sealink_verify.bundle import BundleError, read_bundle, verify_bundle

from sealink.approvals import ApprovalClient, ApprovalTimeout, ApproverKey
from sealink.errors import FleetError
from sealink.fleet._config import FleetConfig

__all__ = [
    "BundleFetcher",
    "BundleRefused",
    "GatewaySilent",
    "HeldRecord",
    "check_bundle",
    "held_record",
    "keep_bundle",
]

log = logging.getLogger("sealink.fleet")

Conn = psycopg.Connection[tuple[Any, ...]]


class GatewaySilent(FleetError):
    """The gateway (or the broker) did not answer in time."""


class BundleRefused(FleetError):
    """The gateway refused, or answered with a bundle that does not verify."""


@dataclass(frozen=True)
class HeldRecord:
    gateway: str  # the one that countersigned it: its ledger and log hold the record
    record_sha256: bytes
    pinned_key: bytes  # the gateway's pinned key: the root of its key history (SPEC §14.7)
    current_key: bytes  # the newest key the fleet holds for it: it signs its results with it
    seal_key: bytes | None  # None: the registry has no key for the seal
    bundle: bytes | None  # None: not kept yet


def held_record(conn: Conn, device: str, counter: int) -> HeldRecord | None:
    """The record as the fleet holds it, with its bundle if kept; None: no such record."""
    row = conn.execute(
        "SELECT r.gateway, r.record_hash, g.pinned_keys || coalesce(g.history_keys, '{}'), "
        "d.seal_key, b.bundle FROM records r JOIN gateways g ON g.id = r.gateway "
        "LEFT JOIN devices d ON d.id = r.device "
        "LEFT JOIN bundles b ON b.device = r.device AND b.counter = r.counter "
        "WHERE r.device = %s AND r.counter = %s",
        (device, counter),
    ).fetchone()
    if row is None:
        return None
    gateway, digest, keys, seal_key, bundle = row
    return HeldRecord(
        gateway=str(gateway),
        record_sha256=bytes(digest),
        pinned_key=bytes(keys[0]),
        current_key=bytes(keys[-1]),
        seal_key=None if seal_key is None else bytes(seal_key),
        bundle=None if bundle is None else bytes(bundle),
    )


def keep_bundle(conn: Conn, device: str, counter: int, gateway: str, bundle: bytes) -> None:
    """Keep a verified bundle; one kept already (another request's) stays."""
    conn.execute(
        "INSERT INTO bundles (device, counter, gateway, bundle, fetched_ms) "
        "VALUES (%s, %s, %s, %s, (extract(epoch FROM clock_timestamp()) * 1000)::bigint) "
        "ON CONFLICT (device, counter) DO NOTHING",
        (device, counter, gateway, bundle),
    )


def check_bundle(data: bytes, device: str, counter: int, held: HeldRecord) -> None:
    """BundleRefused unless `data` is the bundle of the record held, verified (SPEC §14.5)."""
    try:
        bundle = read_bundle(data.decode("utf-8"))
    except (UnicodeDecodeError, BundleError) as exc:
        raise BundleRefused(f"{held.gateway} sent no bundle this verifier reads: {exc}") from None
    named = (bundle.device, bundle.counter, bundle.gateway_id)
    if named != (device, counter, held.gateway):
        raise BundleRefused(f"{held.gateway} sent the bundle of {named}, not of this record")
    if hashlib.sha256(bundle.record).digest() != held.record_sha256:
        raise BundleRefused(f"{held.gateway} sent a bundle of another record for this counter")
    report = verify_bundle(bundle, gateway_key=held.pinned_key, seal_key=held.seal_key)
    if not report.ok:
        problems = "; ".join(report.problems)
        raise BundleRefused(f"the bundle {held.gateway} sent does not verify: {problems}")


class BundleFetcher:
    """Asks gateways for bundles as the approver `config.approver`, over the fleet's broker."""

    def __init__(self, config: FleetConfig, key: ApproverKey) -> None:
        if config.approver is None:
            raise FleetError("bundles from the gateways need [serve] approver")
        self._approver = config.approver
        self._key = key
        self._mqtt = config.mqtt
        self._timeout_s = config.bundle_timeout_s

    async def fetch(self, held: HeldRecord, device: str, counter: int) -> bytes:
        """The bundle file's bytes the gateway sent (not checked yet: check_bundle)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        client = ApprovalClient(
            self._mqtt, self._key, self._approver, self._mqtt.prefix, held.gateway,
            held.current_key,
        )  # fmt: skip
        async with client:
            try:
                await client.wait_connected(self._timeout_s)
            except TimeoutError:
                raise GatewaySilent(
                    f"the broker at {self._mqtt.host}:{self._mqtt.port} did not take the "
                    f"fleet's connection within {self._timeout_s:g} s"
                ) from None
            request = await client.request("bundle", device, counter=counter)
            try:
                body = await client.wait(
                    request, {"done", "refused"}, max(deadline - loop.time(), 0.0)
                )
            except ApprovalTimeout:
                raise GatewaySilent(
                    f"gateway {held.gateway} did not answer the bundle request within "
                    f"{self._timeout_s:g} s"
                ) from None
        if body.get("state") != "done" or not isinstance(body.get("bundle"), str):
            why = body.get("reason") or body.get("detail") or "no bundle"
            raise BundleRefused(f"gateway {held.gateway} refused the bundle: {why}")
        try:
            data = base64.b64decode(body["bundle"], validate=True)
        except binascii.Error:
            raise BundleRefused(
                f"gateway {held.gateway} sent a bundle that is not base64"
            ) from None
        log.info(
            "bundle fetched",
            extra={"fields": {"device": device, "counter": counter, "gateway": held.gateway}},
        )
        return data
