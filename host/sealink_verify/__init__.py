"""sealink_verify: the auditor's offline verifier of a sealink evidence export.

An independent implementation: it depends only on cwt, cbor2 and the standard library and never
imports sealink or sealproto, so a bug in the gateway's code cannot hide in the check of its
output.
"""

from sealink_verify.audit import DeviceAudit, GapStatement, derive_kid, verify_export

__all__ = ["DeviceAudit", "GapStatement", "derive_kid", "verify_export"]
