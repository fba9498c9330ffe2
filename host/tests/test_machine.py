"""The host link state machine (SPEC §5) on its own: bytes in, actions out, a fake clock.

No I/O here, so each MUST of the host side is checked exactly and quickly; the gateway tests
(test_gateway.py) run the same machine behind real ptys, a real ledger and a real broker.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from sealink.crypto.ackkey import AckKey
from sealink.crypto.enrolment import certify
from sealink.crypto.p256 import P256Key
from sealink.crypto.sealkey import SealKey
from sealink.errors import TpmError
from sealink.gateway.actions import (
    Action,
    Alarm,
    CommandDone,
    CompareStored,
    Displace,
    Hangup,
    Reject,
    Send,
    SessionOpen,
    Status,
    Store,
)
from sealink.gateway.limits import ROW_BURST, FloodMeter
from sealink.gateway.machine import LinkMachine
from sealink.gateway.registry import DeviceRegistry
from sealink.ledger import GENESIS, Command, DeviceRecord
from sealproto import auth, framing, messages
from sealproto.messages import K_SEQ, K_TYPE
from sealproto.timers import (
    COMMAND_ATTEMPTS,
    COMMAND_TIMEOUT_MS,
    DUP_ACK_HOLDOFF_MS,
    SYNC_INTERVAL_MAX_MS,
    SYNC_INTERVAL_MS,
)

DEVICE = "seal-m-0001"
KEY = bytes(range(32))
# The seal's chip key (SPEC §4.1). A chip cannot exist here; what the host sees of it, an ECDSA
# P-256 signature r || s over the seal digest, is made by the same algorithm in software.
CHIP = ec.derive_private_key(0x5EA1_C41B, ec.SECP256R1())
SEAL_KEY = CHIP.public_key().public_bytes(
    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
)[1:]


def chip_sign(digest: bytes, chip: ec.EllipticCurvePrivateKey = CHIP) -> bytes:
    r, s = utils.decode_dss_signature(chip.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class Seal:
    """A device written from SPEC.md alone: just enough to drive the host machine."""

    def __init__(self, key: bytes = KEY, device: str = DEVICE) -> None:
        self.key = key
        self.device = device
        self.journal: list[bytes] = []
        self.boot = 1
        self.nonce = b""
        self.session_key = b""
        self.seq = 0
        self.host_seq = 0
        self.enrolment = 0  # HELLO key 7: the serial of its enrolment certificate

    def record(self, n: int = 1, boot: int | None = None) -> list[bytes]:
        made = []
        for _ in range(n):
            prev = auth.record_hash(self.journal[-1]) if self.journal else GENESIS
            made.append(self.event(len(self.journal) + 1, prev, boot=boot))
            self.journal.append(made[-1])
        return made

    def event(
        self,
        counter: int,
        prev: bytes,
        *,
        boot: int | None = None,
        key: bytes = b"",
        chip: ec.EllipticCurvePrivateKey = CHIP,
    ) -> bytes:
        msg: dict[int, Any] = {
            K_TYPE: messages.EVENT,
            messages.EV_COUNTER: counter,
            messages.EV_BOOT: self.boot if boot is None else boot,
            messages.EV_UPTIME: 1000 + counter,
            messages.EV_TIME: 1_764_115_242,
            messages.EV_KIND: messages.KIND_IMPRESSION,
            messages.EV_PERMIT: 1,
            messages.EV_OPERATOR: 7,
            messages.EV_PREV: prev,
        }
        msg[messages.EV_SIG] = chip_sign(auth.seal_digest(msg), chip)
        return messages.encode(auth.sign(msg, key or self.key))

    def hello(self, next_counter: int | None = None, boot: int | None = None) -> bytes:
        self.nonce = os.urandom(messages.NONCE_LEN)
        msg = {
            K_TYPE: messages.HELLO,
            messages.HE_VERSION: 3,
            messages.HE_DEVICE: self.device,
            messages.HE_NONCE: self.nonce,
            messages.HE_BOOT: self.boot if boot is None else boot,
            messages.HE_NEXT: len(self.journal) + 1 if next_counter is None else next_counter,
            messages.HE_FIRMWARE: "test",
            messages.HE_ENROLMENT: self.enrolment,
        }
        return messages.encode(auth.sign(msg, self.key))

    def welcome(self, actions: list[Action]) -> dict[int, Any]:
        for msg in host_messages(actions):
            if msg[K_TYPE] == messages.WELCOME:
                key = auth.session_key(self.key, self.nonce, msg[messages.WE_NONCE])
                auth.verify(msg, key)
                self.session_key, self.seq, self.host_seq = key, 0, 1
                return msg
        raise AssertionError(f"no WELCOME in {actions}")

    def session(self, kind: int, **fields: int) -> bytes:
        self.seq += 1
        msg = {K_TYPE: kind, **{getattr(messages, k): v for k, v in fields.items()}}
        msg[K_SEQ] = self.seq
        return messages.encode(auth.sign(msg, self.session_key))

    def status(self, acked: int) -> bytes:
        nxt = len(self.journal) + 1
        return self.session(
            messages.STATUS,
            ST_BATTERY=3900,
            ST_BACKLOG=nxt - 1 - acked,
            ST_FREE=100,
            ST_FLAGS=0,
            ST_PERMIT_LEFT=0,
            ST_NEXT=nxt,
        )


def wire(*payloads: bytes) -> bytes:
    return b"".join(framing.encode_frame(p) for p in payloads)


def host_messages(actions: list[Action]) -> list[dict[int, Any]]:
    out = []
    for action in actions:
        if isinstance(action, Send):
            for item in framing.FrameDecoder().feed(action.data):
                assert isinstance(item, bytes)
                out.append(messages.decode(item))
    return out


def acks(actions: list[Action]) -> list[int]:
    return [m[messages.AK_COUNTER] for m in host_messages(actions) if m[K_TYPE] == messages.ACK]


def of(kind: type, actions: list[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


class Host:
    """One registry, as many link machines as a test needs, one fake monotonic clock."""

    def __init__(
        self,
        stored: int = 0,
        stored_hash: bytes | None = GENESIS,
        boot: int = 0,
        seal_key: bytes | None = SEAL_KEY,
        ack_key: AckKey | None = None,
    ):
        self.ack_key = ack_key
        self.registry = DeviceRegistry()
        self.registry.load(
            DeviceRecord(DEVICE, stored, stored_hash, boot, None, None, seal_key), KEY, 1
        )
        self.now = 1_000_000
        self.links: dict[str, LinkMachine] = {}

    def link(self, port: str = "tty0") -> LinkMachine:
        if port not in self.links:
            self.links[port] = LinkMachine(
                port, self.registry, wall_ms=lambda: 1_764_115_242_000, ack_key=self.ack_key
            )
            self.links[port].start(self.now)
        return self.links[port]

    def commit(self, actions: list[Action]) -> None:
        for store in of(Store, actions):
            self.registry.stored(store.device, store.counter, store.digest)

    @property
    def state(self) -> Any:
        return self.registry.get(DEVICE)


def connect(host: Host, seal: Seal, port: str = "tty0") -> list[Action]:
    link = host.link(port)
    seal.welcome(link.feed(wire(seal.hello()), host.now))
    acked = min(host.state.stored, len(seal.journal))
    return link.feed(wire(seal.status(acked)), host.now)


def test_events_are_stored_then_acked_only_after_the_commit() -> None:
    host, seal = Host(), Seal()
    opened = connect(host, seal)
    assert of(SessionOpen, opened) and of(Status, opened)
    link = host.link()
    actions = link.feed(wire(*seal.record(3)), host.now)
    assert [s.counter for s in of(Store, actions)] == [1, 2, 3]
    assert acks(actions) == []  # SPEC §5.4: an ACK MUST NOT be sent before the commit
    host.commit(actions)
    assert acks(link.committed(host.now)) == [3]


def test_a_record_with_the_link_key_but_not_the_chip_is_quarantined_unacked() -> None:
    # SPEC §4.1, §5.4 step 2: whoever copied the link key (the gateway's files, the seal's
    # flash) MACs a record perfectly, but without the chip its seal signature fails.
    host, seal = Host(), Seal()
    connect(host, seal)
    link = host.link()
    good = seal.record(1)
    stolen = ec.derive_private_key(0xBAD_C0DE, ec.SECP256R1())
    forged = seal.event(2, auth.record_hash(good[0]), chip=stolen)
    actions = link.feed(wire(good[0], forged), host.now)
    assert [s.counter for s in of(Store, actions)] == [1]
    (reject,) = [r for r in of(Reject, actions) if r.reason == "bad_signature"]
    assert "does not verify" in reject.detail and reject.data == forged
    assert host.state.quarantine.reason == "bad_signature"
    host.commit(actions)
    assert acks(link.committed(host.now)) == []  # quarantined: nothing more is acknowledged


def test_a_genuine_record_after_a_rewritten_one_does_not_vouch_for_it() -> None:
    # SPEC §5.4 step 2: whoever held the seal's flash rewrote unsent record 2 (no chip: a
    # bad signature); after the reboot the seal takes prev from that flash, so its genuine,
    # chip-signed record 3 names the forgery's hash. Record 3's valid signature must not
    # carry record 2 in.
    host, seal = Host(), Seal()
    connect(host, seal)
    link = host.link()
    good = seal.record(1)
    stolen = ec.derive_private_key(0xF1A5_4, ec.SECP256R1())
    rewritten = seal.event(2, auth.record_hash(good[0]), chip=stolen)
    after = seal.event(3, auth.record_hash(rewritten), boot=2)
    actions = link.feed(wire(good[0], rewritten, after), host.now)
    assert [s.counter for s in of(Store, actions)] == [1]
    assert host.state.quarantine.reason == "bad_signature"
    assert "EVENT 2" in host.state.quarantine.detail


def test_a_seal_without_a_registered_chip_key_gets_nothing_stored() -> None:
    host, seal = Host(seal_key=None), Seal()
    connect(host, seal)
    actions = host.link().feed(wire(*seal.record(1)), host.now)
    assert not of(Store, actions)
    assert host.state.quarantine.reason == "bad_signature"
    assert "no seal key is registered" in host.state.quarantine.detail


def test_a_flipped_signature_bit_is_caught_even_with_a_valid_mac() -> None:
    host, seal = Host(), Seal()
    connect(host, seal)
    msg = messages.decode(seal.record(1)[0])
    sig = bytearray(msg[messages.EV_SIG])
    sig[40] ^= 0x01
    msg[messages.EV_SIG] = bytes(sig)
    del msg[messages.K_MAC]
    tampered = messages.encode(auth.sign(msg, KEY))
    actions = host.link().feed(wire(tampered), host.now)
    assert not of(Store, actions) and host.state.quarantine.reason == "bad_signature"


def test_unknown_device_gets_no_answer_and_leaves_no_state() -> None:
    host, stranger = Host(), Seal(device="seal-unknown-9")
    link = host.link()
    for _ in range(50):
        actions = link.feed(wire(stranger.hello()), host.now)
        assert host_messages(actions) == []
    assert [r.reason for r in of(Reject, actions)] == ["unknown_device"]
    assert len(host.registry) == 1


def test_hello_with_a_bad_mac_or_another_version_gets_no_welcome() -> None:
    host = Host()
    forged = Seal(key=os.urandom(32))
    actions = host.link().feed(wire(forged.hello()), host.now)
    assert host_messages(actions) == [] and of(Reject, actions)[0].reason == "bad_mac"
    seal = Seal()
    msg = messages.decode(seal.hello())
    msg[messages.HE_VERSION] = 1  # before seal signatures: its EVENTs would carry none
    del msg[messages.K_MAC]
    actions = host.link().feed(wire(messages.encode(auth.sign(msg, KEY))), host.now)
    assert host_messages(actions) == [] and of(Reject, actions)[0].reason == "version"
    assert host.state.quarantine is None


def test_a_replayed_hello_neither_moves_the_session_nor_quarantines() -> None:
    host, seal = Host(), Seal()
    old_hello = seal.hello()  # recorded by an eavesdropper at next_counter 1
    connect(host, seal)
    host.commit(host.link().feed(wire(*seal.record(5)), host.now))
    host.link().committed(host.now)
    for port in ("tty0", "tty-attacker"):
        actions = host.link(port).feed(wire(old_hello), host.now)
        assert [m[K_TYPE] for m in host_messages(actions)] == [messages.WELCOME]
    assert host.state.quarantine is None and host.state.owner == "tty0"
    # The genuine session carries on.
    actions = host.link().feed(wire(*seal.record(1)), host.now)
    host.commit(actions)
    assert acks(host.link().committed(host.now)) == [6]


def test_a_confirmed_rollback_is_quarantined_and_the_welcome_lets_it_compact_nothing() -> None:
    host = Host(stored=10, stored_hash=os.urandom(32), boot=4)
    seal = Seal()
    seal.record(3)  # a flash image restored to counter 3
    link = host.link()
    welcome = seal.welcome(link.feed(wire(seal.hello(boot=5)), host.now))
    assert welcome[messages.WE_ACKED] == 0
    actions = link.feed(wire(seal.status(0)), host.now)
    assert host.state.quarantine.reason == "counter_rollback"
    assert any(r.reason == "counter_rollback" and r.alarm for r in of(Reject, actions))


def test_a_lower_boot_id_is_a_rollback() -> None:
    host = Host(boot=7)
    seal = Seal()
    seal.boot = 6
    connect(host, seal)
    assert host.state.quarantine.reason == "counter_rollback"


def test_boot_id_is_remembered_and_an_event_from_a_later_boot_breaks_the_chain() -> None:
    host, seal = Host(), Seal()
    seal.boot = 3
    connect(host, seal)
    assert host.state.boot_id == 3
    assert [u.boot_id for u in host.registry.take_updates()] == [3]
    actions = host.link().feed(wire(*seal.record(1, boot=4)), host.now)
    assert not of(Store, actions) and host.state.quarantine.reason == "chain_break"


def test_a_seal_ahead_of_the_ledger_is_quarantined_at_once() -> None:
    host, seal = Host(), Seal()
    seal.record(20)
    link = host.link()
    seal.welcome(link.feed(wire(seal.hello()), host.now))
    link.feed(wire(seal.status(acked=12)), host.now)  # compacted 1..12 with another gateway
    q = host.state.quarantine
    assert (q.reason, host.state.ahead_acked) == ("ahead_of_ledger", 12)
    actions = link.feed(wire(seal.journal[12]), host.now)
    assert acks(actions) == [] and not of(Store, actions)


def test_quarantine_is_sticky_keeps_evidence_once_and_alarms_each_session() -> None:
    host, seal = Host(), Seal()
    connect(host, seal)
    link = host.link()
    forged = seal.event(1, GENESIS, key=os.urandom(32))
    link.feed(wire(forged), host.now)
    assert host.state.quarantine.reason == "bad_mac"
    genuine = seal.record(2)
    first = link.feed(wire(*genuine), host.now)
    again = link.feed(wire(*genuine), host.now)  # retransmitted every RTO
    assert [r.reason for r in of(Reject, first)] == ["quarantined_event"] * 2
    assert of(Reject, again) == [] and acks(first + again) == [] and not of(Store, first)
    reopened = connect(host, seal)
    assert any(a.reason == "quarantined" for a in of(Alarm, reopened))


def test_duplicates_get_one_ack_per_holdoff_and_a_gap_one_ack_per_gap() -> None:
    host, seal = Host(), Seal()
    connect(host, seal)
    link = host.link()
    events = seal.record(10)
    host.commit(link.feed(wire(*events[:3]), host.now))
    assert acks(link.committed(host.now)) == [3]
    dups = link.feed(wire(*(events[:3] * 20)), host.now)
    assert acks(dups) == [3]  # 60 duplicates, one ACK
    host.now += DUP_ACK_HOLDOFF_MS
    assert acks(link.feed(wire(events[0]), host.now)) == [3]
    gap = link.feed(wire(*events[5:9]), host.now)  # 4 and 5 were lost
    assert acks(gap) == [3] and not of(Store, gap)


def test_an_old_duplicate_is_compared_with_the_ledger() -> None:
    host, seal = Host(stored=200, stored_hash=b"\x01" * 32), Seal()
    seal.record(201)
    link = host.link()
    seal.welcome(link.feed(wire(seal.hello()), host.now))
    link.feed(wire(seal.status(200)), host.now)
    (ask,) = of(CompareStored, link.feed(wire(seal.journal[4]), host.now))
    assert ask.counter == 5
    assert acks(link.stored_bytes(DEVICE, 5, ask.payload, ask.payload, host.now)) == [200]
    link.stored_bytes(DEVICE, 5, ask.payload, b"other bytes", host.now)
    assert host.state.quarantine.reason == "counter_rollback"


def test_session_messages_bad_mac_is_counted_replay_is_rejected() -> None:
    host, seal = Host(), Seal()
    connect(host, seal)
    link = host.link()
    status = seal.status(0)
    replay = link.feed(wire(status, status), host.now)
    assert [r.reason for r in of(Reject, replay)] == ["replay"]
    stale_key, seal.session_key = seal.session_key, os.urandom(32)
    counted = of(Reject, link.feed(wire(seal.status(0)), host.now))
    assert [(r.reason, r.row, r.alarm) for r in counted] == [("session_mac", False, None)]
    seal.session_key = stale_key
    ack = {K_TYPE: messages.ACK, messages.AK_COUNTER: 1, messages.AK_STORED: b"", K_SEQ: 9}
    unexpected = link.feed(wire(messages.encode(auth.sign(ack, stale_key))), host.now)
    assert [r.reason for r in of(Reject, unexpected)] == ["unexpected"]


def test_commands_are_resent_with_a_new_seq_then_the_device_is_reported_unreachable() -> None:
    host, seal = Host(), Seal()
    connect(host, seal)
    link = host.link()
    body = {"permit": 1, "count": 2, "not_before_s": 0, "not_after_s": 0, "operator": 3}
    sent = host_messages(
        link.offer_commands([Command(7, DEVICE, "permit", body, "pending", None)], host.now)
    )
    time_cmd = [m for m in sent if m[K_TYPE] == messages.TIME]
    assert time_cmd, "TIME goes first in every session"
    result = seal.session(messages.RESULT, RE_SEQ=time_cmd[0][K_SEQ], RE_CODE=messages.R_OK)
    permits = host_messages(link.feed(wire(result), host.now))
    seqs = [m[K_SEQ] for m in permits if m[K_TYPE] == messages.PERMIT]
    alarms: list[Alarm] = []
    for _ in range(COMMAND_ATTEMPTS):
        host.now += COMMAND_TIMEOUT_MS
        actions = link.tick(host.now)
        alarms += of(Alarm, actions)
        seqs += [m[K_SEQ] for m in host_messages(actions) if m[K_TYPE] == messages.PERMIT]
    assert len(seqs) == COMMAND_ATTEMPTS and len(set(seqs)) == COMMAND_ATTEMPTS
    assert [a.reason for a in alarms] == ["device_unreachable"]
    # A RESULT to any of the seqs it was sent with answers it (a resend after a lost RESULT).
    host2, seal2 = Host(), Seal()
    connect(host2, seal2)
    link2 = host2.link()
    first = host_messages(
        link2.offer_commands(
            [Command(8, DEVICE, "revoke", {"permit": 1}, "pending", None)], host2.now
        )
    )
    done = link2.feed(
        wire(seal2.session(messages.RESULT, RE_SEQ=first[0][K_SEQ], RE_CODE=0)), host2.now
    )
    host2.now += COMMAND_TIMEOUT_MS
    revoke = [
        m for m in host_messages(done + link2.tick(host2.now)) if m[K_TYPE] == messages.REVOKE
    ]
    host2.now += COMMAND_TIMEOUT_MS
    revoke += [m for m in host_messages(link2.tick(host2.now)) if m[K_TYPE] == messages.REVOKE]
    answered = link2.feed(
        wire(seal2.session(messages.RESULT, RE_SEQ=revoke[0][K_SEQ], RE_CODE=0)), host2.now
    )
    assert [(d.command_id, d.state) for d in of(CommandDone, answered)] == [(8, "done")]


def test_a_quarantined_seal_gets_revocations_but_no_permits() -> None:
    host, seal = Host(), Seal()
    connect(host, seal)
    link = host.link()
    link.feed(wire(seal.event(1, b"\x42" * 32)), host.now)
    assert host.state.quarantine is not None
    permit = {"permit": 1, "count": 2, "not_before_s": 0, "not_after_s": 0, "operator": 3}
    sent = host_messages(
        link.offer_commands(
            [
                Command(1, DEVICE, "permit", permit, "pending", None),
                Command(2, DEVICE, "revoke", {"permit": 1}, "pending", None),
            ],
            host.now,
        )
    )
    kinds = []
    while sent:
        m = sent.pop(0)
        kinds.append(m[K_TYPE])
        result = seal.session(messages.RESULT, RE_SEQ=m[K_SEQ], RE_CODE=0)
        sent += host_messages(link.feed(wire(result), host.now))
    assert messages.REVOKE in kinds and messages.PERMIT not in kinds


def test_an_unanswered_link_backs_its_sync_off() -> None:
    host = Host()
    link = host.link()
    syncs = []
    for _ in range(12):
        due = link.deadline_ms()
        assert due is not None
        host.now = due
        if any(m[K_TYPE] == messages.SYNC for m in host_messages(link.tick(host.now))):
            syncs.append(host.now)
    gaps = [b - a for a, b in itertools.pairwise(syncs)]
    assert gaps[0] == 2 * SYNC_INTERVAL_MS and gaps[-1] == SYNC_INTERVAL_MAX_MS
    assert gaps == sorted(gaps)


def test_a_garbage_flood_costs_counters_not_rows_or_alarms() -> None:
    host = Host()
    link = host.link()
    rng = random.Random(20261201)
    print("seed 20261201")
    rows = alarms = rejects = 0
    for _ in range(600):  # a minute of a noisy line, a chunk each 100 ms
        host.now += 100
        chunk = bytes(rng.getrandbits(8) for _ in range(1000))
        for r in of(Reject, link.feed(chunk, host.now)):
            rejects += 1
            rows += r.row
            alarms += r.alarm is not None
    assert rejects > 1000
    assert rows <= 2 * (ROW_BURST + 2)  # two reasons, a burst each and one a minute after
    assert alarms <= 2 * (3 + 1)  # a burst per reason, then one a minute


def test_a_session_moved_to_another_link_displaces_the_old_one() -> None:
    host, seal = Host(), Seal()
    connect(host, seal, "tty0")
    moved = connect(host, seal, "tty1")
    assert [(d.device, d.port) for d in of(Displace, moved)] == [(DEVICE, "tty0")]
    host.link("tty0").displaced()
    actions = host.link("tty1").feed(wire(*seal.record(1)), host.now)
    host.commit(actions)
    assert acks(host.link("tty0").committed(host.now)) == []
    assert acks(host.link("tty1").committed(host.now)) == [1]


@pytest.mark.parametrize("bad", ["no_session_event", "no_session_status"])
def test_frames_outside_a_session_get_a_rate_limited_sync(bad: str) -> None:
    host, seal = Host(), Seal()
    link = host.link()
    seal.session_key = os.urandom(32)
    payload = seal.record(1)[0] if bad == "no_session_event" else seal.status(0)
    host.now += SYNC_INTERVAL_MS
    actions = link.feed(wire(payload, payload, payload), host.now)
    assert [m[K_TYPE] for m in host_messages(actions)] == [messages.SYNC]
    assert {r.reason for r in of(Reject, actions)} == {"no_session"}


def test_undecodable_payloads_are_rejected_counted_and_coalesced() -> None:
    host = Host()
    link = host.link()
    junk = [
        bytes([0xA1, 0x00, 0xF9, 0x3C, 0x00]),
        bytes([0x9F, 0xFF]),
        bytes([0xA1, 0x18, 0x05, 0x00]),
    ]
    rejects = []
    for i in range(300):
        host.now += 10
        rejects += of(Reject, link.feed(wire(junk[i % len(junk)]), host.now))
    assert len(rejects) == 300 and {r.reason for r in rejects} == {"undecodable"}
    assert "CBOR" in rejects[0].detail or "NONCANONICAL" in rejects[0].detail
    assert sum(r.row for r in rejects) == ROW_BURST
    alarms = [r.alarm for r in rejects if r.alarm is not None]
    assert len(alarms) == 3


def test_replayed_hellos_are_counted_and_make_the_link_noisy() -> None:
    host, seal = Host(), Seal()
    recorded = seal.hello()
    link = host.link("tty-attacker")
    meter = FloodMeter()
    welcomes = rejects = 0
    for _ in range(40):
        actions = link.feed(wire(recorded), host.now)
        meter.observe(actions)
        welcomes += len(of(Send, actions))
        rejects += sum(r.reason == "unconfirmed_hello" for r in of(Reject, actions))
    assert (welcomes, rejects) == (40, 39)
    assert all(r.alarm is None for r in of(Reject, actions))
    assert meter.noisy and meter.throttle_s(1000) > 0
    assert host.state.quarantine is None and host.state.owner is None


def test_the_registry_keeps_only_the_newest_payloads_for_duplicate_checks() -> None:
    host = Host()
    state = host.state
    for counter in range(1, 101):
        host.registry.accept(state, counter, b"e%d" % counter, bytes(32), 1)
    assert sorted(state.recent) == list(range(69, 101))


# Enrolment and signed acknowledgements (SPEC §5.11) -------------------------------------------

ACK_KEY = P256Key.generate()


def stored_ok(device: str, counter: int, head: bytes, sig: bytes) -> bool:
    return SealKey(ACK_KEY.public).verify(auth.stored_digest(device, counter, head), sig)


def test_each_ack_carries_the_gateways_signature_that_it_stored_the_events() -> None:
    host, seal = Host(ack_key=ACK_KEY), Seal()
    connect(host, seal)
    link = host.link()
    actions = link.feed(wire(*seal.record(3)), host.now)
    host.commit(actions)
    (ack,) = [m for m in host_messages(link.committed(host.now)) if m[K_TYPE] == messages.ACK]
    assert ack[messages.AK_COUNTER] == 3
    assert stored_ok(DEVICE, 3, auth.record_hash(seal.journal[2]), ack[messages.AK_STORED])
    assert not stored_ok(DEVICE, 2, auth.record_hash(seal.journal[1]), ack[messages.AK_STORED])


def test_welcome_signs_what_the_ledger_holds_and_nothing_without_a_head() -> None:
    seal = Seal()
    seal.record(4)
    head = auth.record_hash(seal.journal[3])
    host = Host(stored=4, stored_hash=head, ack_key=ACK_KEY)
    welcome = host_messages(host.link().feed(wire(seal.hello()), host.now))[0]
    assert welcome[messages.WE_ACKED] == 4
    assert stored_ok(DEVICE, 4, head, welcome[messages.WE_STORED])
    # L ends a gap an operator adopted: no record to sign, so nothing the seal could free on.
    gap = Host(stored=4, stored_hash=None, ack_key=ACK_KEY)
    assert host_messages(gap.link().feed(wire(seal.hello()), gap.now))[0][messages.WE_STORED] == b""


class FailingTpm:
    """An acknowledgement key in a TPM that stops answering, then answers again: what
    sealink.crypto.tpmkey.TpmKey raises when the TPM cannot sign (the TPM itself is
    tested against swtpm in test_tpm.py)."""

    signs_slowly = True

    def __init__(self) -> None:
        self.failing = True
        self.public = ACK_KEY.public
        self.threads: set[int] = set()

    def sign(self, digest: bytes) -> bytes:
        self.threads.add(threading.get_ident())
        if self.failing:
            raise TpmError("TPM swtpm:port=2321: cannot sign (0x000a0008)")
        return ACK_KEY.sign(digest)


def test_a_tpm_that_cannot_sign_gives_an_unsigned_ack_an_alarm_and_a_retry() -> None:
    tpm = FailingTpm()
    host, seal = Host(), Seal()
    host.ack_key = tpm
    connect(host, seal)
    link = host.link()
    host.commit(link.feed(wire(*seal.record(2)), host.now))
    actions = link.committed(host.now)
    (ack,) = [m for m in host_messages(actions) if m[K_TYPE] == messages.ACK]
    assert (ack[messages.AK_COUNTER], ack[messages.AK_STORED]) == (2, b"")
    assert [(a.reason, a.device) for a in of(Alarm, actions)] == [("ack_key_fault", DEVICE)]
    tpm.failing = False
    host.commit(link.feed(wire(*seal.record(1)), host.now))
    (ack,) = [m for m in host_messages(link.committed(host.now)) if m[K_TYPE] == messages.ACK]
    assert stored_ok(DEVICE, 3, auth.record_hash(seal.journal[2]), ack[messages.AK_STORED])


def test_a_tpm_signs_ahead_in_a_worker_and_the_ack_carries_that_signature() -> None:
    # What Session does after a commit: the signature is made off the event loop's thread
    # (a TPM chip takes tens of ms), and the ACK the commit releases carries it.
    tpm = FailingTpm()
    tpm.failing = False
    host, seal = Host(), Seal()
    host.ack_key = tpm
    connect(host, seal)
    link = host.link()
    host.commit(link.feed(wire(*seal.record(2)), host.now))
    due = link.proof_due()
    assert due is not None and due[1] == 2
    with ThreadPoolExecutor(max_workers=1) as worker:
        proof = worker.submit(due[0]).result()
    link.proved(2, proof)
    (ack,) = [m for m in host_messages(link.committed(host.now)) if m[K_TYPE] == messages.ACK]
    assert stored_ok(DEVICE, 2, auth.record_hash(seal.journal[1]), ack[messages.AK_STORED])
    assert threading.get_ident() not in tpm.threads, "signed on the caller's thread"
    assert link.proof_due() is None  # acknowledged: nothing more to sign
    fast, other = Host(ack_key=ACK_KEY), Seal()
    connect(fast, other)
    fast.commit(fast.link().feed(wire(*other.record(1)), fast.now))
    assert fast.link().proof_due() is None  # a key in a file signs inline, in microseconds


def test_a_gateway_without_an_ack_key_signs_nothing() -> None:
    host, seal = Host(), Seal()
    connect(host, seal)
    link = host.link()
    host.commit(link.feed(wire(*seal.record(2)), host.now))
    (ack,) = [m for m in host_messages(link.committed(host.now)) if m[K_TYPE] == messages.ACK]
    assert ack[messages.AK_STORED] == b""


def test_a_newer_certificate_goes_after_time_and_a_refusal_is_alarmed() -> None:
    authority = P256Key.generate()
    host, seal = Host(ack_key=ACK_KEY), Seal()
    host.state.enrolment = certify(authority, DEVICE, ACK_KEY.public, serial=10)
    seal.enrolment = 3
    connect(host, seal)
    link = host.link()
    (time_cmd,) = [m for m in host_messages(link.tick(host.now)) if m[K_TYPE] == messages.TIME]
    result = seal.session(messages.RESULT, RE_SEQ=time_cmd[K_SEQ], RE_CODE=messages.R_OK)
    (enrol,) = [m for m in host_messages(link.feed(wire(result), host.now))]
    assert enrol[K_TYPE] == messages.ENROL and enrol[messages.EN_SERIAL] == 10
    assert SealKey(authority.public).verify(auth.enrolment_digest(enrol), enrol[messages.EN_SIG])
    refused = seal.session(messages.RESULT, RE_SEQ=enrol[K_SEQ], RE_CODE=messages.R_BAD_SIGNATURE)
    alarms = of(Alarm, link.feed(wire(refused), host.now))
    assert [a.reason for a in alarms] == ["enrolment_refused"]


def test_a_certificate_kept_during_a_session_is_sent_in_it_once() -> None:
    # SPEC §11.6: the fleet's certificate for a seal already connected (carried here, held
    # ahead of the ledger until its move) reaches it in the open session, at the next offer.
    host, seal = Host(ack_key=ACK_KEY), Seal()
    connect(host, seal)
    link = host.link()
    (time_cmd,) = [m for m in host_messages(link.tick(host.now)) if m[K_TYPE] == messages.TIME]
    result = seal.session(messages.RESULT, RE_SEQ=time_cmd[K_SEQ], RE_CODE=messages.R_OK)
    assert host_messages(link.feed(wire(result), host.now)) == []
    host.state.enrolment = certify(P256Key.generate(), DEVICE, ACK_KEY.public, serial=10)
    (enrol,) = host_messages(link.offer_commands([], host.now))
    assert enrol[K_TYPE] == messages.ENROL and enrol[messages.EN_SERIAL] == 10
    ok = seal.session(messages.RESULT, RE_SEQ=enrol[K_SEQ], RE_CODE=messages.R_OK)
    assert of(Alarm, link.feed(wire(ok), host.now)) == []
    assert host_messages(link.offer_commands([], host.now)) == []  # handed over: not again


def test_a_seal_holding_the_certificate_gets_no_enrol() -> None:
    host, seal = Host(ack_key=ACK_KEY), Seal()
    host.state.enrolment = certify(P256Key.generate(), DEVICE, ACK_KEY.public, serial=10)
    seal.enrolment = 10
    connect(host, seal)
    link = host.link()
    (time_cmd,) = [m for m in host_messages(link.tick(host.now)) if m[K_TYPE] == messages.TIME]
    result = seal.session(messages.RESULT, RE_SEQ=time_cmd[K_SEQ], RE_CODE=messages.R_OK)
    assert host_messages(link.feed(wire(result), host.now)) == []


def test_a_link_for_one_seal_answers_no_other_and_hangs_up() -> None:
    # SPEC §6: a ble://<device id> port's search may find another seal (a copied name, a
    # shortened name that begins two ids). Its HELLO, registered and MAC-valid or not, gets no
    # WELCOME; the link is hung up so that the port searches again.
    host = Host()
    other = Seal(key=os.urandom(32), device="seal-m-0002")
    host.registry.load(
        DeviceRecord(other.device, 0, GENESIS, 0, None, None, SEAL_KEY), other.key, 1
    )
    for stranger in (other, Seal(device="seal-unknown-9")):
        link = LinkMachine(f"ble:{DEVICE}", host.registry, device=DEVICE)
        link.start(host.now)
        actions = link.feed(wire(stranger.hello()), host.now)
        assert host_messages(actions) == []
        (reject,) = of(Reject, actions)
        assert (reject.reason, reject.device, reject.row) == ("wrong_device", None, True)
        assert reject.alarm is not None and stranger.device in reject.detail
        (hangup,) = of(Hangup, actions)
        assert DEVICE in hangup.detail and stranger.device in hangup.detail
    assert host.registry.get(other.device).owner is None
    own = LinkMachine(f"ble:{DEVICE}", host.registry, device=DEVICE)
    own.start(host.now)
    seal = Seal()
    seal.welcome(own.feed(wire(seal.hello()), host.now))
    opened = own.feed(wire(seal.status(0)), host.now)
    assert of(SessionOpen, opened) and not of(Hangup, opened) and not of(Reject, opened)
