"""Countersigned records without a running gateway, and a fleet.toml, for the fleet's tests
and bench.

`SimGateway` makes exactly what a gateway publishes on `<prefix>/<device>/events` (SPEC
§11.1): each simulated seal's EVENTs (sealink_sim.simdevice.make_event: its chip signs, its
link key MACs), chained by `prev`, countersigned with the gateway's key; and its gap
statements on `<prefix>/<device>/gaps` (§11.2), built by the gateway's own `gap_payload`
and signed with the same key. Forgeries for tests
are made from the same pieces (`countersign`), with another key or other bytes.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sealink.crypto.signer import GatewayKey, countersign_payload
from sealink.ledger.operator import gap_payload

from sealink_sim.simdevice import SimChip, make_event

__all__ = ["SimGateway", "SimSeal", "write_fleet_config"]


@dataclass
class SimSeal:
    device: str
    key: bytes = field(default_factory=lambda: os.urandom(32))
    counter: int = 0
    head: bytes = bytes(32)

    @property
    def chip(self) -> SimChip:
        return SimChip.of(self.key)

    def next_event(self, **fields: int) -> tuple[int, bytes]:
        self.counter += 1
        event = make_event(self.key, self.counter, self.head, **fields)  # type: ignore[arg-type]
        self.head = hashlib.sha256(event).digest()
        return self.counter, event


class SimGateway:
    def __init__(self, gateway_id: str, key: GatewayKey | None = None) -> None:
        self.id = gateway_id
        self.key = key or GatewayKey.generate()

    def countersign(self, device: str, counter: int, event: bytes, received_ms: int = 0) -> bytes:
        payload = countersign_payload(
            device, counter, event, received_ms or int(time.time() * 1000), self.id
        )
        return self.key.sign1(payload)

    def gap_statement(
        self,
        device: str,
        counters: tuple[int, int],
        operator: str,
        note: str,
        head: bytes | None = None,
        adopted_ms: int = 0,
    ) -> bytes:
        """What the gateway publishes on `<prefix>/<device>/gaps` (SPEC §11.2): counters
        first..last declared lost by `operator`, or, with `head`, placed by the fleet."""
        first, last = counters
        payload = gap_payload(
            device, first, last, adopted_ms or int(time.time() * 1000), operator, note, head
        )
        return self.key.sign1(payload)

    def records(self, seal: SimSeal, count: int) -> list[tuple[int, bytes]]:
        """The next `count` records of `seal`, countersigned: (counter, COSE bytes)."""
        out = []
        for _ in range(count):
            counter, event = seal.next_event()
            out.append((counter, self.countersign(seal.device, counter, event)))
        return out

    def write_public_key(self, path: Path) -> Path:
        path.write_bytes(self.key.public_pem())
        return path


def write_fleet_config(
    path: Path,
    *,
    database: str,
    instance: str,
    port: int,
    prefix: str,
    gateways: dict[str, Path],
    batch_max: int = 500,
    group: str = "sealink-fleet",
    registry_refresh_s: int = 10,
    authority_key: Path | None = None,
    ack_keys: dict[str, bytes] | None = None,
) -> Path:
    """fleet.toml; with `authority_key`, the enrolment authority and the gateways' pinned
    acknowledgement keys (`ack_keys`, X || Y) too."""
    authority = [] if authority_key is None else [
        "",
        "[authority]",
        f'key_file = "{authority_key}"',
        "[authority.ack_keys]",
        *(f'{gw} = "{key.hex()}"' for gw, key in sorted((ack_keys or {}).items())),
    ]  # fmt: skip
    lines = [
        "[fleet]",
        f'database = "{database}"',
        f'instance = "{instance}"',
        f"batch_max = {batch_max}",
        "batch_ms = 20",
        f"registry_refresh_s = {registry_refresh_s}",
        "",
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f'prefix = "{prefix}"',
        f'group = "{group}"',
        "session_expiry_s = 3600",
        "",
        "[gateways]",
        *(f'{gw} = "{key}"' for gw, key in sorted(gateways.items())),
        *authority,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
