"""The host's verdicts on one message (SPEC §5.2, §5.4), as pure functions of device state.

Each returns None when the message passes, else the detail of why not; the link machine turns
a verdict into a quarantine, an alarm or an answer.
"""

from __future__ import annotations

from typing import Any

from sealproto import auth, errors, messages
from sealproto.errors import DecodeError

from sealink.gateway.fastpath import seal_digest
from sealink.gateway.registry import DeviceState

__all__ = [
    "alarm_name",
    "describe",
    "device_alarm",
    "event_fault",
    "flag_names",
    "reboot_causes",
    "record_alarm",
    "rollback",
    "seal_ahead",
    "status_fields",
]

# A REBOOT record's cause bits (SPEC §4.1, key 10), by the names alarms and logs give them.
_CAUSES = (
    (messages.CA_TORN, "torn_record"),
    (messages.CA_ROLLBACK, "rollback"),
    (messages.CA_NEW_JOURNAL, "new_journal"),
    (messages.CA_WATCHDOG, "watchdog"),
    (messages.CA_BROWNOUT, "brownout"),
    (messages.CA_HARD_RESET, "hard_reset"),
)
_RECORDS_MISSING = messages.CA_ROLLBACK | messages.CA_NEW_JOURNAL
# STATUS flags (SPEC §4.3) and alarm codes (§7.3) by their SPEC names, for JSON consumers: the
# sealproto constants F_<NAME> and AL_<NAME>, lower-cased (AL_CODE, AL_TIME and AL_DETAIL are
# the ALARM message's keys, not codes).
_ALARM_KEYS = {"AL_CODE", "AL_TIME", "AL_DETAIL"}
_FLAGS = tuple(
    (value, name[2:].lower()) for name, value in vars(messages).items() if name.startswith("F_")
)
_ALARM_CODES = {
    value: name[3:].lower()
    for name, value in vars(messages).items()
    if name.startswith("AL_") and name not in _ALARM_KEYS
}
# The fast path's seal digest reads the one shape of a record without a cause: a map of 11.
_CAUSELESS_HEAD = 0xA0 + 11


def describe(exc: DecodeError) -> str:
    return f"{errors.reason_name(exc.reason)}: {exc.detail}"


def rollback(state: DeviceState, next_counter: int, boot_id: int) -> str | None:
    """§5.2 step 5: the seal no longer holds what the ledger stored, or boots "earlier"."""
    if next_counter - 1 < state.stored or boot_id < state.boot_id:
        return (
            f"HELLO next_counter {next_counter} boot_id {boot_id}; the gateway holds up to "
            f"{state.stored}, boot_id {state.boot_id}"
        )
    return None


def event_fault(
    state: DeviceState, event: dict[int, Any], payload: bytes, hello_boot: int
) -> tuple[str, str] | None:
    """§5.4 step 2 for the event after the last accepted one, as (reason, detail): the record
    must be the seal's, signed inside its chip (§4.1), and its prev and boot_id must chain."""
    counter = event[messages.EV_COUNTER]
    if state.seal_key is None:
        return "bad_signature", f"EVENT {counter}: no seal key is registered for {state.device}"
    digest = seal_digest(payload) if payload[0] == _CAUSELESS_HEAD else auth.seal_digest(event)
    if not state.seal_key.verify(digest, event[messages.EV_SIG]):
        return "bad_signature", f"EVENT {counter}: the seal signature does not verify"
    fault = _chain_fault(state, event, hello_boot)
    return None if fault is None else ("chain_break", fault)


def _chain_fault(state: DeviceState, event: dict[int, Any], hello_boot: int) -> str | None:
    counter = event[messages.EV_COUNTER]
    if state.accepted_hash is not None and event[messages.EV_PREV] != state.accepted_hash:
        return f"EVENT {counter}: prev is not the hash of event {counter - 1}"
    boot = event[messages.EV_BOOT]
    if not state.accepted_boot <= boot <= hello_boot:
        return (
            f"EVENT {counter}: boot_id {boot} outside {state.accepted_boot}..{hello_boot} "
            f"(event {counter - 1} .. this session's HELLO)"
        )
    return None


