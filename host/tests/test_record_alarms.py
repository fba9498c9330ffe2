"""Records with a cause (SPEC §4.1 key 10): the gateway checks their seal signature over the
cause too, and turns the records that stand for alarms into alarms (`checks.record_alarm`):
a REBOOT that found records missing, an ALARM record, an UNRECORDED record."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from sealink.crypto.sealkey import SealKey
from sealink.gateway import checks
from sealink.gateway.registry import DeviceState
from sealink.ledger import GENESIS
from sealproto import auth, messages
from sealproto.errors import DecodeError
from sealproto.messages import K_TYPE

KEY = bytes(range(32))
# A chip cannot exist here: its P-256 signature over the seal digest is made in software.
CHIP = ec.derive_private_key(0x5EA1_0010, ec.SECP256R1())
SEAL_KEY = CHIP.public_key().public_bytes(
    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
)[1:]


def chip_sign(digest: bytes) -> bytes:
    der = CHIP.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    r, s = utils.decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def record(kind: int, cause: int | None, counter: int = 5) -> dict[int, Any]:
    msg: dict[int, Any] = {
        K_TYPE: messages.EVENT,
        messages.EV_COUNTER: counter,
        messages.EV_BOOT: 2,
        messages.EV_UPTIME: 812,
        messages.EV_TIME: 1_764_115_242,
        messages.EV_KIND: kind,
        messages.EV_PERMIT: 0,
        messages.EV_OPERATOR: 0,
        messages.EV_PREV: GENESIS,
    }
    if cause is not None:
        msg[messages.EV_CAUSE] = cause
    return msg


def signed(msg: dict[int, Any]) -> tuple[dict[int, Any], bytes]:
    msg = dict(msg)
    msg[messages.EV_SIG] = chip_sign(auth.seal_digest(msg))
    payload = messages.encode(auth.sign(msg, KEY))
    return messages.decode(payload), payload


def state() -> DeviceState:
    return DeviceState("seal-r", KEY, 4, GENESIS, 2, 2, None, None, seal_key=SealKey(SEAL_KEY))


ROLLBACK_3 = messages.CA_ROLLBACK | messages.CA_WATCHDOG | 3 << messages.CA_MISSING_SHIFT


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        (messages.KIND_REBOOT, ROLLBACK_3),
        (messages.KIND_ALARM, messages.AL_CHIP_FAULT),
        (messages.KIND_UNRECORDED, 12),
        (messages.KIND_REBOOT, None),
    ],
)
def test_a_record_with_a_cause_is_signed_over_its_cause(kind: int, cause: int | None) -> None:
    msg, payload = signed(record(kind, cause))
    assert checks.event_fault(state(), msg, payload, 2) is None
    if cause is None:
        return
    # The same signature on the record with another cause: the cause is part of what it signs.
    forged = dict(msg)
    forged[messages.EV_CAUSE] = cause ^ 1
    forged_payload = messages.encode(auth.sign(forged, KEY))
    fault = checks.event_fault(state(), forged, forged_payload, 2)
    assert fault is not None and fault[0] == "bad_signature"


def test_a_cause_only_on_the_records_that_have_one() -> None:
    for kind, cause in ((messages.KIND_IMPRESSION, 1), (messages.KIND_ALARM, None)):
        msg = record(kind, cause)
        msg[messages.EV_SIG] = bytes(64)
        with pytest.raises(DecodeError):
            messages.decode(messages.encode(auth.sign(msg, KEY)))


def test_records_that_stand_for_alarms_become_alarms() -> None:
    rollback = checks.record_alarm(record(messages.KIND_REBOOT, ROLLBACK_3))
    assert rollback == {
        "source": "record",
        "counter": 5,
        "time_s": 1_764_115_242,
        "code": messages.AL_ROLLBACK,
        "code_name": "rollback",
        "detail": 3,
        "causes": ["rollback", "watchdog"],
    }
    wiped = checks.record_alarm(
        record(messages.KIND_REBOOT, messages.CA_NEW_JOURNAL | 9 << messages.CA_MISSING_SHIFT)
    )
    assert wiped is not None and (wiped["code"], wiped["detail"]) == (messages.AL_ROLLBACK, 9)
    alarm = checks.record_alarm(record(messages.KIND_ALARM, messages.AL_JOURNAL_FULL))
    assert alarm is not None and alarm["code"] == messages.AL_JOURNAL_FULL
    assert alarm["code_name"] == "journal_full"
    presses = checks.record_alarm(record(messages.KIND_UNRECORDED, 12))
    assert presses is not None
    assert (presses["code"], presses["detail"]) == (messages.AL_RESERVE_EXHAUSTED, 12)
    # A reset or a torn record is recorded, not alarmed; nor is any record without a cause.
    for kind, cause in (
        (messages.KIND_REBOOT, messages.CA_TORN | messages.CA_BROWNOUT),
        (messages.KIND_REBOOT, None),
        (messages.KIND_FORCED, None),
    ):
        assert checks.record_alarm(record(kind, cause)) is None


def test_reboot_causes_are_named() -> None:
    assert checks.reboot_causes(ROLLBACK_3) == (["rollback", "watchdog"], 3)
    assert checks.reboot_causes(messages.CA_HARD_RESET | messages.CA_TORN) == (
        ["torn_record", "hard_reset"],
        0,
    )


def test_status_reports_presses_without_a_record() -> None:
    status = {
        K_TYPE: messages.STATUS,
        messages.ST_BATTERY: 3900,
        messages.ST_BACKLOG: 0,
        messages.ST_FREE: 0,
        messages.ST_FLAGS: messages.F_RESERVE_EXHAUSTED,
        messages.ST_PERMIT_LEFT: 0,
        messages.ST_NEXT: 9,
    }
    assert checks.status_fields(state(), status)["unrecorded"] == 0
    status[messages.ST_UNRECORDED] = 4
    assert checks.status_fields(state(), status)["unrecorded"] == 4
