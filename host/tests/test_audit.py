"""`sealink verify`: the auditor's offline check must accept an intact export and name every
kind of damage: a missing record, a forged signature, altered bytes, a swapped device."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from sealink.cli import main
from sealink.crypto.signer import GatewayKey, countersign_payload
from sealink.ledger import gap_payload
from sealink_sim.simdevice import SimChip, make_event
from sealink_verify.audit import verify_export
from sealproto import auth, messages

DEVICE_KEY = bytes(range(32))
# What the seals' provisioning issued: each seal chip's public key (SPEC §4.1).
SEAL_KEYS = {"seal-1": SimChip.of(DEVICE_KEY).public, "seal-2": SimChip.of(DEVICE_KEY).public}


def _seal_keys_file(tmp_path: Path) -> str:
    path = tmp_path / "seal-keys.jsonl"
    path.write_text(
        "".join(json.dumps({"device": d, "seal_key": k.hex()}) + "\n" for d, k in SEAL_KEYS.items())
    )
    return str(path)


def _export(
    key: GatewayKey, device: str, count: int, kinds: dict[int, int] | None = None
) -> list[str]:
    rows, prev = [], auth.GENESIS
    for counter in range(1, count + 1):
        kind = (kinds or {}).get(counter, messages.KIND_IMPRESSION)
        event = make_event(DEVICE_KEY, counter, prev, kind=kind)
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
    return [p for a in verify_export(rows, key.public_pem(), SEAL_KEYS, keys) for p in a.problems]


def test_an_intact_export_verifies_completely(key: GatewayKey) -> None:
    [audit] = verify_export(
        _export(key, "seal-1", 6), key.public_pem(), SEAL_KEYS, {"seal-1": DEVICE_KEY}
    )
    assert audit.problems == []
    assert (audit.events, audit.first, audit.last, audit.macs_checked) == (6, 1, 6, 6)
    assert audit.seal_signatures_checked == 6
    assert audit.summary()["complete_from_first_record"] is True


def test_the_summary_counts_the_records_by_kind(
    key: GatewayKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What the seal says happened, at a glance: presses, forced presses, tampering, reboots.
    kinds = {1: messages.KIND_REBOOT, 4: messages.KIND_FORCED, 5: messages.KIND_TAMPER}
    rows = _export(key, "seal-1", 7, kinds)
    [audit] = verify_export(rows, key.public_pem(), SEAL_KEYS, {})
    assert audit.summary()["kinds"] == {"forced": 1, "impression": 4, "reboot": 1, "tamper": 1}
    export = tmp_path / "export.jsonl"
    export.write_text("\n".join(rows) + "\n")
    pem = tmp_path / "gateway.pub.pem"
    pem.write_bytes(key.public_pem())
    args = ["verify", str(export), "--public-key", str(pem)]
    assert main([*args, "--seal-keys", _seal_keys_file(tmp_path)]) == 0
    assert "(forced 1, impression 4, reboot 1, tamper 1)" in capsys.readouterr().err


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
    audits = verify_export(rows, key.public_pem(), SEAL_KEYS, {"seal-1": bytes(32)})
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
    seal_keys = _seal_keys_file(tmp_path)
    args = ["verify", str(export), "--public-key", str(pem), "--seal-keys", seal_keys]
    args += ["--device-key", f"seal-1={device_key}"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 4
    export.write_text("\n".join(rows[:1] + rows[2:]) + "\n")
    assert main(args) == 1
    assert "FAILED" in capsys.readouterr().err
    nope = str(tmp_path / "nope.jsonl")
    assert main(["verify", nope, "--public-key", str(pem), "--seal-keys", seal_keys]) == 2
    # An export cut at its end looks complete on its own: an auditor who demands a signed
    # checkpoint gets a failure instead of a clean bill.
    export.write_text("\n".join(rows[:3]) + "\n")
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--require-checkpoint"]) == 1
    assert "no signed checkpoint covers this export" in capsys.readouterr().err


# operator-declared gaps (sealink devices adopt) ---------------------------------------------------


def _gap_row(
    key: GatewayKey,
    device: str,
    first: int,
    last: int,
    changes: dict[str, Any] | None = None,
    head: bytes | None = None,
) -> str:
    """A gap row as exported, signed; `changes` alter the exported fields after signing; with
    `head`, the gap a fleet placement records (SPEC §11.6)."""
    gap: dict[str, Any] = {
        "device": device,
        "first": first,
        "last": last,
        "adopted_ms": 1_700_000_000_000,
        "operator": "alice",
        "note": "ledger restored",
    }
    if head is not None:
        gap["head"] = head.hex()
    cose = key.sign1(
        gap_payload(device, first, last, 1_700_000_000_000, "alice", "ledger restored", head)
    )
    exported = {**gap, **(changes or {})}
    return json.dumps({"gap": exported, "cose": base64.b64encode(cose).decode()})


def _with_gap(key: GatewayKey, first: int, last: int, count: int) -> list[str]:
    """Events 1..count of one chain, with first..last lost and adopted as a gap."""
    rows = _export(key, "seal-1", count)
    return [*rows[: first - 1], _gap_row(key, "seal-1", first, last), *rows[last:]]


def test_a_signed_gap_is_accepted_listed_and_the_next_event_anchors(key: GatewayKey) -> None:
    [audit] = verify_export(
        _with_gap(key, 3, 6, 8), key.public_pem(), SEAL_KEYS, {"seal-1": DEVICE_KEY}
    )
    assert audit.problems == []
    assert [(g.first, g.last, g.operator) for g in audit.gaps] == [(3, 6, "alice")]
    summary = audit.summary()
    assert summary["gaps"] == [[3, 6]] and summary["counters"] == [1, 8]
    assert summary["events"] == 4 and summary["complete_from_first_record"] is True


def test_after_a_placed_gap_the_next_event_must_chain_to_its_signed_head(key: GatewayKey) -> None:
    """A seal moved here (SPEC §11.6): records 1..3 are the old gateway's, the gap names record
    3's hash, and record 4 must chain to it, so a gateway cannot splice in another history."""
    rows = _export(key, "seal-1", 6)
    head = auth.record_hash(bytes.fromhex(json.loads(rows[2])["event"]))
    placed = _gap_row(key, "seal-1", 1, 3, head=head)
    [audit] = verify_export([placed, *rows[3:]], key.public_pem(), SEAL_KEYS)
    assert audit.problems == [] and [g.head for g in audit.gaps] == [head]
    other = _gap_row(key, "seal-1", 1, 3, head=bytes(32))  # signed, for another history
    problems = _problems([other, *rows[3:]], key, with_mac=False)
    assert any("#4" in p and "prev does not chain" in p for p in problems), problems
    altered = _gap_row(key, "seal-1", 1, 3, {"head": bytes(32).hex()}, head=head)
    assert any("not this gap" in p for p in _problems([altered, *rows[3:]], key, with_mac=False))
    unsigned_head = _gap_row(key, "seal-1", 1, 3, {"head": head.hex()})
    assert any("not this gap" in p for p in _problems([unsigned_head, *rows[3:]], key))


