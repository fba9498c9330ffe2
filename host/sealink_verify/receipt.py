"""A COSE Receipt of inclusion (RFC 9942 §5.2, RFC9162_SHA256; SPEC §14.8), checked offline.

    18([ protected:   bstr .cbor {1: -8, 4: kid, 395: 1},
         unprotected: {396: {-1: [bstr .cbor [tree_size, leaf_index, [+ bstr]]]}},
         payload:     nil (detached: the Merkle root the proof computes),
         signature:   Ed25519 ])

The steps of SPEC §14.8 in order, each one named check: the shape, the VDS, the proof, the
root recomputed from the leaf (tlog's own RFC 9162 code), the key the history names for that
tree size, the signature over the detached root (cwt's `detached_payload`); given a bundle, that
root and size are its signed checkpoint's (the signature covers the root, not the size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cbor2
from cwt import COSE, COSEKey

from sealink_verify import tlog
from sealink_verify.bundle import BUNDLE_VERSION_ROTATED, Bundle, Check, fingerprint
from sealink_verify.keyhistory import KeyHistory, KeyHistoryError, from_entries, history_entries

__all__ = ["ReceiptReport", "verify_receipt"]

_TAG_SIGN1 = 18
_HDR_ALG = 1
_HDR_KID = 4
_HDR_VDS = 395
_HDR_VDP = 396
_VDS_RFC9162_SHA256 = 1
_VDP_INCLUSION = -1
_ALG_EDDSA = -8
_KID_LEN = 8
_HASH_LEN = 32


@dataclass
class ReceiptReport:
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    key: str | None = None  # fingerprint of the key relied on

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "verified" if self.ok else "failed",
            "verified": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "problems": self.problems,
            "facts": self.facts,
            "keys": {"gateway": {"fingerprint": self.key, "pinned": True}},
        }

    def text(self) -> str:
        f = self.facts
        if self.ok:
            head = (
                f"This receipt proves that leaf {f['leaf_index']} (leaf hash {f['leaf_hash']}) "
                f"is in the gateway's log of size {f['tree_size']}, whose root "
                f"{f['root']} the gateway key signed."
            )
        else:
            head = f"This receipt does NOT prove the leaf: {len(self.problems)} checks FAILED."
        lines = [head, f"gateway key SHA-256 {self.key} (pinned by the auditor)"]
        lines.extend(f"{'OK    ' if c.ok else 'FAILED'} {c.name}: {c.detail}" for c in self.checks)
        return "\n".join(lines) + "\n"


@dataclass
class _Parsed:
    protected: dict[Any, Any]
    tree_size: int
    leaf_index: int
    path: list[bytes]


def _shape(receipt: bytes) -> tuple[_Parsed | None, str]:
    """The receipt's fields if it has the shape of SPEC §14.8 (else None and why not)."""
    try:
        outer = cbor2.loads(receipt)
    except Exception as exc:  # cbor2 raises several types on malformed input
        return None, f"not CBOR: {exc}"
    if not isinstance(outer, cbor2.CBORTag) or outer.tag != _TAG_SIGN1:
        return None, "not a tagged COSE_Sign1 (tag 18)"
    if not isinstance(outer.value, list) or len(outer.value) != 4:
        return None, "a COSE_Sign1 is an array of 4"
    protected_raw, unprotected, payload, signature = outer.value
    try:
        protected = cbor2.loads(protected_raw) if isinstance(protected_raw, bytes) else None
    except Exception:  # as above
        protected = None
    if not isinstance(protected, dict):
        return None, "the protected header is not a bstr-wrapped map"
    if protected.get(_HDR_ALG) != _ALG_EDDSA:
        return None, f"alg {protected.get(_HDR_ALG)!r}, not EdDSA (-8)"
    kid = protected.get(_HDR_KID)
    if not isinstance(kid, bytes) or len(kid) != _KID_LEN:
        return None, "no 8-byte kid (4) in the protected header"
    if not isinstance(protected.get(_HDR_VDS), int):
        return None, "no vds (395) in the protected header"
    if payload is not None:
        return None, "the payload is not detached (nil): the root must be recomputed"
    if not isinstance(signature, bytes):
        return None, "the signature is not a bstr"
    vdp = unprotected.get(_HDR_VDP) if isinstance(unprotected, dict) else None
    proofs = vdp.get(_VDP_INCLUSION) if isinstance(vdp, dict) else None
    if not isinstance(proofs, list) or len(proofs) != 1 or not isinstance(proofs[0], bytes):
        return None, "no vdp (396) holding one inclusion proof (-1) in the unprotected header"
    try:
        proof = cbor2.loads(proofs[0])
    except Exception:  # as above
        proof = None
    if not (isinstance(proof, list) and len(proof) == 3 and isinstance(proof[2], list)):
        return None, "the inclusion proof is not [tree_size, leaf_index, [path...]]"
    tree_size, leaf_index, path = proof
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in proof[:2]):
        return None, "tree_size and leaf_index are not unsigned integers"
    if not path or not all(isinstance(p, bytes) and len(p) == _HASH_LEN for p in path):
        return None, "the inclusion path is not one or more 32-byte hashes"
    return _Parsed(protected, tree_size, leaf_index, path), ""


