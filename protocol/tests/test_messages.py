"""Every message type through encode/decode, the schema rejections, and the MAC helpers."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sealproto import auth, cbor
from sealproto import messages as m
from sealproto.errors import FIELD, MAC, REPLAY, TYPE, DecodeError, reason_name

KEY = bytes(range(32))
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)


def examples() -> dict[int, dict[int, Any]]:
    nonce = bytes(range(16))
    return {
        m.HELLO: {0: m.HELLO, 1: 3, 2: "seal-0001", 3: nonce, 4: 1, 5: 1, 6: "fw", 7: 0},
        m.WELCOME: {0: m.WELCOME, 1: nonce, 2: 0, 3: 1, 4: b"", 14: 1},
        m.SYNC: {0: m.SYNC},
        m.EVENT: {0: m.EVENT, 1: 1, 2: 1, 3: 5, 4: 0, 5: 0, 6: 0, 7: 0, 8: auth.GENESIS,
                  9: bytes(64)},
        m.ACK: {0: m.ACK, 1: 0, 2: bytes(64), 14: 2},
        m.ALARM: {0: m.ALARM, 1: m.AL_JOURNAL_FULL, 2: 0, 3: 0, 14: 1},
        m.STATUS: {0: m.STATUS, 1: 3300, 2: 0, 3: 100, 4: m.F_CLOCK_UNSET, 5: 0, 6: 1, 14: 1},
        m.PERMIT: {0: m.PERMIT, 1: 1, 2: 1, 3: 0, 4: 0, 5: 0, 14: 2},
        m.REVOKE: {0: m.REVOKE, 1: 1, 14: 3},
        m.TIME: {0: m.TIME, 1: 0, 14: 4},
        m.RESULT: {0: m.RESULT, 1: 2, 2: m.R_NO_TIME, 14: 2},
        m.ENROL: {0: m.ENROL, 1: 7, 2: bytes(64), 3: bytes(64), 4: "seal-0001", 14: 3},
        m.OPERATOR: {0: m.OPERATOR, 1: 2, 2: nonce, 3: bytes(32), 4: b"", 14: 5},
    }


# Every type that is sent: 13 (STORED) is a statement, never a message (SPEC §5.11).
_SENT = (*range(1, 13), m.OPERATOR)


@pytest.mark.parametrize("msg_type", _SENT, ids=m.type_name)
def test_every_type_roundtrips_signed(msg_type: int) -> None:
    msg = examples()[msg_type]
    if m.auth(msg_type) != m.AUTH_NONE:
        auth.sign(msg, KEY)
        with pytest.raises(DecodeError) as e:
            m.decode(cbor.dumps({k: v for k, v in msg.items() if k != m.K_MAC}))
        assert e.value.reason == FIELD  # on the wire the MAC is mandatory
    payload = m.encode(msg)
    assert payload == cbor2.dumps(msg, canonical=True)
    assert m.decode(payload) == msg
    if m.auth(msg_type) != m.AUTH_NONE:
        auth.verify(m.decode(payload), KEY)


@pytest.mark.parametrize("msg_type", _SENT, ids=m.type_name)
def test_every_missing_or_extra_key_is_a_field_error(msg_type: int) -> None:
    msg = auth.sign(examples()[msg_type], KEY) if m.auth(msg_type) else examples()[msg_type]
    for key in msg:
        if key == m.K_TYPE:
            continue
        without = {k: v for k, v in msg.items() if k != key}
        with pytest.raises(DecodeError) as e:
            m.decode(cbor.dumps(without))
        assert e.value.reason == FIELD, key
    for key in set(range(1, 16)) - set(msg) - OPTIONAL.get(msg_type, set()):
        with pytest.raises(DecodeError) as e:
            m.decode(cbor.dumps({**msg, key: 0}))
        assert e.value.reason == FIELD, key


# Keys a message may leave out (SPEC §4: "optional"); EVENT's key 10 goes with its kind.
OPTIONAL = {m.STATUS: {m.ST_UNRECORDED}}


def test_an_optional_key_may_be_left_out_or_given_in_range() -> None:
    status = auth.sign(examples()[m.STATUS], KEY)
    for value, ok in ((0, True), (2**64 - 1, True), (-1, False), (True, False), (b"", False)):
        msg = {**status, m.ST_UNRECORDED: value}
        if ok:
            assert m.decode(cbor.dumps(msg))[m.ST_UNRECORDED] == value
        else:
            with pytest.raises(DecodeError) as e:
                m.decode(cbor.dumps(msg))
            assert e.value.reason == FIELD, value


def test_encode_validates_like_decode() -> None:
    with pytest.raises(DecodeError) as e:
        m.encode({0: m.ACK, 1: -1, 14: 1})
    assert e.value.reason == FIELD
    with pytest.raises(DecodeError) as e:
        m.encode({0: 99})
    assert e.value.reason == TYPE
    with pytest.raises(DecodeError) as e:
        m.encode({0: m.EVENT, 1: True, 2: 1, 3: 5, 4: 0, 5: 0, 6: 0, 7: 0, 8: auth.GENESIS,
                  9: bytes(64)})
    assert e.value.reason == FIELD


@settings(max_examples=300)
@given(
    counter=st.integers(1, 2**32 - 1), boot=U32, uptime=U64, time_s=U64,
    kind=st.integers(0, 4), permit=U32, operator=U32, prev=st.binary(min_size=32, max_size=32),
    key=st.binary(min_size=32, max_size=32),
)
def test_any_event_roundtrips_and_verifies_with_hmac(
    counter: int, boot: int, uptime: int, time_s: int, kind: int, permit: int, operator: int,
    prev: bytes, key: bytes,
) -> None:
    msg = {0: m.EVENT, 1: counter, 2: boot, 3: uptime, 4: time_s, 5: kind, 6: permit,
           7: operator, 8: prev, 9: key + key}
    expected_mac = hmac.new(key, cbor2.dumps(msg, canonical=True), hashlib.sha256).digest()
    payload = m.encode(auth.sign(msg, key))
    assert msg[m.K_MAC] == expected_mac
    decoded = m.decode(payload)
    auth.verify(decoded, key)
    assert auth.record_hash(payload) == hashlib.sha256(payload).digest()
    unsigned = {k: v for k, v in msg.items() if k not in (m.EV_SIG, m.K_MAC)}
    expected_digest = hashlib.sha256(cbor2.dumps(unsigned, canonical=True)).digest()
    assert auth.seal_digest(decoded) == expected_digest


def test_verify_and_accept_reasons() -> None:
    session = auth.session_key(KEY, bytes(16), bytes(range(16)))
    ack = auth.sign({0: m.ACK, 1: 7, 2: b"", 14: 5}, session)
    assert auth.accept(ack, session, 4) == 5
    with pytest.raises(DecodeError) as e:
        auth.accept(ack, session, 5)
    assert e.value.reason == REPLAY
    with pytest.raises(DecodeError) as e:
        auth.accept(ack, KEY, 0)
    assert e.value.reason == MAC
    tampered = {**ack, 1: 8}
    with pytest.raises(DecodeError) as e:
        auth.verify(tampered, session)
    assert e.value.reason == MAC
    with pytest.raises(DecodeError) as e:
        auth.verify({0: m.ACK, 1: 7, 2: b"", 14: 5}, session)
    assert e.value.reason == MAC


@settings(max_examples=300)
@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_matches_python_hmac(key: bytes, data: bytes) -> None:
    assert auth.hmac_sha256(key, data) == hmac.new(key, data, hashlib.sha256).digest()


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_equal(a: bytes, b: bytes) -> None:
    assert auth.equal(a, b) == (a == b)
    assert auth.equal(a, a)


def test_session_key_definition() -> None:
    dn, hn = b"d" * 16, b"h" * 16
    expected = hmac.new(KEY, b"sealink/session/v1" + dn + hn, hashlib.sha256).digest()
    assert auth.session_key(KEY, dn, hn) == expected
    with pytest.raises(ValueError):
        auth.session_key(KEY, dn, b"short")


def test_reason_names() -> None:
    names = [reason_name(code) for code in range(1, 11)]
    assert names == ["COBS", "SHORT", "CRC", "OVERSIZE", "CBOR", "NONCANONICAL", "TYPE", "FIELD",
                     "MAC", "REPLAY"]
    assert reason_name(0) == reason_name(11) == "UNKNOWN"
    error = DecodeError(FIELD, "key 3")
    assert (error.reason, error.detail, str(error)) == (FIELD, "key 3", "FIELD: key 3")
