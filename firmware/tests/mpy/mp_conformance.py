# heapsize: 128k  (test code: the peer host, mpy/peer.py with the sealproto.messages names and
# every record it stores, 175 bytes each since seal signatures, and the in-memory wire run in
# this interpreter beside the firmware, which alone fits in 96k)
# SPEC requirements on the device's side of the link that the other firmware tests do not
# already prove, each test named for what it proves; the SPEC section is in its comment. Host
# input the device must refuse is forged here with a valid MAC, so that only the rule under
# test can make the device refuse it. Random splits and payloads are seeded, the seed printed.
import binascii
import gc
import random

from mp_link import Wire, kind_of
from mpyunit import equal
from rig import NOW_S
from sealproto import auth, cbor, cobs
from sealproto import messages as M
from sealproto.framing import FrameDecoder, encode_frame

from seal.link import HELLO_SENT, UP

_SEED = 31337


def _session(name):
    w = Wire(name)
    w.link.start(0)
    w.run(2)
    equal(w.peer.session_key is not None and w.link.state == UP, True, "session up")
    return w


def _forged(w, body):
    # A session message from the peer with any content at all, MACed as the peer would.
    w.peer._tx_seq += 1
    body[M.K_SEQ] = w.peer._tx_seq
    mac = auth.hmac_sha256(w.peer.session_key, cbor.dumps(body))
    body[M.K_MAC] = mac
    return cbor.dumps(body)


def _results(w):
    return len(w.peer.of_type(M.RESULT))


def test_non_minimal_cobs_is_accepted():
    # §2: receivers MUST accept the empty piece after a final 0xFF piece. 250 bytes with a CRC
    # free of zeros stuff to FF + 254 bytes; the non-minimal form adds 01. The frame reaches the
    # decoder as a frame (it is no message, so CBOR then refuses it), not as a COBS error.
    random.seed(_SEED)
    print("seed", _SEED)
    while True:
        payload = bytes(1 + random.getrandbits(8) % 255 for _ in range(250))
        crc = (binascii.crc32(payload) & 0xFFFFFFFF).to_bytes(4, "little")
        stuffed = cobs.encode(payload + crc)
        if len(stuffed) == 255 and stuffed[0] == 0xFF:
            break
    w = _session("nonmin")
    decoder = w.link._decoder
    frames, dropped = decoder.frames, decoder.dropped
    w.link.feed(stuffed + b"\x01\x00", w.now)
    equal((decoder.frames - frames, decoder.dropped - dropped), (1, 0), "decoded as a frame")
    equal(w.link.rejected_decode, 1, "then refused as CBOR")


def test_oversize_frame_is_discarded_unbuffered_then_resync():
    # §2: a frame longer than MAX_PAYLOAD + 4 decoded is discarded without buffering, skipped
    # to the next 0x00 and reported once (OVERSIZE); the SYNC after it works at once.
    w = _session("oversize")
    decoder = w.link._decoder
    dropped = decoder.dropped
    hellos = len(w.peer.hellos)
    w.now += 2000  # past SYNC_INTERVAL_MS, so the SYNC is answered
    noise = bytes(1 + i % 255 for i in range(3000))
    head = noise[:100]
    w.link.feed(head, w.now)  # the frame begins; what follows only continues it
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    w.link.feed(head, w.now)
    small = gc.mem_alloc() - before
    before = gc.mem_alloc()
    w.link.feed(noise, w.now)
    large = gc.mem_alloc() - before
    gc.enable()
    print("bytes allocated feeding 100 / 3000 bytes of one frame:", small, large)
    equal(large, small, "the long frame was buffered")
    w.link.feed(b"\x00" + encode_frame(M.encode({M.K_TYPE: M.SYNC})), w.now)
    equal(decoder.dropped - dropped, 1, "one OVERSIZE")
    w.run(1, 1)
    equal(len(w.peer.hellos), hellos + 1, "resynchronised: the SYNC made a HELLO")


