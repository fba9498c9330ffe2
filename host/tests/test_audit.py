"""`sealink verify`: the auditor's offline check must accept an intact export and name every
kind of damage: a missing record, a forged signature, altered bytes, a swapped device."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from sealink.cli import main
from sealink.crypto.signer import GatewayKey, countersign_payload
from sealink_sim.simdevice import make_event
from sealink_verify.audit import verify_export
from sealproto import auth

DEVICE_KEY = bytes(range(32))


def _export(key: GatewayKey, device: str, count: int) -> list[str]:
    rows, prev = [], auth.GENESIS
    for counter in range(1, count + 1):
        event = make_event(DEVICE_KEY, counter, prev)
        prev = auth.record_hash(event)
        signed = key.sign1(countersign_payload(device, counter, event, 1_700_000_000_000, "gw"))
        rows.append(
            json.dumps(
                {
                    "device": device,
                    "counter": counter,
                    "event": event.hex(),
                    "cose": base64.b64encode(signed).decode(),
                }
            )
        )
    return rows


@pytest.fixture
def key() -> GatewayKey:
    return GatewayKey.generate()


def _problems(rows: list[str], key: GatewayKey, with_mac: bool = True) -> list[str]:
    keys = {"seal-1": DEVICE_KEY} if with_mac else {}
    return [p for a in verify_export(rows, key.public_pem(), keys) for p in a.problems]


def test_an_intact_export_verifies_completely(key: GatewayKey) -> None:
    [audit] = verify_export(_export(key, "seal-1", 6), key.public_pem(), {"seal-1": DEVICE_KEY})
    assert audit.problems == []
    assert (audit.events, audit.first, audit.last, audit.macs_checked) == (6, 1, 6, 6)
    assert audit.summary()["complete_from_first_record"] is True


def test_a_missing_record_is_named(key: GatewayKey) -> None:
    rows = _export(key, "seal-1", 6)
    del rows[3]
    problems = _problems(rows, key)
    assert any("#5" in p and "missing" in p for p in problems), problems


def test_a_signature_by_another_key_is_rejected(key: GatewayKey) -> None:
    rows = _export(key, "seal-1", 3)
    rows[1] = _export(GatewayKey.generate(), "seal-1", 3)[1]
    problems = _problems(rows, key)
    assert len(problems) == 1 and "#2" in problems[0] and "does not verify" in problems[0]


def test_altered_event_bytes_are_rejected(key: GatewayKey) -> None:
    rows = _export(key, "seal-1", 3)
    row = json.loads(rows[2])
    event = bytearray.fromhex(row["event"])
    event[5] ^= 1
    row["event"] = event.hex()
    rows[2] = json.dumps(row)
    problems = _problems(rows, key)
    assert problems and all("#3" in p for p in problems), problems


def test_a_record_claimed_for_another_device_is_rejected(key: GatewayKey) -> None:
    rows = _export(key, "seal-1", 2)
    row = json.loads(rows[1])
    row["device"] = "seal-2"
    rows[1] = json.dumps(row)
    problems = _problems(rows, key)
    assert any("seal-2 #2" in p and "another device" in p for p in problems), problems


def test_a_wrong_device_key_fails_every_mac(key: GatewayKey) -> None:
    rows = _export(key, "seal-1", 2)
    audits = verify_export(rows, key.public_pem(), {"seal-1": bytes(32)})
    assert sum("device MAC" in p for a in audits for p in a.problems) == 2


def test_cli_exit_codes(
    key: GatewayKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = tmp_path / "gateway.pub.pem"
    pem.write_bytes(key.public_pem())
    device_key = tmp_path / "seal-1.key"
    device_key.write_text(DEVICE_KEY.hex())
    os.chmod(device_key, 0o600)
    export = tmp_path / "export.jsonl"
    rows = _export(key, "seal-1", 4)
    export.write_text("\n".join(rows) + "\n")
    args = ["verify", str(export), "--public-key", str(pem), "--device-key", f"seal-1={device_key}"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 4
    export.write_text("\n".join(rows[:1] + rows[2:]) + "\n")
    assert main(args) == 1
    assert "FAILED" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nope.jsonl"), "--public-key", str(pem)]) == 2
