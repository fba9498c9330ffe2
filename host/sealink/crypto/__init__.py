"""The gateway's keys, the seals' link keys and its COSE_Sign1 countersignature (SPEC §11.1)."""

from sealink.crypto.keystore import LinkKeys, LinkKeyStore
from sealink.crypto.signer import GatewayKey, check_private_file, countersign_payload

__all__ = ["GatewayKey", "LinkKeyStore", "LinkKeys", "check_private_file", "countersign_payload"]
