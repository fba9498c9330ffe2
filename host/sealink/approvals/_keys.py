"""An approver's Ed25519 key (SPEC §11.5): the gateway key's file format and kid derivation,
under another name in every message, so an error never calls it the gateway's key."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealink.crypto.signer import GatewayKey, load_ed25519, save_private_key

__all__ = ["ApproverKey"]


class ApproverKey(GatewayKey):
    """Signs an approver's requests; the same COSE_Sign1 and kid as the gateway's key."""

    @classmethod
    def generate(cls) -> ApproverKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ApproverKey:
        return cls(load_ed25519(Path(path), "approver key"))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        save_private_key(self.private, Path(path), "approver key", overwrite=overwrite)

    def __repr__(self) -> str:
        return f"<ApproverKey kid={self.kid.hex()}>"