def seal_ahead(state: DeviceState, status: dict[int, Any]) -> tuple[int, str] | None:
    """§5.2 step 6: the counter the seal has compacted up to, if the ledger never stored it.

    A ledger restored from an older copy, a gateway replaced, or a seal moved from another
    gateway: only an operator can adopt the gap (`sealink devices adopt`), which records it
    as evidence."""
    device_acked = status[messages.ST_NEXT] - 1 - status[messages.ST_BACKLOG]
    if device_acked <= state.stored:
        return None
    return (
        device_acked,
        f"the seal has compacted up to {device_acked}, the ledger holds {state.stored}",
    )


def status_fields(state: DeviceState, status: dict[int, Any]) -> dict[str, Any]:
    """The retained status topic's fields from a STATUS (SPEC §11.2)."""
    return {
        "online": True,
        "battery_mv": status[messages.ST_BATTERY],
        "backlog": status[messages.ST_BACKLOG],
        "journal_free": status[messages.ST_FREE],
        "flags": status[messages.ST_FLAGS],
        "flag_names": flag_names(status[messages.ST_FLAGS]),
        "permit_left": status[messages.ST_PERMIT_LEFT],
        "next_counter": status[messages.ST_NEXT],
        # Presses that got no record yet (SPEC §12), absent from the STATUS while there are none.
        "unrecorded": status.get(messages.ST_UNRECORDED, 0),
        "quarantined": state.quarantine is not None,
    }


def flag_names(flags: int) -> list[str]:
    """The names of a STATUS's flags (SPEC §4.3); a reserved bit as `bit<n>`."""
    names = [name for bit, name in _FLAGS if flags & bit]
    known = sum(bit for bit, _ in _FLAGS)
    return names + [f"bit{n}" for n in range(flags.bit_length()) if flags & ~known & (1 << n)]


def alarm_name(code: int) -> str:
    """An alarm code's name (SPEC §7.3); one this gateway does not know as `code<n>`."""
    return _ALARM_CODES.get(code, f"code{code}")


def device_alarm(alarm: dict[int, Any]) -> dict[str, Any]:
    """An ALARM's fields as published (SPEC §11.2: source device, code and its name, time_s,
    detail)."""
    return {
        "source": "device",
        "code": alarm[messages.AL_CODE],
        "code_name": alarm_name(alarm[messages.AL_CODE]),
        "time_s": alarm[messages.AL_TIME],
        "detail": alarm[messages.AL_DETAIL],
    }


def reboot_causes(cause: int) -> tuple[list[str], int]:
    """A REBOOT record's cause (SPEC §4.1): the names of its bits, and how many records the
    seal's chip counted that its journal lacked."""
    return [name for bit, name in _CAUSES if cause & bit], cause >> messages.CA_MISSING_SHIFT


def record_alarm(event: dict[int, Any]) -> dict[str, Any] | None:
    """The alarm a record stands for, published like a seal's own ALARM (SPEC §11.2) with
    `source` "record": the seal journals the alarms it cannot keep in RAM (SPEC §12), so the
    gateway raises them from the record whenever it arrives, even after the seal rebooted.
    A REBOOT that found records missing (ROLLBACK), an ALARM record (its code), an UNRECORDED
    record (RESERVE_EXHAUSTED, `detail` = the presses that got no record); else None."""
    cause = event.get(messages.EV_CAUSE)
    if cause is None:
        return None
    kind = event[messages.EV_KIND]
    alarm: dict[str, Any] = {
        "source": "record",
        "counter": event[messages.EV_COUNTER],
        "time_s": event[messages.EV_TIME],
    }
    if kind == messages.KIND_REBOOT:
        if not cause & _RECORDS_MISSING:
            return None
        names, missing = reboot_causes(cause)
        code, detail, extra = messages.AL_ROLLBACK, missing, {"causes": names}
    elif kind == messages.KIND_ALARM:
        code, detail, extra = cause, 0, {}
    elif kind == messages.KIND_UNRECORDED:
        code, detail, extra = messages.AL_RESERVE_EXHAUSTED, cause, {}
    else:
        return None
    return {**alarm, "code": code, "code_name": alarm_name(code), "detail": detail, **extra}
