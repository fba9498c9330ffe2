"""The seal's public key: P-256, made inside the seal's security chip, checked on every record.

A seal signs each record's seal digest (SPEC §4.1) with ECDSA P-256 inside its chip; the wire
form is r || s (64 bytes) and the public key X || Y (64 bytes), as the ATECC608 reads them out.
The gateway keeps only this public half: nothing on the gateway host can make a valid `sig`.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from sealink.errors import KeyFileError

__all__ = ["SEAL_KEY_LEN", "SealKey", "parse_seal_key"]

SEAL_KEY_LEN = 64
_COORD = 32
# The digest is SHA-256 already: the chip signs the 32 bytes it is given (Nonce pass-through,
# then Sign external), so the host verifies the prehashed digest.
_ALGORITHM = ec.ECDSA(utils.Prehashed(hashes.SHA256()))


# Verdicts checked ahead and not yet asked for; more would mean nobody is asking (a bound).
_AHEAD_MAX = 256


class SealKey:
    """Verifies seal signatures. OpenSSL's P-256 verify is most of a record's host cost
    (`make bench`: ingest) and releases the GIL, so the session checks a chunk's signatures in
    a worker thread (`prefetch`) while the loop serves other links; `verify` then takes the
    verdict made ahead, or checks on the spot."""

    def __init__(self, public: bytes) -> None:
        if len(public) != SEAL_KEY_LEN:
            raise ValueError(f"a seal key is {SEAL_KEY_LEN} bytes (X || Y), got {len(public)}")
        try:
            self._key = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b"\x04" + public
            )
        except ValueError:
            raise ValueError("not a point on P-256") from None
        self.public = bytes(public)
        self._ahead: dict[tuple[bytes, bytes], bool] = {}

    def verify(self, digest: bytes, sig: bytes) -> bool:
        ahead = self._ahead.pop((digest, sig), None)
        return self._check(digest, sig) if ahead is None else ahead

    def prefetch(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """Check (digest, sig) pairs now, for `verify` to answer later. Any thread."""
        for digest, sig in pairs:
            if len(self._ahead) >= _AHEAD_MAX:
                return
            self._ahead[(digest, sig)] = self._check(digest, sig)

    def _check(self, digest: bytes, sig: bytes) -> bool:
        r = int.from_bytes(sig[:_COORD], "big")
        s = int.from_bytes(sig[_COORD:], "big")
        if len(sig) != 2 * _COORD or not (r and s):
            return False
        try:
            self._key.verify(utils.encode_dss_signature(r, s), digest, _ALGORITHM)
        except InvalidSignature:
            return False
        return True


def parse_seal_key(text: str, where: str) -> bytes:
    """A seal's public key as 128 hex digits (X || Y), or 130 with the 04 of SEC 1's
    uncompressed form; checked to be a point on P-256."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise KeyFileError(f"{where}: not hex") from None
    if len(raw) == SEAL_KEY_LEN + 1 and raw[0] == 4:
        raw = raw[1:]
    try:
        SealKey(raw)
    except ValueError as exc:
        raise KeyFileError(f"{where}: {exc}") from None
    return raw
