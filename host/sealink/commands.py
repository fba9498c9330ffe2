"""Host → device commands an operator queues (SPEC §5.7): checked before they are queued, and
turned into the sealproto message the session sends.

A command is stored as (kind, body): kind "permit", "revoke" or "operator", body a JSON object
with the field names below. The ranges are the wire's: the check builds the sealproto message
and lets sealproto's own schema (SPEC §4) judge it, so no wire number is restated here; what the
schema cannot see (a window whose start is after its end) is checked on top. JSON has no bytes:
an operator's salt and hashes are hex text in the body, a permit's operators a list of ids.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from sealproto import messages
from sealproto.errors import DecodeError

from sealink.errors import CommandError

__all__ = [
    "KINDS",
    "CommandFieldError",
    "command_message",
    "permit_id_fits",
    "validate_command",
]

# kind -> (message type, {body field: message key}, {optional body field: default})
_COMMANDS: dict[str, tuple[int, dict[str, int], dict[str, int | str]]] = {
    "permit": (
        messages.PERMIT,
        {
            "permit": messages.PE_ID,
            "count": messages.PE_COUNT,
            "not_before_s": messages.PE_NOT_BEFORE,
            "not_after_s": messages.PE_NOT_AFTER,
            "operator": messages.PE_OPERATOR,
            "operators": messages.PE_OPERATORS,
        },
        {"operator": 0},
    ),
    "revoke": (messages.REVOKE, {"permit": messages.RV_PERMIT}, {}),
    # SPEC §5.7: one operator's credentials, as salted hashes (sealink.cli.operators makes them).
    "operator": (
        messages.OPERATOR,
        {
            "operator": messages.OP_ID,
            "salt": messages.OP_SALT,
            "pin": messages.OP_PIN,
            "card": messages.OP_CARD,
        },
        {"pin": "", "card": ""},
    ),
}
# Body fields that JSON carries as hex text; the wire carries them as bytes.
_HEX_FIELDS = frozenset({"salt", "pin", "card"})
# Body fields a message may leave out altogether (SPEC §4 "optional"): PERMIT's operators.
_OPTIONAL_FIELDS = frozenset({"operators"})
KINDS = tuple(_COMMANDS)


class CommandFieldError(CommandError):
    """One field of a command is missing, unknown or not carried by the wire; `field` names it
    (the body's name, e.g. "permit"), so a front end can point at its own option."""

    def __init__(self, kind: str, field: str, problem: str) -> None:
        self.kind = kind
        self.field = field
        self.problem = problem
        super().__init__(f"{kind}: {field} {problem}")


# sealproto names the offending key in its detail ("key 1 must be an int in range").
_KEY_IN_DETAIL = re.compile(r"\bkey (\d+)\b")


def command_message(kind: str, body: dict[str, Any]) -> dict[int, Any]:
    """The sealproto message (without seq and MAC) for a queued command. CommandError if the
    body is not a valid command (a row an older version queued unchecked), so a session never
    tries to send what the wire cannot carry."""
    validate_command(kind, body)
    return _message(kind, body)


def _message(kind: str, body: dict[str, Any]) -> dict[int, Any]:
    try:
        msg_type, fields, defaults = _COMMANDS[kind]
    except KeyError:
        raise CommandError(f"unknown command kind {kind!r} (known: {', '.join(KINDS)})") from None
    msg: dict[int, Any] = {messages.K_TYPE: msg_type}
    for name, key in fields.items():
        if name in body:
            msg[key] = _wire_value(kind, name, body[name])
        elif name in defaults:
            msg[key] = _wire_value(kind, name, defaults[name])
        elif name not in _OPTIONAL_FIELDS:
            raise CommandFieldError(kind, name, "is missing")
    return msg


def _wire_value(kind: str, name: str, value: Any) -> Any:
    if name in _HEX_FIELDS:
        if not isinstance(value, str):
            raise CommandFieldError(kind, name, f"must be hex text, not {value!r}")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise CommandFieldError(kind, name, f"is not hex: {value!r}") from None
    if name == "operators":
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise CommandFieldError(kind, name, f"must be a list of operator ids, not {value!r}")
        if not all(1 <= v <= 0xFFFFFFFF for v in value):
            raise CommandFieldError(kind, name, f"ids must be 1..4294967295, not {value!r}")
        if len(value) > messages.MAX_PERMIT_OPERATORS:
            raise CommandFieldError(
                kind,
                name,
                f"names {len(value)}; a permit names at most "
                f"{messages.MAX_PERMIT_OPERATORS} (SPEC §5.7)",
            )
        return struct.pack(f">{len(value)}I", *value)
    return value


def validate_command(kind: str, body: dict[str, Any]) -> None:
    """CommandError, naming the field, unless `body` makes a valid `kind` message."""
    if not isinstance(body, dict):
        raise CommandError(f"{kind}: the command body must be an object, not {type(body).__name__}")
    msg = _message(kind, body)
    msg_type, fields, _ = _COMMANDS[kind]
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise CommandFieldError(
            kind, unknown[0], f"is not a field of {kind} (known: {', '.join(fields)})"
        )
    # Session messages carry a seq; 1 is the first any session uses (SPEC §4.2).
    try:
        messages.encode({**msg, messages.K_SEQ: 1})
    except DecodeError as exc:
        raise _field_problem(kind, body, fields, msg_type, exc) from None
    if kind == "permit" and body["not_before_s"] > body["not_after_s"]:
        raise CommandFieldError(
            kind,
            "not_before_s",
            f"{body['not_before_s']} is after not_after_s {body['not_after_s']} "
            "(the device would answer BAD_FIELD)",
        )


def permit_id_fits(permit: int) -> bool:
    """Whether `permit` is a permit id the wire can carry (REVOKE's one field is that id)."""
    try:
        validate_command("revoke", {"permit": permit})
    except CommandError:
        return False
    return True


def _field_problem(
    kind: str, body: dict[str, Any], fields: dict[str, int], msg_type: int, exc: DecodeError
) -> CommandError:
    where = f"{messages.type_name(msg_type)}, SPEC §4"
    found = _KEY_IN_DETAIL.search(exc.detail)
    names = [name for name, key in fields.items() if found and key == int(found.group(1))]
    if not names:
        return CommandError(f"{kind}: not a valid {where}: {exc.detail}")
    name = names[0]
    value = body.get(name)
    if name in _HEX_FIELDS:
        size = len(value) // 2 if isinstance(value, str) else 0
        return CommandFieldError(
            kind,
            name,
            f"of {size} bytes is not a length the wire takes ({where}, field {fields[name]})",
        )
    if isinstance(value, bool) or not isinstance(value, int):
        return CommandFieldError(kind, name, f"must be an integer, not {value!r}")
    return CommandFieldError(
        kind, name, f"{value} is out of range for the wire ({where}, field {fields[name]})"
    )
