"""The gateway's C-speed shortcuts produce exactly what the reference code produces."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import threading

import cbor2
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sealink.crypto.sealkey import SealKey
from sealink.crypto.signer import GatewayKey, countersign_payload, countersign_payload_reference
from sealink.gateway.fastpath import (
    FrameDecoder,
    decode_ack,
    decode_event,
    device_mac_ok,
    encode_frame,
    encode_session,
    hmac_sha256,
    seal_digest,
    seal_signature,
)
from sealink.mqtt.pahofast import LeanClient as _Client
from sealink.mqtt.pahofast import LeanSubscriber
from sealink.mqtt.pahofast import UserProperties as _UserProperties
from sealink.mqtt.pahofast import properties as _properties
from sealink_hil.waits import until
from sealink_sim.broker import Mosquitto
from sealink_sim.simdevice import SimChip, make_event
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
    assert seal_digest(payload) == auth.seal_digest(messages.decode(payload))
    digest, sig = seal_signature(payload) or (b"", b"")
    assert (digest, sig) == (seal_digest(payload), messages.decode(payload)[messages.EV_SIG])
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


def _same_map_other_bytes(payload: bytes) -> list[bytes]:
    """Encodings of the very map `payload` holds that deterministic CBOR forbids, each of
    which cbor2 decodes to an equal dict."""
    msg = cbor2.loads(payload)
    head = payload[0]
    counter_at = payload.index(b"\x01", 3)  # key 1 follows key 0 and the type value
    shared_prev = dict(msg)
    shared_prev[messages.EV_PREV] = cbor2.CBORTag(28, msg[messages.EV_PREV])
    mac_refers_to_prev = bytes(cbor2.dumps(shared_prev))
    return [
        bytes(cbor2.dumps(dict(reversed(list(msg.items()))))),  # keys out of order
        bytes([0xB8, head & 0x1F]) + payload[1:],  # map head in two bytes
        payload[: counter_at + 1]
        + bytes([0x1B])
        + msg[messages.EV_COUNTER].to_bytes(8, "big")
        + payload[counter_at + 1 + len(cbor2.dumps(msg[messages.EV_COUNTER])) :],  # u32 in 8 bytes
        payload[:-33] + b"\x5f\x50" + payload[-32:-16] + b"\x50" + payload[-16:] + b"\xff",
        mac_refers_to_prev,  # tagged prev (value sharing), still decodes to equal bytes
        payload + b"\x00",  # trailing data
        payload[:-35] + b"\xfb" + struct.pack(">d", 15.0) + payload[-34:],  # key 15 as a float
    ]


@settings(max_examples=200, deadline=None)
@given(events)
def test_non_deterministic_encodings_of_an_event_are_refused(payload: bytes) -> None:
    for variant in _same_map_other_bytes(payload):
        assert decode_event(variant) is None
        with pytest.raises(DecodeError):
            messages.decode(variant)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(min_size=1, max_size=framing.MAX_PAYLOAD),
        st.lists(
            st.sampled_from([b"\x00", b"\x01" * 253, b"\x02" * 254, b"\x03" * 255, b"\x04" * 250])
        )
        .map(b"".join)
        .filter(lambda b: 0 < len(b) <= framing.MAX_PAYLOAD),
    )
)
def test_frames_encode_like_sealproto(payload: bytes) -> None:
    assert encode_frame(payload) == framing.encode_frame(payload)


def test_frame_sizes_are_checked_like_sealproto() -> None:
    for size in (0, framing.MAX_PAYLOAD + 1):
        with pytest.raises(ValueError):
            framing.encode_frame(bytes(size))
        with pytest.raises(ValueError):
            encode_frame(bytes(size))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=600))
def test_hmac_matches_sealproto(key: bytes, data: bytes) -> None:
    assert hmac_sha256(key, data) == auth.hmac_sha256(key, data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1), st.sampled_from([b"", bytes(64)]))
def test_acks_decode_like_sealproto(counter: int, seq: int, stored: bytes) -> None:
    session_key = hashlib.sha256(b"session").digest()
    msg = {
        messages.K_TYPE: messages.ACK,
        messages.AK_COUNTER: counter,
        messages.AK_STORED: stored,
        messages.K_SEQ: seq,
    }
    payload = messages.encode(auth.sign(msg, session_key))
    assert decode_ack(payload) == messages.decode(payload)
    unordered = bytes(cbor2.dumps(dict(reversed(list(cbor2.loads(payload).items())))))
    assert decode_ack(unordered) is None
    float_key = payload[:-35] + b"\xfb" + struct.pack(">d", 15.0) + payload[-34:]
    assert decode_ack(float_key) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1))
def test_session_messages_encode_like_sealproto(counter: int, seq: int) -> None:
    session_key = hashlib.sha256(b"session").digest()
    msg = {
        messages.K_TYPE: messages.ACK,
        messages.AK_COUNTER: counter,
        messages.AK_STORED: b"",
        messages.K_SEQ: seq,
    }
    assert encode_session(dict(msg), session_key) == messages.encode(auth.sign(msg, session_key))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=70000))
def test_cose_sign1_matches_cbor2_assembly(payload: bytes) -> None:
    key = _KEY
    assert key.sign1(payload) == key.sign1_reference(payload)


_KEY = GatewayKey.generate()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_signatures_are_the_ones_cryptography_makes(message: bytes) -> None:
    key = GatewayKey.generate()
    assert key._sign(message) == key.private.sign(message)
    key.public.verify(key._sign(message), message)


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


def _publish_packet(topic: bytes, qos: int, mid: int, properties: bytes, payload: bytes) -> bytes:
    """A PUBLISH's variable header and payload as _packet_read hands them over (MQTT v5 §3.3.2)."""
    packet_id = struct.pack("!H", mid) if qos else b""
    return struct.pack("!H", len(topic)) + topic + packet_id + properties + payload


