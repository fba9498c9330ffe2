"""SPEC §11.5's wire, sans-IO: an approver's signed request, what the gateway refuses before it
looks at seq, time or rights, and the check of the gateway's signed result. The vector file
protocol/vectors/approval.json is made here."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sealink.approvals import (
    ApprovalRefused,
    ApproverKey,
    ResultError,
    build_request,
    check_body,
    claimed,
    open_request,
    verify_result,
)
from sealink.crypto import GatewayKey
from sealink.errors import KeyFileError
from sealink.mqtt.signed import MessageSigner

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "approval.json"
TOPIC = "sealink/cmd/gw-1/request"
SEQ = 1_767_225_600_000_000
NOW_MS = 1_767_225_600_000
BODY = {
    "request": "po-4711",
    "action": "permit",
    "device": "seal-0001",
    "requested_by": "A. Approver",
    "count": 2,
    "not_before_s": 1_767_225_600,
    "not_after_s": 1_767_229_200,
    "document_sha256": hashlib.sha256(b"contract").hexdigest(),
}


def _key(label: str) -> ApproverKey:
    seed = hashlib.sha256(b"sealink vectors/" + label.encode()).digest()
    return ApproverKey(Ed25519PrivateKey.from_private_bytes(seed))


def _resigned(key: ApproverKey, **changes: Any) -> bytes:
    """A request whose signed map has `changes` (a field replaced by another value)."""
    payload = {
        "approver": "erp",
        "body": json.dumps(BODY, sort_keys=True).encode(),
        "seq": SEQ,
        "time_ms": NOW_MS,
        "topic": TOPIC,
        **changes,
    }
    return key.sign1(bytes(cbor2.dumps(payload, canonical=True)))


def _vectors() -> dict[str, Any]:
    key, other = _key("approval approver key"), _key("approval other key")
    request = build_request(key, "erp", TOPIC, BODY, seq=SEQ, now_ms=NOW_MS)
    bad_body = {**BODY, "count": "two"}
    forgeries = [
        ("not COSE: the body as JSON", TOPIC, json.dumps(BODY).encode(), "bad_signature"),
        ("signed by a key erp does not hold", TOPIC,
         build_request(other, "erp", TOPIC, BODY, seq=SEQ, now_ms=NOW_MS), "bad_signature"),
        ("a field changed after signing", TOPIC, request.replace(b'"count": 2', b'"count": 9'),
         "bad_signature"),
        ("an approver nobody registered", TOPIC,
         build_request(key, "someone", TOPIC, BODY, seq=SEQ, now_ms=NOW_MS), "unknown_approver"),
        ("gw-2's request replayed onto gw-1", TOPIC,
         build_request(key, "erp", "sealink/cmd/gw-2/request", BODY, seq=SEQ, now_ms=NOW_MS),
         "invalid"),
        ("a count that is not a number", TOPIC,
         _resigned(key, body=json.dumps(bad_body).encode()), "invalid"),
    ]  # fmt: skip
    return {
        "about": "SPEC \u00a711.5: a permit request of approver erp (Ed25519 seed "
        "SHA-256('sealink vectors/approval approver key')) to gateway gw-1, and forgeries, each "
        "with the reason the gateway refuses it; regenerate with SEALINK_WRITE_VECTORS=1 pytest "
        "host/tests/test_approvals_wire.py",
        "approver": "erp",
        "approver_public_key": key.public_raw().hex(),
        "kid": key.kid.hex(),
        "topic": TOPIC,
        "payload": request.hex(),
        "body": BODY,
        "seq": SEQ,
        "time_ms": NOW_MS,
        "forgeries": [
            {"name": name, "topic": t, "payload": p.hex(), "refused": reason}
            for name, t, p, reason in forgeries
        ],
    }


def _registered(vectors: dict[str, Any]) -> dict[str, bytes]:
    return {vectors["approver"]: bytes.fromhex(vectors["approver_public_key"])}


def test_vector_file_is_current_and_each_forgery_gets_its_reason() -> None:
    expected = _vectors()
    if os.environ.get("SEALINK_WRITE_VECTORS"):
        VECTORS.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    vectors = json.loads(VECTORS.read_text())
    assert vectors == expected, "regenerate: SEALINK_WRITE_VECTORS=1 pytest " + __file__
    keys = _registered(vectors)
    payload = bytes.fromhex(vectors["payload"])
    opened = open_request(payload, vectors["topic"], keys["erp"])
    assert (opened.approver, opened.seq, opened.time_ms, opened.body) == (
        "erp",
        vectors["seq"],
        vectors["time_ms"],
        vectors["body"],
    )
    # By hand, from the text: the Sig_structure, the kid, the signed map.
    protected, _, signed, signature = cbor2.loads(payload).value
    public = Ed25519PublicKey.from_public_bytes(keys["erp"])
    public.verify(signature, cbor2.dumps(["Signature1", protected, b"", signed]))
    assert cbor2.loads(protected) == {1: -8, 4: bytes.fromhex(vectors["kid"])}
    assert cbor2.dumps(cbor2.loads(signed), canonical=True) == signed
    for case in vectors["forgeries"]:
        approver, _ = claimed(bytes.fromhex(case["payload"]))
        with pytest.raises(ApprovalRefused) as refused:
            open_request(bytes.fromhex(case["payload"]), case["topic"], keys.get(approver or ""))
        assert refused.value.reason == case["refused"], case["name"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"request": "has space"}, "request"),
        ({"request": "x" * 65}, "request"),
        ({"action": "open"}, "action"),
        ({"device": ""}, "device"),
        ({"count": True}, "count"),
        ({"not_before_s": -1}, "not_before_s"),
        ({"document_sha256": "AB" * 32}, "document_sha256"),
        ({"lock": "open"}, "lock"),
        ({"requested_by": None}, "requested_by"),
    ],
)
def test_a_body_field_of_the_wrong_form_is_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ApprovalRefused) as refused:
        check_body({**BODY, **change})
    assert (refused.value.reason, refused.value.field) == ("invalid", field)
    missing = {k: v for k, v in BODY.items() if k != "not_after_s"}
    with pytest.raises(ApprovalRefused, match="not_after_s is missing"):
        check_body(missing)


def test_requests_of_one_process_have_strictly_increasing_seqs() -> None:
    key = ApproverKey.generate()
    seqs = [
        open_request(build_request(key, "erp", TOPIC, BODY), TOPIC, key.public_raw()).seq
        for _ in range(50)
    ]
    assert seqs == sorted(set(seqs))


def test_a_result_verifies_only_under_the_gateway_key_and_for_its_topic() -> None:
    gateway, other = GatewayKey.generate(), GatewayKey.generate()
    topic = "sealink/cmd/gw-1/result/erp"
    body = {"request": "po-4711", "state": "queued"}
    result = MessageSigner(gateway, "gw-1").sign(topic, body)
    assert verify_result(result, gateway.public_raw(), topic) == body
    with pytest.raises(ResultError, match="delivered on"):
        verify_result(result, gateway.public_raw(), "sealink/cmd/gw-1/result/other")
    with pytest.raises(ResultError, match="not signed"):
        verify_result(MessageSigner(other, "gw-1").sign(topic, body), gateway.public_raw(), topic)


def test_an_approver_key_file_is_private_and_named_as_such(tmp_path: Path) -> None:
    key = ApproverKey.generate()
    path = tmp_path / "erp.key"
    key.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert ApproverKey.load(path).public_raw() == key.public_raw()
    assert "PRIVATE" not in repr(key) and "ApproverKey" in repr(key)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"approver key .* lets others read it"):
        ApproverKey.load(path)
