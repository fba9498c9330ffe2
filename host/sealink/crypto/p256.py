"""P-256 signing keys in the form an ATECC608 verifies: r || s signatures, X || Y public keys.

Two keys sign what a seal's chip checks (SPEC §5.11): the enrolment authority's, which certifies
which gateway a seal is enrolled with, and each gateway's acknowledgement key, which signs that
the gateway stored a seal's records (the seal then frees their journal space). The chip verifies
ECDSA P-256 only, so neither can be the gateway's Ed25519 countersigning key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from sealink.crypto.signer import check_private_file, save_private_key
from sealink.errors import KeyFileError

__all__ = ["P256Key"]

_COORD = 32
# The chip verifies a 32-byte digest it is given (Nonce pass-through, then Verify external).
_ALGORITHM = ec.ECDSA(utils.Prehashed(hashes.SHA256()))


@dataclass(frozen=True, repr=False, eq=False)
class P256Key:
    """A P-256 private key. repr() never shows the private half."""

    private: ec.EllipticCurvePrivateKey
    # ~40 µs (`make bench`: seal_checks, ack_sign): less than a hop to a worker thread.
    signs_slowly: ClassVar[bool] = False

    @classmethod
    def generate(cls) -> P256Key:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load(cls, path: str | os.PathLike[str], what: str) -> P256Key:
        path = Path(path)
        check_private_file(path, what)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as exc:
            raise KeyFileError(f"{what} {path}: not a PEM private key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise KeyFileError(f"{what} {path}: not a P-256 key")
        return cls(key)

    def save(self, path: str | os.PathLike[str], what: str, *, overwrite: bool = False) -> None:
        save_private_key(self.private, Path(path), what, overwrite=overwrite)

    @property
    def public(self) -> bytes:
        """X || Y, 64 bytes: the form the chip's Verify command takes."""
        point = self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return point[1:]

    def sign(self, digest: bytes) -> bytes:
        """r || s over a 32-byte digest."""
        der = self.private.sign(digest, _ALGORITHM)
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big")
