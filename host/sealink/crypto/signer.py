"""Gateway countersignature: COSE_Sign1 (RFC 9052) with EdDSA over Ed25519, and its key file.

COSE_Sign1 = tag 18 [ protected: bstr({1: -8, 4: kid}), unprotected: {}, payload: bstr, sig ]
payload    = {"counter": uint, "device": tstr, "event": bstr, "gateway": tstr, "received_ms": uint}
             (deterministic CBOR; "event" is the device's EVENT wire payload, byte for byte)
kid        = the first 8 bytes of SHA-256(raw 32-byte Ed25519 public key)

See protocol/SPEC.md §11. Private keys never leave this module in any printable form.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# libsodium signs Ed25519 in ~2/3 of the time OpenSSL takes through cryptography, and signing
# is the largest single cost per event; Ed25519 is deterministic, so the bytes are the same
# (host/tests/test_fastpath.py).
from nacl import bindings as sodium

from sealink.errors import KeyFileError

__all__ = [
    "ALG_EDDSA",
    "GatewayKey",
    "cbor_head",
    "check_private_file",
    "countersign_payload",
    "countersign_payload_reference",
    "key_id",
    "load_ed25519",
]

ALG_EDDSA = -8
_HDR_ALG = 1
_HDR_KID = 4
_TAG_SIGN1 = 18
_SIGNATURE_LEN = 64
_COSE_KEY_OKP = 1
_COSE_CRV_ED25519 = 6


# tag 18 + array(4); array(4) + "Signature1"
_SIGN1_HEAD = b"\xd2\x84"
_SIG_STRUCTURE_HEAD = b"\x84\x6aSignature1"


def key_id(public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:8]


def save_private_key(
    key: Ed25519PrivateKey | EllipticCurvePrivateKey, path: Path, what: str, *, overwrite: bool
) -> None:
    """Write `key` PKCS#8 PEM, created 0600 (never briefly readable by others)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(path, pem, what, overwrite=overwrite)


def write_private_file(path: Path, data: bytes, what: str, *, overwrite: bool) -> None:
    """Write `data`, created 0600 (never briefly readable by others)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{what} {path}: already exists; not overwriting") from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path}: cannot write ({exc.strerror})") from None
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data)


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret file that anyone but its owner may read or write."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"{what} {path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"{what} {path}: not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{what} {path}: mode {stat.S_IMODE(mode):04o} lets others read it; "
            f"run: chmod 600 {path}"
        )


# The countersigned map's keys in deterministic order (length first, then bytewise).
_CS_EVENT = b"\x65event"
_CS_DEVICE = b"\x66device"
_CS_COUNTER = b"\x67counter"
_CS_GATEWAY = b"\x67gateway"
_CS_RECEIVED = b"\x6breceived_ms"
_CS_MAP_EVENT = b"\xa5" + _CS_EVENT  # map(5), then the first key
_U64_END = 1 << 64


def cbor_head(major: int, n: int) -> bytes:
    """A CBOR head (RFC 8949 §3), shortest form; n < 2**64."""
    top = major << 5
    if n < 24:
        return bytes([top | n])
    if n < 0x100:
        return bytes([top | 24, n])
    if n < 0x10000:
        return bytes([top | 25]) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes([top | 26]) + n.to_bytes(4, "big")
    return bytes([top | 27]) + n.to_bytes(8, "big")


def countersign_payload(
    device: str, counter: int, event: bytes, received_ms: int, gateway: str
) -> bytes:
    """Deterministic CBOR of the countersigned map, assembled from fixed pieces: the same bytes
    as `countersign_payload_reference` (host/tests/test_fastpath.py), at a fraction of the
    cost of cbor2's canonical map encoder, once per event."""
    if not (0 <= counter < _U64_END and 0 <= received_ms < _U64_END):
        return countersign_payload_reference(device, counter, event, received_ms, gateway)
    device_part, gateway_part = _countersign_parts(device, gateway)
    return b"".join(
        (
            _CS_MAP_EVENT,
            cbor_head(2, len(event)),
            event,
            device_part,
            cbor_head(0, counter),
            gateway_part,
            cbor_head(0, received_ms),
        )
    )