def _received(
    client: mqtt.Client, command: int, packet: bytes
) -> tuple[list[tuple[int, int, str, bytes]], list[tuple[int, int, str, bytes]]]:
    """What one PUBLISH reached: (on_publish_raw's calls, on_message's calls)."""
    lean: list[tuple[int, int, str, bytes]] = []
    full: list[tuple[int, int, str, bytes]] = []
    if isinstance(client, LeanSubscriber):
        client.on_publish_raw = lambda mid, qos, topic, payload: lean.append(
            (mid, qos, topic, payload)
        )

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        try:
            topic = m.topic
        except UnicodeDecodeError:  # paho hands such a message over; its topic raises
            topic = "<not UTF-8>"
        full.append((m.mid, m.qos, topic, bytes(m.payload)))

    client.on_message = on_message
    client._in_packet["command"] = command
    client._in_packet["packet"] = bytearray(packet)
    client._handle_publish()
    return lean, full


def _subscriber(kind: type[mqtt.Client]) -> mqtt.Client:
    return kind(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5, manual_ack=True)


@given(
    st.text(min_size=1, max_size=60).filter(lambda t: "\x00" not in t),
    st.sampled_from([0, 1]),
    st.integers(1, 65535),
    st.binary(max_size=600),
    st.booleans(),
)
def test_lean_publish_path_hands_over_what_pahos_own_path_does(
    topic: str, qos: int, mid: int, payload: bytes, dup: bool
) -> None:
    """The fleet stores what on_publish_raw hands it: it must be, field for field, what paho's
    own path puts in an MQTTMessage."""
    command = 0x30 | qos << 1 | (0x08 if dup else 0)
    packet = _publish_packet(topic.encode(), qos, mid, b"\x00", payload)
    lean, _ = _received(_subscriber(LeanSubscriber), command, packet)
    _, full = _received(_subscriber(mqtt.Client), command, packet)
    assert lean == full
    assert lean[0][3].__class__ is bytes


@pytest.mark.parametrize(
    ("command", "properties", "topic"),
    [
        (0x32, b"\x02\x01\x01", b"t/x"),  # a payload format indicator (0x01)
        (0x32, b"\x00", b"t/\xff"),  # a topic that is not UTF-8
    ],
)
def test_what_the_lean_publish_path_does_not_take_goes_to_pahos(
    command: int, properties: bytes, topic: bytes
) -> None:
    packet = _publish_packet(topic, 1, 7, properties, b"payload")
    lean, full = _received(_subscriber(LeanSubscriber), command, packet)
    assert (len(lean), [m[0] for m in full]) == (0, [7])


