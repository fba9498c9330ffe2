"""A COSE Receipt of inclusion (RFC 9942 §5.2, RFC9162_SHA256) for one leaf of the log
(SPEC §14.8): the gateway's signature over the root of a tree size it checkpointed, the payload
detached so that a verifier must recompute that root from the leaf and the proof.

    18([ protected:   bstr .cbor {1: -8 (EdDSA), 4: kid, 395 (vds): 1 (RFC9162_SHA256)},
         unprotected: {396 (vdp): {-1 (inclusion): [bstr .cbor [tree_size, leaf_index, path]]}},
         payload:     nil,
         signature:   Ed25519 over ["Signature1", protected, h'', root] ])

Deterministic CBOR throughout, so one leaf, tree size and key give one byte string.
"""

from __future__ import annotations

from collections.abc import Sequence

import cbor2

from sealink.crypto.signer import ALG_EDDSA, GatewayKey

__all__ = [
    "HDR_VDP",
    "HDR_VDS",
    "VDP_INCLUSION",
    "VDS_RFC9162_SHA256",
    "make_receipt",
    "receipt_json",
]

# RFC 9942 §2 (IANA early allocations) and §5.1, §5.2.
HDR_VDS = 395
HDR_VDP = 396
VDS_RFC9162_SHA256 = 1
VDP_INCLUSION = -1
_HDR_ALG = 1
_HDR_KID = 4
_TAG_SIGN1 = 18


def make_receipt(
    key: GatewayKey, tree_size: int, leaf_index: int, path: Sequence[bytes], root: bytes
) -> bytes:
    """The receipt that `path` proves leaf `leaf_index` under `root`, the MTH of the first
    `tree_size` leaves. RFC 9942's CDDL asks for at least one path node: a tree of one leaf has
    none, so it gets no receipt (ValueError)."""
    if not path:
        raise ValueError("a tree of one leaf has no inclusion path: RFC 9942 needs one node")
    protected = cbor2.dumps(
        {_HDR_ALG: ALG_EDDSA, _HDR_KID: key.kid, HDR_VDS: VDS_RFC9162_SHA256}, canonical=True
    )
    proof = cbor2.dumps([tree_size, leaf_index, list(path)], canonical=True)
    unprotected = {HDR_VDP: {VDP_INCLUSION: [proof]}}
    signature = key.private.sign(cbor2.dumps(["Signature1", protected, b"", root]))
    sign1 = cbor2.CBORTag(_TAG_SIGN1, [protected, unprotected, None, signature])
    return bytes(cbor2.dumps(sign1, canonical=True))


def receipt_json(receipt: bytes) -> dict[str, object]:
    """`sealink evidence receipt --json`: the receipt's fields, byte strings in hex."""
    protected, unprotected, _, signature = cbor2.loads(receipt).value
    header = cbor2.loads(protected)
    proofs = unprotected[HDR_VDP][VDP_INCLUSION]
    tree_size, leaf_index, path = cbor2.loads(proofs[0])
    return {
        "type": "receipt",
        "alg": header[_HDR_ALG],
        "kid": header[_HDR_KID].hex(),
        "vds": header[HDR_VDS],
        "tree_size": tree_size,
        "leaf_index": leaf_index,
        "path": [p.hex() for p in path],
        "signature": signature.hex(),
        "receipt": receipt.hex(),
    }
