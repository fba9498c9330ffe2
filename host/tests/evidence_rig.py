"""Shared by the evidence tests: a ledger filled with real, countersigned, chained events."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from sealink.cli import main
from sealink.crypto.keystore import LinkKeyStore
from sealink.crypto.signer import GatewayKey, countersign_payload
from sealink.evidence import Checkpoint, checkpoint_origin
from sealink.gateway.checkpoints import make_checkpoint
from sealink.ledger import Batch, EventRow, Ledger
from sealink_sim.simdevice import SimChip, make_event
from sealproto import auth

DEVICE_KEY = bytes(range(32))
GATEWAY = "gw-ev"
ORIGIN = checkpoint_origin(GATEWAY)
# A chip that is not the seal's: what a rewriter of the ledger signs with.
FORGER_CHIP = SimChip.of(b"not the seal's chip")


class Rig:
    def __init__(self, root: Path, key: GatewayKey | None = None) -> None:
        self.root = root
        self.key = key or GatewayKey.generate()
        self.path = root / "ledger.sqlite"
        self.ledger = Ledger(self.path, LinkKeyStore(root / "link-keys"), create=True)
        self.prev: dict[str, bytes] = {}
        self.counter: dict[str, int] = {}
        self.conf = root / "sealink.toml"
        self.conf.write_text(
            f'[gateway]\nid = "{GATEWAY}"\nkey_file = "gateway.key"\nledger = "ledger.sqlite"\n'
        )

    def add(self, device: str, count: int, per_commit: int = 3, rewrite: int | None = None) -> None:
        """Store `count` more events; `rewrite`: that counter gets other (validly MACed and
        countersigned) bytes, as someone holding every key on the host could make: signed by
        a chip of their own, since the seal's never leaves the seal."""
        if device not in self.prev:
            self.ledger.add_device(device, DEVICE_KEY, SimChip.of(DEVICE_KEY).public)
        batch = Batch()
        for _ in range(count):
            counter = self.counter.get(device, 0) + 1
            time_s = 999 if counter == rewrite else 0
            prev = self.prev.get(device, auth.GENESIS)
            chip = FORGER_CHIP if counter == rewrite else None
            event = make_event(DEVICE_KEY, counter, prev, time_s=time_s, chip=chip)
            received = 1_700_000_000_000 + counter
            cose = self.key.sign1(countersign_payload(device, counter, event, received, GATEWAY))
            digest = auth.record_hash(event)
            batch.events.append(EventRow(device, counter, event, digest, cose, received))
            self.prev[device], self.counter[device] = digest, counter
            if len(batch.events) >= per_commit:
                self.ledger.commit(batch)
                batch = Batch()
        if batch.events:
            self.ledger.commit(batch)

    def checkpoint(self) -> Checkpoint:
        made = make_checkpoint(self.ledger, self.key, ORIGIN)
        assert made is not None
        return made

    def cli(self, *args: str) -> int:
        return main([args[0], args[1], "--config", str(self.conf), *args[2:]])

    def export(self, name: str = "export.jsonl", *extra: str) -> list[str]:
        out = self.root / name
        assert self.cli("events", "export", "--with-checkpoint", "--out", str(out), *extra) == 0
        return out.read_text().splitlines()

    def pem(self) -> bytes:
        return self.key.public_pem()


def seal_keys_file(path: Path, devices: Iterable[str]) -> Path:
    """The seals' public keys as their provisioning issued them (`sealink verify --seal-keys`)."""
    public = SimChip.of(DEVICE_KEY).public.hex()
    path.write_text(
        "".join(json.dumps({"device": d, "seal_key": public}) + "\n" for d in sorted(devices))
    )
    return path


def rows_of(lines: list[str]) -> tuple[list[dict[str, object]], dict[str, object]]:
    rows = [json.loads(line) for line in lines]
    return rows[:-1], rows[-1]