def test_any_split_of_the_host_stream_gives_the_same_outcome():
    # §2: chunk boundaries carry no meaning. The same host bytes (WELCOME, commands, ACKs)
    # fed whole and in seeded random pieces leave the device in the same state.
    random.seed(_SEED)
    print("seed", _SEED)
    outcomes = []
    for split in (False, True):
        w = Wire(f"split{int(split)}")
        w.link.start(0)
        hello = kind_of(w.to_host.pop())
        stream = w.peer.welcome(hello[M.HE_NONCE])
        stream += w.peer.command({M.K_TYPE: M.TIME, M.TI_TIME: (NOW_S + 77) * 1000})
        stream += w.peer.command({M.K_TYPE: M.PERMIT, M.PE_ID: 4, M.PE_COUNT: 2,
                                  M.PE_NOT_BEFORE: 0, M.PE_NOT_AFTER: 0, M.PE_OPERATOR: 8})
        i = 0
        while i < len(stream):
            n = 1 + random.getrandbits(4) if split else len(stream)
            w.link.feed(stream[i : i + n], w.now)
            i += n
        sent = [kind_of(f)[M.K_TYPE] for f in w.to_host]
        outcomes.append((w.link.state, w.rig.clock.t, w.rig.lock.v, sent, w.link.rejected_decode))
    equal(outcomes[1], outcomes[0])


def test_noncanonical_messages_are_rejected():
    # §3: a receiver MUST reject anything not deterministically encoded. Each TIME below would
    # verify (its MAC is over the canonical body) and set the clock if it were decoded.
    w = _session("canon")
    t = (NOW_S + 500) * 1000
    for patch in (_longer_head, _indefinite, _unsorted):
        rejected = w.link.rejected_decode
        frame = encode_frame(patch(_forged(w, {M.K_TYPE: M.TIME, M.TI_TIME: t})))
        w.link.feed(frame, w.now)
        w.run()
        equal(w.link.rejected_decode, rejected + 1, patch.__name__)
    equal(w.rig.clock.t, NOW_S, "no TIME took effect")
    equal(_results(w), 0)


def _longer_head(data):
    # The TIME's seq as a two-byte head (0x18 n) instead of one byte.
    i = data.index(bytes((M.K_SEQ,))) + 1
    return data[:i] + b"\x18" + data[i:]


def _indefinite(data):
    # map(n) as an indefinite-length map: 0xBF ... 0xFF.
    return b"\xbf" + data[1:] + b"\xff"


def _unsorted(data):
    # Key 1 (the time) moved after key 14: same entries, keys out of order.
    body = cbor.loads(data)
    mac = body.pop(M.K_MAC)
    seq = body.pop(M.K_SEQ)
    value = body.pop(M.TI_TIME)
    head = bytes((0xA4,)) + cbor.dumps(body)[1:]
    return (head + bytes((M.K_SEQ,)) + cbor.dumps(seq) + bytes((M.TI_TIME,)) + cbor.dumps(value)
            + bytes((M.K_MAC,)) + cbor.dumps(mac))


def test_unknown_key_is_rejected():
    # §3: unknown keys MUST be rejected (version 1 has none to ignore).
    w = _session("unknown")
    rejected = w.link.rejected_decode
    w.link.feed(encode_frame(_forged(w, {M.K_TYPE: M.TIME, M.TI_TIME: 5000, 13: 0})), w.now)
    w.run()
    equal((w.link.rejected_decode, w.rig.clock.t, _results(w)), (rejected + 1, NOW_S, 0))


def test_missing_or_mistyped_fields_are_rejected():
    # §4: every field listed is REQUIRED, of its CBOR type and in range; else FIELD.
    w = _session("fields")
    w.stamp(2)
    w.deaf = True
    w.run()
    permit = {M.K_TYPE: M.PERMIT, M.PE_ID: 3, M.PE_COUNT: 5, M.PE_NOT_BEFORE: 0,
              M.PE_NOT_AFTER: 0}
    bad = (
        permit,  # no PE_OPERATOR
        {M.K_TYPE: M.TIME, M.TI_TIME: True},  # `true` is not an integer
        {M.K_TYPE: M.REVOKE, M.RV_PERMIT: 0},  # permit ids start at 1
        {M.K_TYPE: M.ACK, M.AK_COUNTER: 2**32, M.AK_STORED: b""},  # a uint32 field
        {M.K_TYPE: M.ACK},  # no counter
    )
    for body in bad:
        rejected = w.link.rejected_decode
        w.link.feed(encode_frame(_forged(w, dict(body))), w.now)
        equal(w.link.rejected_decode, rejected + 1, repr(body))
    equal((w.link.acked, w.rig.lock.v, _results(w)), (0, 0, 0), "none took effect")


