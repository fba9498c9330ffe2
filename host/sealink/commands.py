"""Host → device commands an operator queues (SPEC §5.7): checked before they are queued, and
turned into the sealproto message the session sends.

A command is stored as (kind, body): kind "permit" or "revoke", body a JSON object with the
field names below. The ranges are the wire's: the check builds the sealproto message and lets
sealproto's own schema (SPEC §4) judge it, so no wire number is restated here; what the schema
cannot see (a window whose start is after its end) is checked on top.
"""

from __future__ import annotations

import re
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
_COMMANDS: dict[str, tuple[int, dict[str, int], dict[str, int]]] = {
    "permit": (
        messages.PERMIT,
        {
            "permit": messages.PE_ID,
            "count": messages.PE_COUNT,
            "not_before_s": messages.PE_NOT_BEFORE,
            "not_after_s": messages.PE_NOT_AFTER,
            "operator": messages.PE_OPERATOR,
        },
        {"operator": 0},
    ),
    "revoke": (messages.REVOKE, {"permit": messages.RV_PERMIT}, {}),
}
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
            msg[key] = body[name]
        elif name in defaults:
            msg[key] = defaults[name]
        else:
            raise CommandFieldError(kind, name, "is missing")
    return msg


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
    if isinstance(value, bool) or not isinstance(value, int):
        return CommandFieldError(kind, name, f"must be an integer, not {value!r}")
    return CommandFieldError(
        kind, name, f"{value} is out of range for the wire ({where}, field {fields[name]})"
    )
