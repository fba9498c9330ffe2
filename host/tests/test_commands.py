"""sealink.commands: a queued command is checked against the wire before it is queued, the
refusal names the field, and the message sent is exactly the command's fields (SPEC §4, §5.7).
The boundaries here are the SPEC's table (uint32 < 2**32, uint < 2**64), the test's oracle."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sealink.commands import (
    CommandFieldError,
    command_message,
    permit_id_fits,
    validate_command,
)
from sealink.errors import CommandError
from sealproto import auth, messages

U32 = 2**32
U64 = 2**64


def permit(**fields: Any) -> dict[str, Any]:
    body = {"permit": 1, "count": 1, "not_before_s": 0, "not_after_s": 0, "operator": 0}
    return {**body, **fields}


def test_command_message_is_the_permit_and_revoke_of_the_spec() -> None:
    body = permit(permit=7, count=3, not_before_s=10, not_after_s=20, operator=9)
    assert command_message("permit", body) == {
        messages.K_TYPE: messages.PERMIT,
        messages.PE_ID: 7,
        messages.PE_COUNT: 3,
        messages.PE_NOT_BEFORE: 10,
        messages.PE_NOT_AFTER: 20,
        messages.PE_OPERATOR: 9,
    }
    no_operator = {k: v for k, v in body.items() if k != "operator"}
    assert command_message("permit", no_operator)[messages.PE_OPERATOR] == 0
    assert command_message("revoke", {"permit": 7}) == {
        messages.K_TYPE: messages.REVOKE,
        messages.RV_PERMIT: 7,
    }
    with pytest.raises(CommandError, match="unknown command kind"):
        command_message("time", {})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (permit(permit=U32), "permit"),
        (permit(permit=0), "permit"),
        (permit(count=0), "count"),
        (permit(count=U64), "count"),
        (permit(not_before_s=-1), "not_before_s"),
        (permit(not_after_s=U64), "not_after_s"),
        (permit(operator=U32), "operator"),
        (permit(operator=-1), "operator"),
        (permit(count=True), "count"),  # CBOR keeps true apart from 1
        (permit(count="5"), "count"),
        (permit(not_before_s=10, not_after_s=9), "not_before_s"),
        ({**permit(), "extra": 1}, "extra"),
        ({k: v for k, v in permit().items() if k != "count"}, "count"),
    ],
)
def test_each_bad_field_is_named(body: dict[str, Any], field: str) -> None:
    with pytest.raises(CommandFieldError) as refused:
        validate_command("permit", body)
    assert refused.value.field == field
    assert field in str(refused.value)


def test_a_permit_id_beyond_uint32_says_it_does_not_fit_the_wire() -> None:
    with pytest.raises(CommandError) as refused:
        validate_command("permit", permit(permit=4294967296))
    assert "4294967296 is out of range for the wire" in str(refused.value)
    assert "PERMIT" in str(refused.value)


def test_the_largest_values_the_wire_carries_are_accepted() -> None:
    validate_command(
        "permit",
        permit(permit=U32 - 1, count=U64 - 1, not_before_s=U64 - 1, not_after_s=U64 - 1),
    )
    validate_command("permit", permit(operator=U32 - 1))
    validate_command("permit", permit(not_before_s=5, not_after_s=5))  # a one-second window
    validate_command("revoke", {"permit": U32 - 1})
    with pytest.raises(CommandFieldError, match="permit"):
        validate_command("revoke", {"permit": 0})


@given(st.integers(-(2**70), 2**70))
def test_permit_id_fits_is_the_spec_range(value: int) -> None:
    assert permit_id_fits(value) == (1 <= value < U32)


@given(
    st.integers(-5, U32 + 5),
    st.integers(-5, 2**65),
    st.integers(-5, 2**65),
    st.integers(-5, 2**65),
    st.integers(-5, U32 + 5),
)
def test_validation_agrees_with_the_spec_table(
    permit_id: int, count: int, not_before: int, not_after: int, operator: int
) -> None:
    body = permit(
        permit=permit_id,
        count=count,
        not_before_s=not_before,
        not_after_s=not_after,
        operator=operator,
    )
    valid = (
        1 <= permit_id < U32
        and 1 <= count < U64
        and 0 <= not_before < U64
        and 0 <= not_after < U64
        and 0 <= operator < U32
        and not_before <= not_after
    )
    if valid:
        validate_command("permit", body)
        # what is accepted is also what the device's decoder accepts
        msg = auth.sign({**command_message("permit", body), messages.K_SEQ: 1}, bytes(32))
        assert messages.decode(messages.encode(msg)) == msg
    else:
        with pytest.raises(CommandFieldError):
            validate_command("permit", body)


def test_command_message_refuses_a_row_the_wire_cannot_carry() -> None:
    # What v1 queued unchecked for `sealink permits issue --permit 4294967296`.
    with pytest.raises(CommandFieldError, match="permit"):
        command_message("permit", permit(permit=U32))
