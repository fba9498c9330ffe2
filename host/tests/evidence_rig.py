"""Shared by the evidence tests: a ledger filled with real, countersigned, chained events; the
fixed bundle of the vectors; our audit paths in pymerkle's shape."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pymerkle
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sealink.cli import main
from sealink.crypto.keystore import LinkKeyStore
from sealink.crypto.signer import GatewayKey, countersign_payload
from sealink.evidence import Checkpoint, checkpoint_origin, heads_hash, sign_checkpoint
from sealink.gateway.checkpoints import make_checkpoint
from sealink.ledger import Batch, EventRow, Ledger
from sealink_sim.simdevice import SimChip, make_event
from sealproto import auth

DEVICE_KEY = bytes(range(32))
SEAL_KEY = SimChip.of(DEVICE_KEY).public
GATEWAY = "gw-ev"
ORIGIN = checkpoint_origin(GATEWAY)
Bundle = dict[str, Any]
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

    def add(
        self,
        device: str,
        count: int,
        per_commit: int = 3,
        rewrite: int | None = None,
        permit: int = 0,
    ) -> None:
        """Store `count` more events (under `permit`); `rewrite`: that counter gets other
        (validly MACed and countersigned) bytes, as someone holding every key on the host could
        make: signed by a chip of their own, since the seal's never leaves the seal."""
        if device not in self.prev:
            self.ledger.add_device(device, DEVICE_KEY, SimChip.of(DEVICE_KEY).public)
        batch = Batch()
        for _ in range(count):
            counter = self.counter.get(device, 0) + 1
            time_s = 999 if counter == rewrite else 0
            prev = self.prev.get(device, auth.GENESIS)
            chip = FORGER_CHIP if counter == rewrite else None
            event = make_event(DEVICE_KEY, counter, prev, time_s=time_s, chip=chip, permit=permit)
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


def as_pymerkle(path: list[bytes], leaf: bytes, index: int, size: int) -> Any:
    """Our RFC 9162 audit path in pymerkle's shape (its path: the leaf, then the same siblings
    bottom-up; its rule bits it derives itself from index and size)."""
    from pymerkle.core import _inclusion_path_layout

    rule, _ = _inclusion_path_layout(index + 1, size)
    return pymerkle.InclusionProof("sha256", True, size, index + 1, rule, [leaf, *path])


def _fixed(label: str) -> bytes:
    return hashlib.sha256(b"sealink vectors/" + label.encode()).digest()


MADE_S = int(datetime.datetime(2026, 12, 1, 9, 14, 3, tzinfo=datetime.UTC).timestamp())
SIGNED_MS = int(datetime.datetime(2026, 12, 1, 9, 20, tzinfo=datetime.UTC).timestamp()) * 1000


def vector_bundle(root: Path) -> tuple[Bundle, GatewayKey]:
    """A bundle from a ledger built only from fixed inputs: two seals, five records, one
    checkpoint signed at a fixed time (Ed25519 and the chips' RFC 6979 signatures are
    deterministic)."""
    root.mkdir()
    key = GatewayKey(Ed25519PrivateKey.from_private_bytes(_fixed("bundle gateway key")))
    key.save(root / "gateway.key")
    conf = root / "sealink.toml"
    conf.write_text(
        '[gateway]\nid = "gw-vectors"\nkey_file = "gateway.key"\nledger = "ledger.sqlite"\n'
    )
    ledger = Ledger(root / "ledger.sqlite", LinkKeyStore(root / "link-keys"), create=True)
    try:
        for device in ("S-0001", "S-0002"):
            ledger.add_device(device, DEVICE_KEY, SEAL_KEY)
        prev = {"S-0001": auth.GENESIS, "S-0002": auth.GENESIS}
        for n, (device, counter) in enumerate(
            [("S-0001", 1), ("S-0002", 1), ("S-0001", 2), ("S-0001", 3), ("S-0002", 2)]
        ):
            made = MADE_S + 60 * (n - 2)
            event = make_event(
                DEVICE_KEY, counter, prev[device], permit=5, operator=42, time_s=made
            )
            received = (made + 2) * 1000
            payload = countersign_payload(device, counter, event, received, "gw-vectors")
            prev[device] = auth.record_hash(event)
            row = EventRow(device, counter, event, prev[device], key.sign1(payload), received)
            ledger.commit(Batch(events=[row]))
        size, root_hash, heads = ledger.log.tree_head()
        origin = checkpoint_origin("gw-vectors")
        checkpoint = sign_checkpoint(key, origin, size, root_hash, heads_hash(heads), SIGNED_MS)
        ledger.log.add_checkpoint(checkpoint)
    finally:
        ledger.close()
    out = root / "bundle.json"
    assert main(["evidence", "bundle", "--config", str(conf), "S-0001", "2", "-o", str(out)]) == 0
    bundle: Bundle = json.loads(out.read_text())
    return bundle, key
