# heapsize: 96k  (test code: the reference encoders of sealproto, the rig's flash image)
# Bytes built in place (SPEC §2, §3, §4.1): the link's frames and the recorder's EVENT records
# equal what sealproto's reference encoders make, and building them allocates no buffer.
# Random inputs are seeded and the seed printed.
import binascii
import gc
import hashlib
import os
import random

from mpyunit import equal, raises
from rig import KEY, NOW_S, Rig
from sealproto import auth, cbor, cobs, codec, framing
from sealproto import messages as M
from testchip import signature_of

from seal.events import Recorder, Uptime, _uint
from seal.link import Link

_SEED = 5150
# The boundaries of every CBOR head length (RFC 8949 §3).
_EDGES = (0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1)


def _bits(rnd, n):
    # n random bits; MicroPython's getrandbits() gives at most 32 at a time.
    value = 0
    while n > 0:
        take = min(n, 32)
        value = value << take | rnd.getrandbits(take)
        n -= take
    return value


def _link(frames, rig=None):
    rig = rig or Rig("wire")
    return Link("seal-wire", KEY, "fw", rig.journal, rig.guard, rig.enrolment("seal-wire"),
                lambda: 3700, os.urandom, frames.append, rig.wake)


def _payloads(rnd):
    # Sizes 1..160 (all the seal sends), zero-free, zero-heavy and random.
    for n in range(1, 161):
        yield bytes(1 + rnd.getrandbits(8) % 255 for _ in range(n))
        yield bytes(0 if rnd.getrandbits(1) else rnd.getrandbits(8) for _ in range(n))
    yield bytes(160)


def test_frames_equal_the_reference_with_a_leading_zero():
    random.seed(_SEED)
    print("seed", _SEED)
    frames = []
    link = _link(frames)
    count = 0
    for payload in _payloads(random):
        link._send_payload(payload)
        frame = bytes(frames.pop())
        equal(frame, b"\x00" + framing.encode_frame(payload), f"payload {payload.hex()}")
        # Minimal COBS (SPEC §2 MUST): the reference encoder's stuffing, byte for byte.
        crc = (binascii.crc32(payload) & 0xFFFFFFFF).to_bytes(4, "little")
        equal(frame[1:-1], cobs.encode(payload + crc))
        count += 1
    print("frames compared:", count)


def test_no_empty_or_oversized_payload_is_framed():
    # SPEC §2: a sender MUST NOT send an empty payload; the seal's buffer holds 192 bytes.
    frames = []
    link = _link(frames)
    raises(ValueError, link._send_payload, b"")
    raises(ValueError, link._send_payload, bytes(193))
    equal(frames, [])


def test_uint_heads_equal_the_reference():
    random.seed(_SEED)
    print("seed", _SEED)
    buf = bytearray(16)
    values = list(_EDGES) + [_bits(random, 64) >> random.getrandbits(6) for _ in range(200)]
    for value in values:
        n = _uint(buf, 0, 7, value)
        equal(bytes(buf[:n]), cbor.dumps({7: value})[1:], f"value {value}")


def test_event_records_equal_codec_and_auth():
    # The fixed-shape writer and the precomputed HMAC pads against sealproto's encode + sign,
    # for field values across every head length.
    random.seed(_SEED)
    print("seed", _SEED)
    rig = Rig("records", capacity=200, blocks=128)
    for i in range(60):
        rig.clock.t = _EDGES[i % len(_EDGES)] if i % 3 == 0 else _bits(random, 40)
        rig.ticks[0] += random.getrandbits(8 + i % 24)
        kind = i % 5
        permit = _EDGES[i % 9] if i % 2 else random.getrandbits(32)
        operator = random.getrandbits(32) if i % 2 else _EDGES[(i + 4) % 9]
        prev = rig.journal.last_hash
        counter = rig.recorder.record(kind, permit, operator)
        payload = rig.journal.read(counter)
        msg = M.decode(payload)
        want = {M.K_TYPE: M.EVENT, M.EV_COUNTER: counter, M.EV_BOOT: rig.boot,
                M.EV_UPTIME: msg[M.EV_UPTIME], M.EV_TIME: rig.clock.t, M.EV_KIND: kind,
                M.EV_PERMIT: permit, M.EV_OPERATOR: operator, M.EV_PREV: prev}
        want[M.EV_SIG] = signature_of(auth.seal_digest(want))
        equal(payload, codec.encode(auth.sign(want, KEY)), f"record {counter}")
        equal(rig.journal.last_hash, auth.record_hash(payload))