def test_every_message_the_seal_sends_decodes_strictly():
    # §3, §4: what the seal sends is canonical, with every field of its type in range.
    w = _session("sends")
    w.rig.guard.raise_alarm(M.AL_TAMPER, 3)
    w.link.feed(w.peer.command({M.K_TYPE: M.TIME, M.TI_TIME: (NOW_S + 1) * 1000}), w.now)
    w.stamp(3)
    w.deaf = True
    w.run(3)
    seen = set()
    for frame in w.unheard:
        msg = kind_of(frame)  # messages.decode: the strict schema
        equal(M.encode(msg), cobs.decode(frame[1:-1])[:-4], "re-encodes to the same bytes")
        seen.add(msg[M.K_TYPE])
    seen |= {h[M.K_TYPE] for h in w.peer.hellos}
    equal(seen >= {M.HELLO, M.EVENT, M.ALARM, M.STATUS, M.RESULT}, True, repr(seen))
    equal(w.peer.errors, [])


def test_status_flags_use_bits_0_to_5_only():
    # §4.3: bits 6 and up are reserved and MUST be 0, with every defined flag set at once.
    w = Wire("flags")
    rig = w.rig
    rig.clock.t = 0  # CLOCK_UNSET, also after WELCOME:
    w.peer.time_ms = 0  # a host without a clock sends host_time_ms 0
    w.link.start(0)
    w.run(2)
    w.deaf = True  # no ACK: the journal stays full
    rig.guard.check_battery(3000)  # LOW_BATTERY
    rig.guard.tampered = True  # TAMPERED (the event needs no flash room here)
    rig.permits.grant(9, 5, 0, 0, 1)  # PERMIT_ACTIVE, with LOCKED: the journal is full
    # Full (the lock shut before the reserve), not exhausted by the ALARM record it takes: bit 7
    # stays clear.
    rig.journal.reserve_events = 2
    rig.journal.capacity_events = rig.journal.backlog + 2
    rig.guard.update_lock()
    w.run(2)
    flags = [m for m in map(kind_of, w.unheard) if m[M.K_TYPE] == M.STATUS][-1][M.ST_FLAGS]
    equal(flags, M.F_LOCKED | M.F_TAMPERED | M.F_LOW_BATTERY | M.F_JOURNAL_FULL
          | M.F_CLOCK_UNSET | M.F_PERMIT_ACTIVE, "every flag")
    equal(flags >> 6, 0)


def test_forged_or_replayed_ack_never_compacts():
    # §4.2, §5.5: an ACK with a bad MAC, a repeated seq or from another session is dropped
    # and counted, never acted upon: the journal keeps every record.
    w = _session("forged")
    w.deaf = True
    w.stamp(3)
    w.run()
    good = w.peer.command({M.K_TYPE: M.ACK, M.AK_COUNTER: 1, M.AK_STORED: b""})
    key = w.peer.session_key
    w.peer.session_key = bytes(32)
    forged = w.peer.command({M.K_TYPE: M.ACK, M.AK_COUNTER: 3, M.AK_STORED: b""})
    w.peer.session_key = key
    w.link.feed(forged, w.now)
    equal((w.link.acked, w.link.rejected_mac), (0, 1), "bad MAC")
    w.link.feed(good, w.now)
    equal(w.link.acked, 1, "the genuine ACK")
    w.link.feed(good, w.now)
    equal((w.link.acked, w.link.rejected_replay), (1, 1), "replayed")
    old = w.peer.command({M.K_TYPE: M.ACK, M.AK_COUNTER: 3, M.AK_STORED: b""})
    del w.to_host[:]
    w.link.feed(encode_frame(M.encode({M.K_TYPE: M.SYNC})), w.now + 5000)  # a new session
    w.link.feed(w.peer.welcome(kind_of(w.to_host[-1])[M.HE_NONCE]), w.now + 5000)
    equal(w.link.state, UP, "the new session")
    w.link.feed(old, w.now + 5000)
    equal((w.link.acked, w.link.rejected_mac), (0, 2), "from the previous session")
    equal(w.rig.journal.acked, 0, "and none of them compacts: none was signed as stored")


