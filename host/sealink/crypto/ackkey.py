"""The gateway's acknowledgement key (SPEC §5.11), wherever it is held.

Without a TPM it is a 0600 PEM file (P256Key): whoever copies the file signs as the gateway.
With `[gateway] ack_key_tpm` it is made inside the gateway's TPM (TpmKey) and the file holds
only the TPM-wrapped blob, which signs nothing on any other machine. Both sign STORED digests
r || s and give their public key X || Y; the link machine takes either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from sealink.crypto.p256 import P256Key
from sealink.crypto.tpmkey import TpmKey, is_tpm_key_file
from sealink.errors import KeyFileError

__all__ = ["AckKey", "create_ack_key", "held_where", "open_ack_key"]

_WHAT = "acknowledgement key"


class AckKey(Protocol):
    @property
    def public(self) -> bytes:
        """X || Y, 64 bytes."""
        ...

    @property
    def signs_slowly(self) -> bool:
        """Milliseconds a signature or more (a TPM): the gateway signs off its event loop."""
        ...

    def sign(self, digest: bytes) -> bytes:
        """r || s over a 32-byte digest."""
        ...


@contextlib.contextmanager
def open_ack_key(path: Path, tpm: str | None) -> Iterator[AckKey]:
    """The key in `path`: a PEM private key, or (`tpm` a TCTI) the blob that TPM made."""
    if tpm is not None:
        with TpmKey.load(tpm, path, _WHAT) as key:
            yield key
        return
    try:
        pem = P256Key.load(path, _WHAT)
    except KeyFileError:
        if is_tpm_key_file(path):
            raise KeyFileError(
                f"{_WHAT} {path}: a TPM-wrapped key; set [gateway] ack_key_tpm to the TPM "
                "that made it (device:/dev/tpmrm0)"
            ) from None
        raise
    yield pem


def create_ack_key(path: Path, tpm: str | None, *, overwrite: bool) -> bytes:
    """Make the key (inside `tpm` when given) and write `path`, 0600; returns the public key."""
    if tpm is not None:
        with TpmKey.create(tpm, path, _WHAT, overwrite=overwrite) as key:
            return key.public
    pem = P256Key.generate()
    pem.save(path, _WHAT, overwrite=overwrite)
    return pem.public


def held_where(path: Path, tpm: str | None) -> str:
    """Where the private half is, in words for `sealink keys`."""
    if tpm is not None:
        return f"inside the TPM at {tpm}; {path} holds only the TPM-wrapped blob"
    return f"in the file {path} (0600)"
