"""`sealink-verify approver`: the auditor's own check of a fleet approver message (SPEC §11.7),
written from the SPEC text with cwt, never from sealink. Judged against the SPEC's vector (the
issue, the revocation and each forgery, with the refusal a gateway makes) and against messages
the fleet's code signs, so the two implementations cannot drift apart unseen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sealink.approvals import ApproverEntry, build_approver
from sealink.crypto import GatewayKey
from sealink_verify.cli import EXIT_FAILED, EXIT_UNUSABLE, EXIT_VERIFIED
from sealink_verify.cli import main as verify
from sealink_verify.mqtt import (
    BadSignature,
    MessageError,
    NotSigned,
    UnknownKey,
    WrongTopic,
    verify_approver_message,
)

VECTOR = json.loads(
    (Path(__file__).parents[2] / "protocol" / "vectors" / "approvers.json").read_text()
)
FLEET_KEY = bytes.fromhex(VECTOR["fleet_public_key"])
# The gateway's refusal (§11.7) and the verifier's failed check for the same message.
CHECK_FOR_REFUSAL: dict[str, tuple[type[MessageError], ...]] = {
    "bad_signature": (BadSignature, UnknownKey),
    "wrong_topic": (WrongTopic,),
    "invalid": (NotSigned,),
}


@pytest.mark.parametrize("said", ["issued", "revoked"])
def test_the_vectors_messages_verify_and_read_as_the_spec_says(said: str) -> None:
    vector = VECTOR[said]
    message = verify_approver_message(VECTOR["topic"], bytes.fromhex(vector["payload"]), FLEET_KEY)
    body = vector["body"]
    assert (message.name, message.state, message.reason, list(message.actions)) == (
        body["name"],
        body["state"],
        body["reason"],
        body["actions"],
    )
    assert message.public_key.hex() == body["public_key"]
    assert (message.seq, message.since_ms) == (vector["seq"], body["since_ms"])


@pytest.mark.parametrize("forgery", VECTOR["forgeries"], ids=lambda f: f["name"])
def test_each_forgery_of_the_vector_fails_the_check_its_refusal_names(
    forgery: dict[str, str],
) -> None:
    with pytest.raises(CHECK_FOR_REFUSAL[forgery["refused"]]):
        verify_approver_message(forgery["topic"], bytes.fromhex(forgery["payload"]), FLEET_KEY)


def test_what_the_fleet_signs_verifies_and_a_replay_onto_another_topic_does_not() -> None:
    key = GatewayKey.generate()
    entry = ApproverEntry("fleet-north", "erp", "active", bytes(32), ("bundle",), "", 5, 9, 10)
    payload = build_approver(key, "org", entry)
    message = verify_approver_message("org/fleet/approvers/erp", payload, key.public_raw())
    assert (message.fleet, message.name, message.actions, message.seq, message.time_ms) == (
        "fleet-north",
        "erp",
        ("bundle",),
        9,
        10,
    )
    with pytest.raises(WrongTopic):
        verify_approver_message("org/fleet/approvers/crm", payload, key.public_raw())
    with pytest.raises(WrongTopic):  # an approver's message put on a seal's registry topic
        verify_approver_message("org/fleet/registry/erp", payload, key.public_raw())
    with pytest.raises(UnknownKey):
        verify_approver_message(
            "org/fleet/approvers/erp", payload, GatewayKey.generate().public_raw()
        )


def test_the_cli_prints_the_verified_approver_and_names_what_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, forged = tmp_path / "good.cose", tmp_path / "forged.cose"
    good.write_bytes(bytes.fromhex(VECTOR["revoked"]["payload"]))
    forged.write_bytes(bytes.fromhex(VECTOR["forgeries"][0]["payload"]))
    args = ["approver", "--topic", VECTOR["topic"], "--fleet-key", FLEET_KEY.hex()]
    assert verify([*args, str(good)]) == EXIT_VERIFIED
    out = json.loads(capsys.readouterr().out)
    body = VECTOR["revoked"]["body"]
    assert (out["name"], out["state"], out["public_key"], out["actions"]) == (
        body["name"],
        body["state"],
        body["public_key"],
        body["actions"],
    )
    assert verify([*args, str(forged)]) == EXIT_FAILED
    assert "sealink-verify: " in capsys.readouterr().err
    assert verify([*args[:-1], "beef", str(good)]) == EXIT_UNUSABLE
    assert "--fleet-key" in capsys.readouterr().err
    assert verify([*args, str(tmp_path / "missing")]) == EXIT_UNUSABLE
