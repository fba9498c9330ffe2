"""sealink_verify: the auditor's offline verifier of a sealink evidence export.

An independent implementation: it depends only on cwt, cbor2 and the standard library and never
imports sealink or sealproto, so a bug in the gateway's code cannot hide in the check of its
output. `tlog` re-implements RFC 9162 proofs and the C2SP checkpoint note from their texts;
`bundle` checks one impression's evidence bundle (SPEC §14.5), `receipt` one record's COSE
Receipt (RFC 9942, SPEC §14.8).
"""

from sealink_verify.audit import (
    DeviceAudit,
    GapStatement,
    derive_kid,
    read_export,
    verify_export,
)
from sealink_verify.bundle import BundleReport, read_bundle, verify_bundle
from sealink_verify.evidence import EvidenceAudit, check_checkpoints, check_proof
from sealink_verify.receipt import ReceiptReport, verify_receipt

__all__ = [
    "BundleReport",
    "DeviceAudit",
    "EvidenceAudit",
    "GapStatement",
    "ReceiptReport",
    "check_checkpoints",
    "check_proof",
    "derive_kid",
    "read_bundle",
    "read_export",
    "verify_bundle",
    "verify_export",
    "verify_receipt",
]