class _Verifier:
    def __init__(
        self, receipt: bytes, leaf_data: bytes, keys: KeyHistory, leaf_index: int | None
    ) -> None:
        self.receipt = receipt
        self.leaf_data = leaf_data
        self.keys = keys
        self.leaf_index = leaf_index
        self.report = ReceiptReport()

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.report.checks.append(Check(name, ok, detail))

    def run(self) -> ReceiptReport:
        parsed, why = _shape(self.receipt)
        if parsed is None:
            self.add("structure", False, why)
            return self.report
        self.add("structure", True, "a tagged COSE_Sign1 with one inclusion proof")
        vds = parsed.protected[_HDR_VDS]
        self.add("vds", vds == _VDS_RFC9162_SHA256, f"vds {vds} (1: RFC9162_SHA256)")
        if vds != _VDS_RFC9162_SHA256:
            return self.report
        leaf = tlog.rfc9162_leaf(self.leaf_data)
        root = tlog.inclusion_root(leaf, parsed.leaf_index, parsed.tree_size, parsed.path)
        self.report.facts = {
            "tree_size": parsed.tree_size,
            "leaf_index": parsed.leaf_index,
            "leaf_hash": leaf.hex(),
            "root": None if root is None else root.hex(),
            "kid": parsed.protected[_HDR_KID].hex(),
        }
        where = f"leaf {parsed.leaf_index} of {parsed.tree_size}"
        if self.leaf_index not in (None, parsed.leaf_index):
            self.add("inclusion", False, f"{where}: the bundle's record is leaf {self.leaf_index}")
            return self.report
        if root is None:
            self.add("inclusion", False, f"{where}: the path does not fit that index and size")
            return self.report
        self.add("inclusion", True, f"{where}: the path computes a root (RFC 9162 §2.1.3.2)")
        self._signature(parsed, root)
        return self.report

    def _signature(self, parsed: _Parsed, root: bytes) -> None:
        kid = parsed.protected[_HDR_KID]
        epoch = self.keys.by_kid(kid)
        if epoch is None:
            self.add("key", False, f"signed by kid {kid.hex()}, not a key of the gateway's")
            return
        self.report.key = fingerprint(epoch.public)
        if epoch not in self.keys.for_tree(parsed.tree_size):
            self.add("key", False, f"{epoch.name()} signs no tree of size {parsed.tree_size}")
            return
        self.add("key", True, f"{epoch.name()}, a key for trees of size {parsed.tree_size}")
        key = COSEKey.from_pem(epoch.pem(), kid=epoch.kid)
        try:
            COSE.new().decode(self.receipt, key, detached_payload=root)
        except Exception as exc:  # cwt raises several types; any of them means "not verified"
            self.add("signature", False, f"does not verify over the recomputed root: {exc}")
            return
        self.add("signature", True, "Ed25519 by the gateway over the recomputed root")


def _same_checkpoint(note: str, keys: KeyHistory, facts: dict[str, Any]) -> Check:
    """The receipt's tree size is in its unprotected header, and the signature covers only the
    root: a bundle's signed checkpoint is what ties that root to that size."""
    try:
        checkpoint = keys.open_checkpoint(note)
    except tlog.NoteError as exc:
        return Check("checkpoint", False, f"the bundle's checkpoint does not verify: {exc}")
    if (checkpoint.size, checkpoint.root.hex()) != (facts["tree_size"], facts["root"]):
        return Check(
            "checkpoint",
            False,
            f"the receipt's root and size {facts['tree_size']} are not those of the bundle's "
            f"signed checkpoint of size {checkpoint.size}",
        )
    return Check(
        "checkpoint", True, f"the root of the bundle's checkpoint of size {checkpoint.size}"
    )


def _bundle_checks(bundle: Bundle, pinned: bytes) -> tuple[bytes, KeyHistory, list[Check]]:
    """A bundle's record's leaf data (SPEC §14.1, from its record and countersignature), the key
    history walked from the pinned key, and the checks of both."""
    data = tlog.event_leaf_data(bundle.device, bundle.counter, bundle.record, bundle.cose)
    checks = [
        Check("leaf", True, "the bundle's leaf, of its record and signature")
        if data == bundle.leaf_data
        else Check("leaf", False, "the bundle's leaf.data is not its record's leaf")
    ]
    keys = KeyHistory.one(pinned)
    if bundle.version == BUNDLE_VERSION_ROTATED:
        try:
            keys = from_entries(pinned, history_entries(bundle.transitions), bundle.gateway_id)
            checks.append(Check("key_history", True, f"{len(keys.epochs)} gateway keys"))
        except KeyHistoryError as exc:
            checks.append(Check("key_history", False, str(exc)))
    return data, keys, checks


def verify_receipt(receipt: bytes, pinned: bytes, leaf: bytes | Bundle) -> ReceiptReport:
    """Check a receipt (SPEC §14.8) under the pinned (first) gateway key, for the leaf of that
    data, or for a bundle's record: its leaf computed from the record and countersignature as
    SPEC §14.1 does, at the bundle's leaf index, with the bundle's key history (§14.7)."""
    if isinstance(leaf, Bundle):
        data, keys, early = _bundle_checks(leaf, pinned)
        verifier = _Verifier(receipt, data, keys, leaf.leaf_index)
    else:
        keys, early = KeyHistory.one(pinned), []
        verifier = _Verifier(receipt, leaf, keys, None)
    verifier.report.checks.extend(early)
    report = verifier.run()
    if isinstance(leaf, Bundle) and any(c.name == "inclusion" and c.ok for c in report.checks):
        report.checks.append(_same_checkpoint(leaf.note, keys, report.facts))
    if report.key is None:
        report.key = fingerprint(pinned)
    return report
