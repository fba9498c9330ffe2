"""The gateway's keys and its COSE_Sign1 countersignature (SPEC §11.1)."""

from sealink.crypto.signer import GatewayKey, check_private_file, countersign_payload

__all__ = ["GatewayKey", "check_private_file", "countersign_payload"]
