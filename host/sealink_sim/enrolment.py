"""The enrolment authority of simulated and emulated seals (SPEC §5.11), and certificates.

A real seal's firmware carries its organisation's authority key (`tools/build.py
--authority`); the emulated board gets this one, derived from a fixed label, so that a test, the
demo or a bench can enrol its seals with a gateway in one call. Nothing outside the simulator
trusts it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from sealink.crypto.enrolment import Certificate, certify
from sealink.crypto.keystore import LinkKeyStore
from sealink.crypto.p256 import P256Key
from sealink.crypto.signer import GatewayKey
from sealink.ledger.sqlite import Ledger

__all__ = ["SIM_AUTHORITY", "enrol", "enrolled_gateway"]

_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

SIM_AUTHORITY = P256Key(
    ec.derive_private_key(
        int.from_bytes(hashlib.sha256(b"sealink_sim enrolment authority").digest(), "big")
        % _P256_N,
        ec.SECP256R1(),
    )
)


def enrol(device: str, gateway_ack_key: bytes, serial: int = 1) -> Certificate:
    """A certificate enrolling `device` with the gateway whose acknowledgement key this is."""
    return certify(SIM_AUTHORITY, device, gateway_ack_key, serial)


def enrolled_gateway(work: Path, device: str, device_key: bytes, seal_public: bytes) -> GatewayKey:
    """A gateway's files in `work` for one seal, as a site has them: its countersigning and
    acknowledgement keys (gateway.key, gateway.ack.key), a ledger (ledger.sqlite, link-keys)
    with the seal registered and enrolled, so that its ACKs free the seal's journal after a
    Verify (SPEC §5.11). Returns the countersigning key."""
    key = GatewayKey.generate()
    key.save(work / "gateway.key")
    ack_key = P256Key.generate()
    ack_key.save(work / "gateway.ack.key", "acknowledgement key")
    ledger = Ledger(work / "ledger.sqlite", LinkKeyStore(work / "link-keys"), create=True)
    try:
        ledger.add_device(device, device_key, seal_public)
        cert = enrol(device, ack_key.public)
        ledger.enrol(device, cert.to_json(), cert.serial)
    finally:
        ledger.close()
    return key