@functools.lru_cache(maxsize=4096)
def _countersign_parts(device: str, gateway: str) -> tuple[bytes, bytes]:
    """The pieces between the variable fields that depend only on the device and gateway."""
    device_raw = device.encode()
    gateway_raw = gateway.encode()
    return (
        _CS_DEVICE + cbor_head(3, len(device_raw)) + device_raw + _CS_COUNTER,
        _CS_GATEWAY + cbor_head(3, len(gateway_raw)) + gateway_raw + _CS_RECEIVED,
    )


def countersign_payload_reference(
    device: str, counter: int, event: bytes, received_ms: int, gateway: str
) -> bytes:
    return bytes(
        cbor2.dumps(
            {
                "counter": counter,
                "device": device,
                "event": event,
                "gateway": gateway,
                "received_ms": received_ms,
            },
            canonical=True,
        )
    )


def load_ed25519(path: Path, what: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from a 0600 PEM file (KeyFileError says what is wrong)."""
    check_private_file(path, what)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise KeyFileError(f"{what} {path}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{what} {path}: not an Ed25519 key")
    return key


@dataclass(frozen=True, repr=False, eq=False)
class GatewayKey:
    """The gateway's Ed25519 signing key. repr() never shows the private half."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> GatewayKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GatewayKey:
        return cls(load_ed25519(Path(path), "gateway key"))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        save_private_key(self.private, Path(path), "gateway key", overwrite=overwrite)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def kid(self) -> bytes:
        return key_id(self.public)

    def public_pem(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_raw(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def cose_key(self) -> bytes:
        """The public key as a COSE_Key (RFC 9053 OKP): {1: 1, 2: kid, 3: -8, -1: 6, -2: x}."""
        cose_key: dict[int, Any] = {
            1: _COSE_KEY_OKP,
            2: self.kid,
            3: ALG_EDDSA,
            -1: _COSE_CRV_ED25519,
            -2: self.public_raw(),
        }
        return bytes(cbor2.dumps(cose_key, canonical=True))

    def sign1(self, payload: bytes) -> bytes:
        """COSE_Sign1, assembled from fixed CBOR heads: the same bytes cbor2 would produce
        (host/tests/test_fastpath.py checks it), without four encoder calls per event."""
        to_sign_head, sign1_head = self._heads
        payload_head = cbor_head(2, len(payload))
        signature = self._sign(b"".join((to_sign_head, payload_head, payload)))
        return b"".join((sign1_head, payload_head, payload, b"\x58\x40", signature))

    def sign1_reference(self, payload: bytes) -> bytes:
        """The same COSE_Sign1 built with cbor2, the reference the tests compare against."""
        protected = cbor2.dumps({_HDR_ALG: ALG_EDDSA, _HDR_KID: self.kid}, canonical=True)
        to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
        signature = self.private.sign(to_sign)
        return bytes(cbor2.dumps(cbor2.CBORTag(_TAG_SIGN1, [protected, {}, payload, signature])))

    @functools.cached_property
    def _sign(self) -> Callable[[bytes], bytes]:
        """The Ed25519 signing function for this key (the private half stays in its closure)."""
        seed = self.private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        secret = sodium.crypto_sign_seed_keypair(seed)[1]
        sign = sodium.crypto_sign

        def sign_detached(message: bytes) -> bytes:
            signed: bytes = sign(message, secret)  # signature + message
            return signed[:_SIGNATURE_LEN]

        return sign_detached

    @functools.cached_property
    def _heads(self) -> tuple[bytes, bytes]:
        """What precedes the payload's bstr head: in the Sig_structure (Signature1, protected,
        empty external_aad) and in the COSE_Sign1 (tag, protected, empty unprotected map)."""
        protected = cbor_head(2, len(self._protected)) + self._protected
        return _SIG_STRUCTURE_HEAD + protected + b"\x40", _SIGN1_HEAD + protected + b"\xa0"

    @functools.cached_property
    def _protected(self) -> bytes:
        return bytes(cbor2.dumps({_HDR_ALG: ALG_EDDSA, _HDR_KID: self.kid}, canonical=True))

    def __repr__(self) -> str:
        return f"<GatewayKey kid={self.kid.hex()}>"
