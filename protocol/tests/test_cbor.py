"""sealproto.cbor against cbor2's canonical encoder, and its strictness (SPEC §3)."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sealproto import cbor
from sealproto.errors import CBOR, NONCANONICAL, DecodeError

SCALARS = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.integers(min_value=-300, max_value=300),
    st.binary(max_size=300),
    st.text(max_size=40),
    st.booleans(),
    st.none(),
)


def nested(depth: int) -> st.SearchStrategy[Any]:
    """Values of the subset with at most `depth` nested containers."""
    if depth == 0:
        return SCALARS
    inner = nested(depth - 1)
    return st.one_of(
        SCALARS,
        st.lists(inner, max_size=4),
        st.dictionaries(st.integers(min_value=0, max_value=23), inner, max_size=6),
    )


VALUES = nested(4)


@settings(max_examples=400)
@given(VALUES)
def test_dumps_matches_cbor2_canonical_and_roundtrips(value: Any) -> None:
    encoded = cbor.dumps(value)
    assert encoded == cbor2.dumps(value, canonical=True)
    assert cbor.loads(encoded) == value
    assert cbor2.loads(encoded) == value


@settings(max_examples=300)
@given(st.dictionaries(st.integers(min_value=0, max_value=23), SCALARS, min_size=2, max_size=8))
def test_unsorted_maps_are_rejected(value: dict[int, Any]) -> None:
    in_insertion_order = cbor2.dumps(value)
    if list(value) == sorted(value):
        assert cbor.loads(in_insertion_order) == value
    else:
        with pytest.raises(DecodeError) as e:
            cbor.loads(in_insertion_order)
        assert e.value.reason == NONCANONICAL


@settings(max_examples=1500)
@given(st.binary(max_size=64))
def test_any_accepted_input_is_canonical(data: bytes) -> None:
    # Strict decoding means: whatever loads accepts, dumps gives back byte for byte.
    try:
        value = cbor.loads(data)
    except DecodeError as e:
        assert e.reason in (CBOR, NONCANONICAL)
        return
    assert cbor.dumps(value) == data


@pytest.mark.parametrize(
    ("hex_data", "reason"),
    [
        ("1817", NONCANONICAL),  # 23 in a one-byte head
        ("1900ff", NONCANONICAL),
        ("1a0000ffff", NONCANONICAL),
        ("1b00000000ffffffff", NONCANONICAL),
        ("5f40ff", NONCANONICAL),  # indefinite bytes
        ("9fff", NONCANONICAL),  # indefinite array
        ("a201000000", NONCANONICAL),  # duplicate key
        ("f93c00", CBOR),  # half float
        ("fb3ff0000000000000", CBOR),
        ("c0617a", CBOR),  # tag 0
        ("f7", CBOR),  # undefined
        ("f0", CBOR),  # simple(16)
        ("1c", CBOR),  # reserved
        ("1f", CBOR),  # indefinite uint
        ("ff", CBOR),
        ("0000", CBOR),  # trailing
        ("", CBOR),
        ("18", CBOR),  # truncated head
        ("43aabb", CBOR),  # truncated bytes
        ("8181818181f6", CBOR),  # depth 5
        ("a1200a", CBOR),  # key -1
        ("a1181801", CBOR),  # key 24
        ("61ff", CBOR),  # invalid UTF-8
        ("62c0af", CBOR),  # overlong
        ("bb0000000100000000", CBOR),  # a map of 2**32 entries
    ],
)
def test_rejections(hex_data: str, reason: int) -> None:
    with pytest.raises(DecodeError) as e:
        cbor.loads(bytes.fromhex(hex_data))
    assert e.value.reason == reason, e.value.detail


def test_depth_four_is_the_limit() -> None:
    assert cbor.loads(bytes.fromhex("81818181f6")) == [[[[None]]]]
    assert cbor.dumps([[[[None]]]]) == bytes.fromhex("81818181f6")
    with pytest.raises(ValueError):
        cbor.dumps([[[[[None]]]]])


@pytest.mark.parametrize("value", [1.5, {24: 1}, {"a": 1}, {True: 1}, 2**64, -(2**64) - 1, set()])
def test_dumps_refuses_values_outside_the_subset(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        cbor.dumps(value)


def test_integer_boundaries_match_cbor2() -> None:
    for n in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1):
        for value in (n, -n - 1):
            assert cbor.dumps(value) == cbor2.dumps(value, canonical=True)
            assert cbor.loads(cbor.dumps(value)) == value