def test_a_gap_at_the_start_and_at_the_end(key: GatewayKey) -> None:
    rows = _export(key, "seal-1", 5)
    audits = verify_export([_gap_row(key, "seal-1", 1, 3), *rows[3:]], key.public_pem(), SEAL_KEYS)
    assert audits[0].problems == [] and audits[0].summary()["gaps"] == [[1, 3]]
    audits = verify_export([*rows[:2], _gap_row(key, "seal-1", 3, 9)], key.public_pem(), SEAL_KEYS)
    assert audits[0].problems == [] and audits[0].summary()["counters"] == [1, 9]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"last": 7}, "not this gap"),  # widened after signing
        ({"operator": "mallory"}, "not this gap"),
        ({"device": "seal-2"}, "not this gap"),
    ],
)
def test_an_altered_gap_fails(key: GatewayKey, change: dict[str, Any], expected: str) -> None:
    rows = _export(key, "seal-1", 8)
    gap = _gap_row(key, "seal-1", 3, 6, change)
    last = change.get("last", 6)
    problems = _problems([*rows[:2], gap, *rows[last:]], key, with_mac=False)
    assert any(expected in p for p in problems), problems


def test_a_gap_signed_by_another_key_or_unsigned_fails(key: GatewayKey) -> None:
    rows = _export(key, "seal-1", 8)
    forged = _gap_row(GatewayKey.generate(), "seal-1", 3, 6)
    problems = _problems([*rows[:2], forged, *rows[6:]], key)
    assert problems and all("gap 3..6" in p for p in problems), problems
    assert any("does not verify" in p for p in problems)
    unsigned = json.dumps({**json.loads(forged), "cose": ""})
    assert any("does not verify" in p for p in _problems([*rows[:2], unsigned, *rows[6:]], key))
    # An event's countersignature is not a gap statement, even under the right key.
    event_cose = json.loads(rows[2])["cose"]
    swapped = json.dumps({**json.loads(_gap_row(key, "seal-1", 3, 6)), "cose": event_cose})
    assert any("not this gap" in p for p in _problems([*rows[:2], swapped, *rows[6:]], key))