def _allocated(fn, *args):
    fn(*args)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    fn(*args)
    after = gc.mem_alloc()
    gc.enable()
    return after - before


class _Draft:
    # A journal that only lends its buffer: what record() itself allocates, without flash I/O.
    def __init__(self):
        self._mv = memoryview(bytearray(480))
        self.next_counter = 7
        self.boot_id = 3
        self.last_hash = bytes(32)
        self.full = False
        self.exhausted = False

    def draft(self):
        return self._mv

    def append(self, counter, payload):
        pass


class _SilentChip:
    # Writes its 64 bytes and allocates nothing, as the driver's buffers let it: what is
    # measured below is record() itself.
    def sign_digest(self, slot, digest, out):
        out[0] = slot

    def increment_counter(self, n):
        return n


def _hash_cost(key_pad, view):
    h = hashlib.sha256(key_pad)
    h.update(view)
    inner = h.digest()
    h = hashlib.sha256(key_pad)
    h.update(inner)
    h.digest()


def test_building_a_record_allocates_only_its_hashes():
    # What HMAC-SHA256 costs in hashlib objects (two hashers, two digests, one view of the
    # data) and the seal digest (one hasher, one digest), measured here, is all record() may
    # allocate beside views of its one buffer: no bytes, bytearray, dict or list.
    rec = Recorder(_Draft(), KEY, _SilentChip(), lambda: NOW_S, Uptime())
    pad = bytes(64)
    data = memoryview(bytearray(90))
    hashes = _allocated(_hash_cost, pad, data[:80])
    hashes += _allocated(lambda: hashlib.sha256(data[:80]).digest())
    view = _allocated(lambda: data[:80])
    record = _allocated(rec.record, 0, 17, 1042)
    # The old path, for comparison: a dict, sealproto's encode and sign, a framed copy.
    msg = {M.K_TYPE: M.EVENT, M.EV_COUNTER: 7, M.EV_BOOT: 3, M.EV_UPTIME: 103250,
           M.EV_TIME: NOW_S, M.EV_KIND: 0, M.EV_PERMIT: 17, M.EV_OPERATOR: 1042,
           M.EV_PREV: bytes(32), M.EV_SIG: bytes(64)}
    before = _allocated(lambda: framing.encode_frame(codec.encode(auth.sign(dict(msg), KEY))))
    print("bytes allocated per record: built in place", record, "(hashes", hashes,
          "+ views) ; sealproto encode+sign+frame", before)
    # The views: of the padded key, of the data to hash, of the record to append, of the
    # buffer and of the signature's place in it.
    equal(record <= hashes + 5 * view, True, f"record() allocates {record} B")


def test_framing_allocates_two_views_whatever_the_size():
    # The CRC's view of the payload and the frame's view handed to send(); no copy.
    link = _link([], Rig("alloc"))
    link._send = lambda frame: None
    mv = memoryview(bytearray(20))
    one_view = _allocated(lambda: mv[:10])
    small = _allocated(link._send_payload, bytes(range(1, 21)))
    large = _allocated(link._send_payload, bytes(range(1, 151)))
    print("bytes allocated framing 20 / 150 bytes:", small, large, "(one view:", one_view, ")")
    equal(small, large, "allocation grows with the payload")
    equal(small <= 2 * one_view, True, f"framing allocates {small} B")
