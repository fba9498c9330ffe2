"""The enrolment authority of simulated and emulated seals (SPEC §5.11), and certificates.

A real seal's firmware carries its organisation's authority key (`tools/build.py
--authority`); the emulated board gets this one, derived from a fixed label, so that a test, the
demo or a bench can enrol its seals with a gateway in one call. Nothing outside the simulator
trusts it.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric import ec
from sealink.crypto.enrolment import Certificate, certify
from sealink.crypto.p256 import P256Key

__all__ = ["SIM_AUTHORITY", "enrol"]

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
