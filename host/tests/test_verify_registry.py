"""`sealink-verify registry`: the auditor's own check of a fleet registry message (SPEC §11.6),
written from the SPEC text with cwt, never from sealink. Judged against the SPEC's vector
(the message and each forgery, with the refusal a gateway makes) and against messages the
fleet's code signs, so the two implementations cannot drift apart unseen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sealink.crypto import GatewayKey
from sealink.mqtt.registry import RegistryEntry, build_entry
from sealink_verify.cli import EXIT_FAILED, EXIT_UNUSABLE, EXIT_VERIFIED
from sealink_verify.cli import main as verify
from sealink_verify.mqtt import (
    BadSignature,
    MessageError,
    NotSigned,
    UnknownKey,
    WrongTopic,
    verify_registry_message,
)

VECTOR = json.loads(
    (Path(__file__).parents[2] / "protocol" / "vectors" / "registry.json").read_text()
)
FLEET_KEY = bytes.fromhex(VECTOR["fleet_public_key"])
# The gateway's refusal (§11.6) and the verifier's failed check for the same message.
CHECK_FOR_REFUSAL: dict[str, tuple[type[MessageError], ...]] = {
    "bad_signature": (BadSignature, UnknownKey),
    "wrong_topic": (WrongTopic,),
    "invalid": (NotSigned,),
}


def test_the_vectors_message_verifies_and_reads_as_the_spec_says() -> None:
    message = verify_registry_message(VECTOR["topic"], bytes.fromhex(VECTOR["payload"]), FLEET_KEY)
    body = VECTOR["body"]
    assert (message.device, message.state, message.reason) == (
        body["device"],
        body["state"],
        body["reason"],
    )
    assert message.seal_key.hex() == body["seal_key"]
    assert message.seq == int(VECTOR["seq"])


@pytest.mark.parametrize("forgery", VECTOR["forgeries"], ids=lambda f: f["name"])
def test_each_forgery_of_the_vector_fails_the_check_its_refusal_names(
    forgery: dict[str, str],
) -> None:
    with pytest.raises(CHECK_FOR_REFUSAL[forgery["refused"]]):
        verify_registry_message(forgery["topic"], bytes.fromhex(forgery["payload"]), FLEET_KEY)


def test_what_the_fleet_signs_verifies_and_a_replay_onto_another_topic_does_not() -> None:
    key = GatewayKey.generate()
    entry = RegistryEntry("fleet-north", "seal-7", "active", "", bytes(range(64)), 5, 9, 10)
    payload = build_entry(key, "org", entry)
    message = verify_registry_message("org/fleet/registry/seal-7", payload, key.public_raw())
    assert (message.fleet, message.device, message.seq, message.time_ms) == (
        "fleet-north",
        "seal-7",
        9,
        10,
    )
    with pytest.raises(WrongTopic):
        verify_registry_message("org/fleet/registry/seal-8", payload, key.public_raw())
    with pytest.raises(UnknownKey):
        verify_registry_message(
            "org/fleet/registry/seal-7", payload, GatewayKey.generate().public_raw()
        )


def test_the_cli_prints_the_verified_state_and_names_what_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, forged = tmp_path / "good.cose", tmp_path / "forged.cose"
    good.write_bytes(bytes.fromhex(VECTOR["payload"]))
    forged.write_bytes(bytes.fromhex(VECTOR["forgeries"][0]["payload"]))
    args = ["registry", "--topic", VECTOR["topic"], "--fleet-key", FLEET_KEY.hex()]
    assert verify([*args, str(good)]) == EXIT_VERIFIED
    out = json.loads(capsys.readouterr().out)
    assert (out["device"], out["state"]) == (VECTOR["body"]["device"], VECTOR["body"]["state"])
    assert verify([*args, str(forged)]) == EXIT_FAILED
    assert "sealink-verify: " in capsys.readouterr().err
    assert verify([*args[:-1], "beef", str(good)]) == EXIT_UNUSABLE
    assert "--fleet-key" in capsys.readouterr().err
    assert verify([*args, str(tmp_path / "missing")]) == EXIT_UNUSABLE


def test_a_move_verifies_with_its_placement_read_as_the_spec_says() -> None:
    moved = VECTOR["moved"]
    message = verify_registry_message(VECTOR["topic"], bytes.fromhex(moved["payload"]), FLEET_KEY)
    body = moved["body"]
    assert (message.gateway, message.counter, message.record_sha256) == (
        body["gateway"],
        body["counter"],
        body["record_sha256"],
    )
    assert (message.state, message.seq) == (body["state"], moved["seq"])
    plain = verify_registry_message(VECTOR["topic"], bytes.fromhex(VECTOR["payload"]), FLEET_KEY)
    assert (plain.gateway, plain.counter, plain.record_sha256) == (None, None, None)
    assert message.enrolment is None and plain.enrolment is None


def test_a_move_with_an_enrolment_prints_the_certificate_it_carries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enrolled = VECTOR["enrolled"]
    cert = json.loads((Path(__file__).parents[2] / "protocol" / "vectors" / "enrol.json")
                      .read_text())["vectors"][1]["message"]  # fmt: skip
    path = tmp_path / "enrolled.cose"
    path.write_bytes(bytes.fromhex(enrolled["payload"]))
    args = ["registry", "--topic", VECTOR["topic"], "--fleet-key", FLEET_KEY.hex(), str(path)]
    assert verify(args) == EXIT_VERIFIED
    out = json.loads(capsys.readouterr().out)
    assert out["gateway"] == enrolled["body"]["gateway"]
    assert out["enrolment"] == {
        "serial": cert["1"],
        "gateway_key": cert["2"]["hex"],
        "signature": cert["3"]["hex"],
        "device": cert["4"],
    }