def test_events_missing_beside_a_gap_still_fail(key: GatewayKey) -> None:
    rows = _with_gap(key, 3, 6, 10)  # 1 2 gap(3..6) 7 8 9 10
    del rows[4]  # event 8
    problems = _problems(rows, key)
    assert any("#9" in p and "missing" in p for p in problems), problems
    # a gap that does not start right after the last record accounted for
    rows = _export(key, "seal-1", 8)
    problems = _problems([*rows[:1], _gap_row(key, "seal-1", 3, 6), *rows[6:]], key)
    assert any("gap follows 1" in p for p in problems), problems


def test_a_gap_does_not_excuse_a_broken_chain_after_its_anchor(key: GatewayKey) -> None:
    rows = _with_gap(key, 3, 4, 7)  # 1 2 gap 5 6 7
    # Swap in an event 7 from a different chain: its prev does not name event 6.
    other = make_event(DEVICE_KEY, 7, bytes(32))
    signed = key.sign1(countersign_payload("seal-1", 7, other, 1, "gw"))
    rows[5] = json.dumps(
        {
            "device": "seal-1",
            "counter": 7,
            "event": other.hex(),
            "cose": base64.b64encode(signed).decode(),
        }
    )
    problems = _problems(rows, key)
    assert len(problems) == 1 and "#7" in problems[0] and "chain" in problems[0], problems


def test_cli_exit_code_3_and_a_warning_for_gaps(
    key: GatewayKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = tmp_path / "gateway.pub.pem"
    pem.write_bytes(key.public_pem())
    export = tmp_path / "export.jsonl"
    export.write_text("\n".join(_with_gap(key, 2, 3, 5)) + "\n")
    verify = [
        "verify",
        str(export),
        "--public-key",
        str(pem),
        "--seal-keys",
        _seal_keys_file(tmp_path),
    ]
    assert main(verify) == 3
    out, err = capsys.readouterr()
    assert json.loads(out)["gaps"] == [[2, 3]]
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "2..3" in warnings[0] and "alice" in warnings[0], err
    forged = _with_gap(GatewayKey.generate(), 2, 3, 5)
    rows = _with_gap(key, 2, 3, 5)
    export.write_text("\n".join([*rows[:1], forged[1], *rows[2:]]) + "\n")
    assert main(verify) == 1
    assert "FAILED" in capsys.readouterr().err


def test_a_countersignature_naming_another_counter_is_rejected(key: GatewayKey) -> None:
    """SPEC §11.1: a verifier MUST check that the signed `counter` is the event's field 1."""
    rows = _export(key, "seal-1", 3)
    row = json.loads(rows[2])
    event = bytes.fromhex(row["event"])
    # A genuine gateway signature, but over a payload that files event 3 under counter 4.
    forged = key.sign1(countersign_payload("seal-1", 4, event, 1_700_000_000_000, "gw"))
    row["counter"] = 4
    row["cose"] = base64.b64encode(forged).decode()
    rows[2] = json.dumps(row)
    problems = _problems(rows, key)
    assert any("#4" in p and "counter 3" in p for p in problems), problems


def test_a_record_not_signed_by_the_seals_chip_fails_even_when_all_else_is_signed(
    key: GatewayKey,
) -> None:
    # SPEC §4.1: whoever holds the gateway key and the link key re-MACs, re-chains and
    # countersigns a record of their own; only the seal's chip signature is beyond them.
    # Checked here against another chip's public key: to the verifier, the same thing.
    rows = _export(key, "seal-1", 4)
    problems = [
        p
        for a in verify_export(rows, key.public_pem(), {"seal-1": SimChip.of(b"x").public})
        for p in a.problems
    ]
    assert len(problems) == 4 and all("seal signature does not verify" in p for p in problems)
    [audit] = verify_export(rows, key.public_pem(), {})
    assert audit.problems == [
        "line 1 (seal-1 #1): no seal key for this device (--seal-keys): its records cannot be "
        "shown to be the seal's"
    ]
    assert audit.summary()["complete_from_first_record"] is False


def test_cli_wants_the_seal_keys_for_an_export(
    key: GatewayKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = tmp_path / "gateway.pub.pem"
    pem.write_bytes(key.public_pem())
    export = tmp_path / "export.jsonl"
    export.write_text("\n".join(_export(key, "seal-1", 2)) + "\n")
    assert main(["verify", str(export), "--public-key", str(pem)]) == 2
    assert "needs --seal-keys" in capsys.readouterr().err
    bad = tmp_path / "bad-keys.jsonl"
    bad.write_text(json.dumps({"device": "seal-1", "seal_key": "04" + "00" * 64}) + "\n")
    assert main(["verify", str(export), "--public-key", str(pem), "--seal-keys", str(bad)]) == 2
    assert "line 1" in capsys.readouterr().err