def test_welcome_with_bad_mac_or_seq_is_dropped_and_hello_retries():
    # §5.2, §5.8: the device accepts a WELCOME only if its MAC verifies under the new session
    # key and its seq is 1; otherwise it keeps waiting and the HELLO retry goes on.
    w = Wire("welcome")
    w.deaf = True
    w.link.start(0)
    hello = kind_of(w.to_host.pop())
    w.peer.welcome(hello[M.HE_NONCE])
    w.peer._tx_seq = 1  # the next "WELCOME" would be seq 2
    seq2 = w.peer.command({M.K_TYPE: M.WELCOME, M.WE_NONCE: bytes(16), M.WE_ACKED: 0,
                           M.WE_TIME: 0, M.WE_STORED: b""})
    w.link.feed(seq2, w.now)
    equal((w.link.state, w.link.rejected_mac + w.link.rejected_replay), (HELLO_SENT, 1), "seq 2")
    # §4: a WELCOME whose host_nonce is 15 bytes is no WELCOME (FIELD), whatever its MAC.
    short = {M.K_TYPE: M.WELCOME, M.WE_NONCE: bytes(15), M.WE_ACKED: 0, M.WE_TIME: 0,
             M.WE_STORED: b"", M.K_SEQ: 1, M.K_MAC: bytes(32)}
    w.link.feed(encode_frame(cbor.dumps(short)), w.now)
    equal((w.link.state, w.link.rejected_decode), (HELLO_SENT, 1), "short nonce")
    w.run(110)
    equal(len(w.unheard) >= 1 and kind_of(w.unheard[-1])[M.K_TYPE], M.HELLO, "HELLO retried")


def test_welcome_never_compacts_what_the_device_does_not_hold():
    # §5.2: acked = min(WELCOME.acked, next_counter - 1).
    w = Wire("ahead")
    w.stamp(2)
    w.peer.stored = 9  # a host claiming more than the seal ever made
    w.link.start(0)
    w.run(2)
    equal(w.link.acked, 2)
    # Its signature is for 9, not for the 2 the seal holds (SPEC §5.11): nothing is freed.
    equal(w.rig.journal.acked, 0)


def test_status_comes_first_after_welcome():
    # §5.2 device step 3: STATUS (device seq 1) before any EVENT.
    w = Wire("first")
    w.stamp(3)
    w.link.start(0)
    w.run(3)
    order = [m[M.K_TYPE] for m in w.peer.session]
    first = w.peer.session[0]
    equal((first[M.K_TYPE], first[M.K_SEQ]), (M.STATUS, 1), repr(order))
    equal(w.peer.counters(), [1, 2, 3])


def test_stale_ack_and_device_types_from_the_host_are_ignored():
    # §5.5: an ACK below acked is ignored and counted. §5.7: a device-to-host type arriving
    # at the device is ignored.
    w = _session("stale")
    w.stamp(3)
    w.run(3)
    equal(w.link.acked, 3)
    ignored = w.link.rejected_ack
    w.link.feed(w.peer.command({M.K_TYPE: M.ACK, M.AK_COUNTER: 1, M.AK_STORED: b""}), w.now)
    equal((w.link.acked, w.link.rejected_ack), (3, ignored + 1))
    status = w.peer.command({M.K_TYPE: M.STATUS, M.ST_BATTERY: 1, M.ST_BACKLOG: 0,
                             M.ST_FREE: 0, M.ST_FLAGS: 0, M.ST_PERMIT_LEFT: 0, M.ST_NEXT: 1})
    sent = len(w.to_host)
    w.link.feed(status, w.now)
    equal((len(w.to_host), w.link.acked, w.link.state), (sent, 3, UP))


def test_malformed_frames_are_dropped_and_counted():
    # §2, §5.8: bad stuffing, a frame too short to hold a CRC, a CRC that does not match: each
    # is dropped and counted, and the next frame decodes (here a command that is answered).
    w = _session("malformed")
    good = w.peer.command({M.K_TYPE: M.TIME, M.TI_TIME: (NOW_S + 9) * 1000})
    bad_crc = bytearray(good)
    bad_crc[3] ^= 0x40 if bad_crc[3] != 0x40 else 0x41  # still no 0x00 inside the frame
    frames = (b"\x05\x11\x00", b"\x03\x01\x01\x00", bytes(bad_crc))
    # What each is, by sealproto's own decoder: COBS, SHORT, CRC (SPEC §7.1).
    equal([FrameDecoder().feed(f)[0].reason for f in frames], [1, 2, 3])
    for frame in frames:
        w.link.feed(frame, w.now)
    equal(w.link.rejected_decode, 3, "dropped and counted")
    w.link.feed(good, w.now)
    w.run()
    equal((_results(w), w.rig.clock.t), (1, NOW_S + 9), "then decoded again")
