# The device side of the link state machine (SPEC §4.2, §5), sans-IO: feed() takes received
# bytes, tick() runs the timers and sends, next_deadline_ms() says when tick() is due again;
# every frame is built in one preallocated buffer and goes out through send(frame_view).
import binascii
import hashlib
import struct
from micropython import const
from time import ticks_diff

from sealproto import auth, codec
from sealproto.errors import DecodeError
from sealproto.framing import FrameDecoder

# Wire numbers of sealproto (SPEC §4, §7) as const: a name imported from there costs RAM.
# firmware/tests/test_wire_constants.py checks them against sealproto.
_REPLAY = const(10)
_ACK = const(5)
_AK_COUNTER = const(1)
_AK_STORED = const(2)
_AL_CODE = const(1)
_AL_DETAIL = const(3)
_AL_JOURNAL_FAULT = const(5)
_AL_TIME = const(2)
_AL_UNVERIFIED_ACK = const(9)
_ENROL = const(12)
_F_NOT_ENROLLED = const(256)
_ALARM = const(6)
_HE_BOOT = const(4)
_HE_DEVICE = const(2)
_HE_ENROLMENT = const(7)
_HE_FIRMWARE = const(6)
_HE_NEXT = const(5)
_HE_NONCE = const(3)
_HE_VERSION = const(1)
_HELLO = const(1)
_K_SEQ = const(14)
_K_TYPE = const(0)
_PERMIT = const(8)
_OPERATOR = const(14)
_RE_CODE = const(2)
_RE_SEQ = const(1)
_RESULT = const(11)
_REVOKE = const(9)
_ST_BACKLOG = const(2)
_ST_BATTERY = const(1)
_ST_FLAGS = const(4)
_ST_FREE = const(3)
_ST_NEXT = const(6)
_ST_PERMIT_LEFT = const(5)
_ST_UNRECORDED = const(7)
_STATUS = const(7)
_SYNC = const(3)
_TIME = const(10)
_WE_ACKED = const(2)
_WE_NONCE = const(1)
_WE_STORED = const(4)
_WE_TIME = const(3)
_WELCOME = const(2)
_NONCE_LEN = const(16)
_PROTOCOL_VERSION = const(3)
# SPEC §5.1.
_WINDOW = const(8)
_RTO_MS = const(500)
_RTO_MAX_MS = const(8000)
_HELLO_RETRY_MS = const(1000)
_HELLO_RETRY_MAX_MS = const(30000)
_LINK_DEAD_MS = const(30000)
_SYNC_INTERVAL_MS = const(1000)
_STATUS_INTERVAL_MS = const(60000)
# An acknowledgement frees journal space only once the chip verified the gateway's signature on
# it (a Verify, 27 ms typical: tools/benches/bench_firmware.py); one per 16 records frees two
# whole journal segments at a time (seal/journal.py), for under 2 ms of chip time a record.
_VERIFY_EVERY = const(16)
# The chip's wait blocks the link (Nonce + Verify, ~57 ms on the emulated board: more than half
# of a backlog's drain at MTU 247, `tools/bench.py ble`): while journaled records wait to be
# sent the check waits for the end of the burst, or for this many records unfreed.
_VERIFY_BUSY = const(256)
# The longest payload the seal sends, an EVENT, is 186 bytes (SPEC §4.5). With its CRC any
# payload up to 249 bytes is one COBS block (no run of 254 bytes without a zero), so it is
# stuffed in place.
_PAYLOAD_MAX = const(192)

DOWN = const(0)
HELLO_SENT = const(1)
UP = const(2)


