"""The gateway's C-speed shortcuts produce exactly what the reference code produces."""

from __future__ import annotations

import hashlib
import os

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from sealink._fastpath import FrameDecoder, decode_event, device_mac_ok, encode_session
from sealink._publisher import _Client, _properties, _UserProperties
from sealink._signer import GatewayKey, countersign_payload, countersign_payload_reference
from sealink._simdevice import make_event
from sealproto import auth, framing, messages
from sealproto.errors import DecodeError

KEY = bytes(range(32))

events = st.builds(
    lambda counter, boot, uptime, time_s, kind, permit, operator, prev: make_event(
        KEY,
        counter,
        prev,
        boot_id=boot,
        uptime_ms=uptime,
        time_s=time_s,
        kind=kind,
        permit=permit,
        operator=operator,
    ),
    st.integers(1, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 4),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=32, max_size=32),
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_valid_events_decode_identically(payload: bytes) -> None:
    assert decode_event(payload) == messages.decode(payload)
    assert device_mac_ok(payload, KEY)
    assert not device_mac_ok(payload, os.urandom(32))


@settings(max_examples=2000, deadline=None)
@given(events, st.data())
def test_the_shortcut_never_accepts_what_sealproto_rejects(
    payload: bytes, data: st.DataObject
) -> None:
    mutated = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(mutated) - 1))
        if op == "flip":
            mutated[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            mutated.insert(pos, data.draw(st.integers(0, 255)))
        elif len(mutated) > 1:
            del mutated[pos]
    fast = decode_event(bytes(mutated))
    try:
        reference = messages.decode(bytes(mutated))
    except DecodeError:
        assert fast is None
        return
    assert fast is None or fast == reference


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1))
def test_session_messages_encode_like_sealproto(counter: int, seq: int) -> None:
    session_key = hashlib.sha256(b"session").digest()
    msg = {messages.K_TYPE: messages.ACK, messages.AK_COUNTER: counter, messages.K_SEQ: seq}
    assert encode_session(dict(msg), session_key) == messages.encode(auth.sign(msg, session_key))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=70000))
def test_cose_sign1_matches_cbor2_assembly(payload: bytes) -> None:
    key = _KEY
    assert key.sign1(payload) == key.sign1_reference(payload)


_KEY = GatewayKey.generate()


@given(
    st.text(max_size=300),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=70000),
    st.integers(0, 2**64 - 1),
    st.text(max_size=300),
)
def test_countersign_payload_matches_cbor2(
    device: str, counter: int, event: bytes, received_ms: int, gateway: str
) -> None:
    assert countersign_payload(device, counter, event, received_ms, gateway) == (
        countersign_payload_reference(device, counter, event, received_ms, gateway)
    )


@pytest.mark.parametrize(
    ("packet", "code"),
    [
        (b"\x00\x01", 0x00),  # MQTT v5 §3.4.2.1: no reason code means success
        (b"\x00\x01\x00", 0x00),
        (b"\x00\x01\x10\x00", 0x10),  # "no matching subscribers" is still a success
        (b"\x00\x01\x87", 0x87),  # not authorised
        (b"\x00\x01\x97\x00", 0x97),  # quota exceeded
    ],
)
def test_lean_puback_path_reports_the_reason_code(packet: bytes, code: int) -> None:
    """The lean PUBACK path must hand over the reason code exactly: it alone decides whether
    an outbox row is marked published. Driven without a broker: paho keeps a QoS 1 message
    queued while disconnected, and its packet buffer is filled as _packet_read would."""
    client = _Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5)
    seen: list[tuple[int, int]] = []
    client.on_puback = lambda mid, rc: seen.append((mid, rc))
    info = client.publish("t/x", b"payload", qos=1)
    assert info.mid == 1
    client._in_packet["packet"] = bytearray(packet)
    client._handle_pubackcomp("PUBACK")
    assert seen == [(1, code)]
    assert 1 not in client._out_messages  # paho forgot it, as after its own PUBACK path
    client._handle_pubackcomp("PUBACK")  # a duplicate PUBACK for a mid no longer held
    assert seen == [(1, code)]


def test_puback_with_properties_takes_pahos_own_path() -> None:
    client = _Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5)
    lean: list[tuple[int, int]] = []
    full: list[int] = []
    client.on_puback = lambda mid, rc: lean.append((mid, rc))
    client.on_publish = lambda c, u, mid, reason, props: full.append(reason.value)
    client.publish("t/x", b"payload", qos=1)
    # reason 0x10, properties: reason string "x" (0x1F)
    client._in_packet["command"] = 0x40
    client._in_packet["packet"] = bytearray(b"\x00\x01\x10\x04\x1f\x00\x01x")
    client._handle_pubackcomp("PUBACK")
    assert (lean, full) == ([], [0x10])


@given(st.text(min_size=1, max_size=40), st.integers(1, 2**32 - 1))
def test_user_properties_pack_like_paho(device: str, counter: int) -> None:
    pairs = [("device", device), ("counter", str(counter))]
    reference = _properties(PacketTypes.PUBLISH)
    reference.UserProperty = pairs
    assert _UserProperties(pairs).pack() == reference.pack()


def _reference_feed(chunks: list[bytes]) -> list[object]:
    decoder = framing.FrameDecoder()
    return [_norm(x) for c in chunks for x in decoder.feed(c)]


def _norm(item: object) -> object:
    return (item.reason, item.detail) if isinstance(item, DecodeError) else item


@settings(max_examples=1500, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=120).map(framing.encode_frame),
            st.binary(max_size=600),
            st.just(b"\x00"),
            st.binary(min_size=400, max_size=480).map(framing.encode_frame),
        ),
        max_size=8,
    ),
    st.data(),
)
def test_frame_decoder_gives_the_reference_outcomes(
    parts: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    fast = FrameDecoder()
    got = [_norm(x) for c in chunks for x in fast.feed(c)]
    assert got == _reference_feed(chunks)