def test_a_qos_2_publish_takes_pahos_own_path() -> None:
    client = _subscriber(LeanSubscriber)
    lean, full = _received(client, 0x34, _publish_packet(b"t/x", 2, 7, b"\x00", b"payload"))
    assert (lean, full) == ([], [])
    assert 7 in client._in_messages  # paho holds it for the PUBREL (MQTT v5 §4.3.3)


def test_lean_subscriber_takes_every_message_and_its_acks_reach_the_broker(
    broker: Mosquitto, seed: int
) -> None:
    """Through a real Mosquitto: messages queued in the session while the subscriber was away,
    of sizes that cross the 64 KiB read chunks anywhere, arrive whole and in order; the ones
    acknowledged with ack_all are gone from the session, and only the others come back."""
    rng = random.Random(seed)
    payloads = [rng.randbytes(rng.choice([0, 1, 200, 5_000, 70_000])) for _ in range(400)]
    connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    connect.SessionExpiryInterval = 300

    def session(client: mqtt.Client) -> threading.Event:
        gone = threading.Event()
        client.on_disconnect = lambda *_: gone.set()
        client.connect("127.0.0.1", broker.port, clean_start=False, properties=connect)
        client.loop_start()
        return gone

    client = _subscriber(LeanSubscriber)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe("t/#", 1)
    gone = session(client)
    assert subscribed.wait(10), "no SUBACK"
    client.disconnect()
    assert gone.wait(10)
    client.loop_stop()

    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    infos = [publisher.publish(f"t/{n}", p, qos=1) for n, p in enumerate(payloads)]
    for info in infos:
        info.wait_for_publish(30)
    publisher.disconnect()
    publisher.loop_stop()

    got: list[tuple[int, str, bytes]] = []
    client = _subscriber(LeanSubscriber)
    client.on_publish_raw = lambda mid, qos, topic, payload: got.append((mid, topic, payload))
    gone = session(client)
    until(lambda: len(got), lambda n: n >= len(payloads), 30, "every queued message")
    assert [(t, p) for _, t, p in got] == [(f"t/{n}", p) for n, p in enumerate(payloads)]
    acked = set(rng.sample(range(len(payloads)), len(payloads) // 2))
    client.ack_all(got[n][0] for n in sorted(acked))
    client.disconnect()  # written after the PUBACKs queued before it
    assert gone.wait(10)
    client.loop_stop()
    # A client taking over the id before Mosquitto read the old connection to its end makes it
    # close that one unread ("already connected, closing old connection"): PUBACKs lost.
    until(lambda: broker.log_tail(50).count("Client t disconnected."), lambda n: n >= 2, 10,
          "Mosquitto closing the session")  # fmt: skip

    again: list[str] = []
    client = _subscriber(mqtt.Client)
    client.on_message = lambda c, u, m: again.append(m.topic)
    session(client)
    unacked = [f"t/{n}" for n in range(len(payloads)) if n not in acked]
    until(lambda: len(again), lambda n: n >= len(unacked), 30, "the unacknowledged messages")
    assert sorted(again) == sorted(unacked)
    client.disconnect()
    client.loop_stop()


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


def test_seal_signatures_checked_ahead_give_the_same_verdicts() -> None:
    # SealKey.prefetch runs in the session's worker threads; verify() must then answer exactly
    # what it would have found itself, forged signatures included, and each verdict once.
    device_key = bytes(range(32))
    chip = SimChip.of(device_key)
    key = SealKey(chip.public)
    good = make_event(device_key, 1, auth.GENESIS)
    forged = make_event(device_key, 1, auth.GENESIS, chip=SimChip.of(b"another chip"))
    pairs = [p for p in map(seal_signature, [good, forged, b"\x00 not an event"]) if p]
    assert len(pairs) == 2
    key.prefetch(pairs)
    assert [key.verify(*p) for p in pairs] == [True, False]
    assert [key.verify(*p) for p in pairs] == [True, False]  # checked again, same answer
    key.prefetch([(pairs[0][0], pairs[1][1])] * 1000)  # a flood of one bad pair: bounded
    assert key.verify(pairs[0][0], pairs[1][1]) is False