class Link:
    def __init__(self, device_id, key, firmware, journal, guard, enrolment, battery_mv, urandom,
                 send, wake):
        self._device_id = device_id
        self._key = key
        self._firmware = firmware
        self._journal = journal
        self._guard = guard
        self._enrolment = enrolment
        self._battery_mv = battery_mv
        self._urandom = urandom
        self._send = send
        # The link's event: set by whoever gives it something to send or to read (the guard,
        # the port's reader); the sender (seal/ports.py) waits on it and clears it.
        self.wake = wake
        self._decoder = FrameDecoder()
        # [0x00][COBS(payload || crc32)][0x00]: see _send_payload.
        self._frame = memoryview(bytearray(_PAYLOAD_MAX + 7))
        self.state = DOWN
        self._nonce = None
        self._session_key = None
        self._tx_seq = 0
        self._rx_seq = 0
        # Two acknowledgements (SPEC §5.11): `acked`, the highest the host acknowledged in this
        # session (the window and the resends follow it), and the journal's `acked`, the highest
        # the enrolled gateway signed as stored (compaction follows it, never `acked`).
        self.acked = journal.acked
        self._next = journal.acked + 1
        self._sent_max = journal.acked
        # The acknowledgement from which the chip checks the signature again.
        self._verify_at = journal.acked + _VERIFY_EVERY
        # An unverified acknowledgement is journaled once a boot (SPEC §5.11): the gateway the
        # seal is enrolled with then learns of the impostor; more would let one fill the journal.
        self._impostor_recorded = False
        self._timer_ms = 0
        self._rto_ms = _RTO_MS
        self._fast_retransmitted = False
        self._host_ms = 0
        self._hello_ms = 0
        self._hello_retry_ms = _HELLO_RETRY_MS
        self._status_ms = 0
        # The flags of the last STATUS: a STATUS goes out whenever the guard's differ (SPEC §5.7);
        # -1 (no flags are) makes one due now.
        self._status_flags = -1
        self._stalled = False
        # What was refused or resent, for tests and benches.
        self.rejected_mac = 0
        self.rejected_replay = 0
        self.rejected_decode = 0
        self.rejected_ack = 0
        self.retransmits = 0

    @property
    def backlog(self):
        # Records the host has not acknowledged (STATUS backlog); the journal may hold a few
        # more, acknowledged but not yet signed as stored (SPEC §5.11).
        return self._journal.next_counter - 1 - self.acked

    def start(self, now_ms):
        self._hello(now_ms)

    # -- receive

    def feed(self, data, now_ms):
        for item in self._decoder.feed(data):
            if isinstance(item, DecodeError):
                self.rejected_decode += 1
            else:
                self._on_payload(item, now_ms)

    def _on_payload(self, payload, now_ms):
        try:
            msg = codec.decode(payload)
        except DecodeError:
            self.rejected_decode += 1
            return
        kind = msg[_K_TYPE]
        if kind == _SYNC:
            # Unauthenticated: one per HELLO interval at most, so SYNC spam cannot spin us.
            if ticks_diff(now_ms, self._hello_ms) >= _SYNC_INTERVAL_MS:
                self._hello(now_ms)
            return
        if kind == _WELCOME:
            if self.state == HELLO_SENT:
                self._on_welcome(msg, now_ms)
            return
        if self.state != UP or _K_SEQ not in msg:
            return
        try:
            seq = auth.accept(msg, self._session_key, self._rx_seq)
        except DecodeError as e:
            if e.reason == _REPLAY:
                self.rejected_replay += 1
            else:
                self.rejected_mac += 1
            return
        self._rx_seq = seq
        self._host_ms = now_ms
        if kind == _ACK:
            self._on_ack(msg[_AK_COUNTER], msg[_AK_STORED], now_ms)
        elif kind in (_PERMIT, _REVOKE, _TIME, _ENROL, _OPERATOR):
            target = self._enrolment if kind == _ENROL else self._guard
            code = target.command(kind, msg)
            self._send_session({_K_TYPE: _RESULT, _RE_SEQ: seq, _RE_CODE: code})
            # permit_left may change without any flag moving: report it.
            self._status_flags = -1

    def _on_welcome(self, msg, now_ms):
        session_key = auth.session_key(self._key, self._nonce, msg[_WE_NONCE])
        try:
            auth.verify(msg, session_key)
        except DecodeError:
            self.rejected_mac += 1
            return
        if msg[_K_SEQ] != 1:
            self.rejected_replay += 1
            return
        self._session_key = session_key
        self._nonce = None
        self._rx_seq = 1
        self._tx_seq = 0
        self._host_ms = now_ms
        self.state = UP
        if msg[_WE_TIME]:
            self._guard.set_time_ms(msg[_WE_TIME])
        # Never acknowledge what this device does not hold (SPEC §5.2).
        journal = self._journal
        acked = min(msg[_WE_ACKED], journal.next_counter - 1)
        self._verify_at = journal.acked + _VERIFY_EVERY
        if acked > journal.acked:
            self._free(acked, msg[_WE_STORED])
        # Resume: everything not acked is sent again, from the oldest, after STATUS.
        self.acked = max(acked, journal.acked)
        self._next = self.acked + 1
        self._sent_max = self.acked
        self._rto_ms = _RTO_MS
        self._fast_retransmitted = False
        self._stalled = False
        self._send_status(now_ms)

    def _free(self, counter, stored_sig):
        # Compact up to `counter` if the enrolled gateway signed that it stored it. A signature
        # that does not verify frees nothing and alarms, and the next is checked _VERIFY_EVERY
        # records on: whoever sent it holds the link key, not the gateway's key (SPEC §15).
        journal = self._journal
        self._verify_at = counter + _VERIFY_EVERY
        try:
            if counter == journal.next_counter - 1:
                head = journal.last_hash
            else:
                head = hashlib.sha256(journal.record(counter)).digest()
            if self._enrolment.stored(counter, head, stored_sig):
                journal.ack(counter)
                return
        except OSError:
            self._guard.raise_alarm(_AL_JOURNAL_FAULT)
            return
        if self._enrolment.gateway is None:
            return
        if self._impostor_recorded:
            self._guard.raise_alarm(_AL_UNVERIFIED_ACK, counter)
        else:
            self._impostor_recorded = True
            self._guard.record_alarm(_AL_UNVERIFIED_ACK, counter)

    def _on_ack(self, counter, stored_sig, now_ms):
        if self.acked < counter <= self._sent_max:
            self.acked = counter
            journal = self._journal
            if self._next <= counter:
                self._next = counter + 1
            if journal.full or (counter >= self._verify_at and (
                    self._next >= journal.next_counter
                    or counter >= journal.acked + _VERIFY_BUSY)):
                self._free(counter, stored_sig)
            self._rto_ms = _RTO_MS
            self._fast_retransmitted = False
            self._timer_ms = now_ms
        elif counter == self.acked and self._sent_max > counter:
            # A repeated ACK while events are in flight: the host saw a gap. One fast
            # retransmit, then duplicates wait for progress or the timer (SPEC §5.5).
            if not self._fast_retransmitted:
                self._fast_retransmitted = True
                self._go_back(now_ms)
        else:
            self.rejected_ack += 1

    def _go_back(self, now_ms):
        self.retransmits += self._next - self.acked - 1
        self._next = self.acked + 1
        self._timer_ms = now_ms

    # -- timers and sending

    def tick(self, now_ms):
        if self.state == HELLO_SENT:
            if ticks_diff(now_ms, self._hello_ms) >= self._hello_retry_ms:
                self._hello_retry_ms = min(2 * self._hello_retry_ms, _HELLO_RETRY_MAX_MS)
                self._hello(now_ms, False)
            return
        if self.state != UP:
            return
        if self._sent_max > self.acked:
            if ticks_diff(now_ms, self._host_ms) >= _LINK_DEAD_MS:
                self._hello(now_ms)
                return
            if ticks_diff(now_ms, self._timer_ms) >= self._rto_ms:
                self._rto_ms = min(2 * self._rto_ms, _RTO_MAX_MS)
                self._fast_retransmitted = False
                self._go_back(now_ms)
        self._send_window(now_ms)
        alarms = self._guard.alarms
        while alarms:
            code, time_s, detail = alarms[0]
            self._send_session({_K_TYPE: _ALARM, _AL_CODE: code, _AL_TIME: time_s,
                                _AL_DETAIL: detail})
            # Taken off once sent: a MemoryError on the way leaves it for the next tick.
            alarms.pop(0)
        if self._status_wanted(now_ms):
            self._send_status(now_ms)

    def next_deadline_ms(self, now_ms):
        # How long tick() may wait (0: it has something to send now), for a sender that sleeps
        # until then unless woken; None before start(): only feed() or start() has work then.
        if self.state == HELLO_SENT:
            return max(0, self._hello_retry_ms - ticks_diff(now_ms, self._hello_ms))
        if self.state != UP:
            return None
        if self._guard.alarms or self._status_wanted(now_ms) or (
                self._window_open() and not self._stalled):
            return 0
        left = _STATUS_INTERVAL_MS - ticks_diff(now_ms, self._status_ms)
        if self._sent_max > self.acked:
            left = min(left, self._rto_ms - ticks_diff(now_ms, self._timer_ms),
                       _LINK_DEAD_MS - ticks_diff(now_ms, self._host_ms))
        return max(0, left)

    def _flags(self):
        flags = self._guard.flags()
        return flags if self._enrolment.gateway else flags | _F_NOT_ENROLLED

    def _status_wanted(self, now_ms):
        return (self._flags() != self._status_flags
                or ticks_diff(now_ms, self._status_ms) >= _STATUS_INTERVAL_MS)

    def _window_open(self):
        # A journaled record is not yet sent and the window has room for it (SPEC §5.3).
        return self._next < self._journal.next_counter and self._next - self.acked <= _WINDOW

    def _send_window(self, now_ms):
        while self._window_open():
            try:
                payload = self._journal.record(self._next)
            except OSError:
                payload = None
            if payload is None:
                # An unacked record the journal cannot give back: stall rather than skip it,
                # and say so once per session.
                if not self._stalled:
                    self._stalled = True
                    self._guard.raise_alarm(_AL_JOURNAL_FAULT, self._next)
                return
            if self._next == self.acked + 1:
                self._timer_ms = now_ms
            # Byte for byte as journaled, never re-encoded (SPEC §5.3).
            self._send_payload(payload)
            if self._next > self._sent_max:
                self._sent_max = self._next
            self._next += 1

    def _send_status(self, now_ms):
        guard = self._guard
        self._status_ms = now_ms
        self._status_flags = self._flags()
        msg = {
            _K_TYPE: _STATUS,
            _ST_BATTERY: self._battery_mv(),
            _ST_BACKLOG: self.backlog,
            _ST_FREE: self._journal.free,
            _ST_FLAGS: self._status_flags,
            _ST_PERMIT_LEFT: guard.permit_left(),
            _ST_NEXT: self._journal.next_counter,
        }
        # Presses that got no record (the reserve exhausted, the chip failing): SPEC §4.3.
        if self._journal.unrecorded:
            msg[_ST_UNRECORDED] = self._journal.unrecorded
        self._send_session(msg)

    def _send_session(self, msg):
        self._tx_seq += 1
        msg[_K_SEQ] = self._tx_seq
        self._send_payload(codec.encode(auth.sign(msg, self._session_key)))

    def _send_payload(self, payload):
        # The frame of SPEC §2 written in place: a 0x00 first, so a receiver holding garbage
        # (line noise, a frame cut short) ends it there and decodes this frame whole; then the
        # payload and its CRC-32 (little-endian), each 0x00 among them replaced by the distance
        # to the next (COBS: all of it is one block, see _PAYLOAD_MAX); then the delimiter.
        n = len(payload)
        if not 0 < n <= _PAYLOAD_MAX:
            raise ValueError("payload size")
        buf = self._frame
        end = n + 2
        buf[2:end] = payload
        struct.pack_into("<I", buf, end, binascii.crc32(buf[2:end]))
        end += 4
        code_at = 1
        for i in range(2, end):
            if buf[i] == 0:
                buf[code_at] = i - code_at
                code_at = i
        buf[code_at] = end - code_at
        buf[0] = 0
        buf[end] = 0
        self._send(buf[: end + 1])

    def _hello(self, now_ms, first=True):
        # A fresh nonce per HELLO: only a WELCOME answering the latest HELLO verifies, so the
        # device and the host always agree on which session is current.
        if first:
            self._hello_retry_ms = _HELLO_RETRY_MS
        self.state = HELLO_SENT
        self._session_key = None
        self._hello_ms = now_ms
        self._nonce = self._urandom(_NONCE_LEN)
        msg = {
            _K_TYPE: _HELLO,
            _HE_VERSION: _PROTOCOL_VERSION,
            _HE_DEVICE: self._device_id,
            _HE_NONCE: self._nonce,
            _HE_BOOT: self._journal.boot_id,
            _HE_NEXT: self._journal.next_counter,
            _HE_FIRMWARE: self._firmware,
            _HE_ENROLMENT: self._enrolment.serial,
        }
        self._send_payload(codec.encode(auth.sign(msg, self._key)))
