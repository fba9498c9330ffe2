# The device side of the link state machine (SPEC §4.2, §5), sans-IO: feed() takes received
# bytes, tick() runs the timers, every frame goes out through send(frame_bytes).
from micropython import const
from time import ticks_diff

from sealproto import auth, codec
from sealproto.errors import DecodeError
from sealproto.framing import FrameDecoder, encode_frame

# Wire numbers of sealproto (SPEC §4, §7) as const: a name imported from there costs RAM.
# firmware/tests/test_wire_constants.py checks them against sealproto.
_REPLAY = const(10)
_ACK = const(5)
_AK_COUNTER = const(1)
_AL_CODE = const(1)
_AL_DETAIL = const(3)
_AL_JOURNAL_FAULT = const(5)
_AL_TIME = const(2)
_ALARM = const(6)
_HE_BOOT = const(4)
_HE_DEVICE = const(2)
_HE_FIRMWARE = const(6)
_HE_NEXT = const(5)
_HE_NONCE = const(3)
_HE_VERSION = const(1)
_HELLO = const(1)
_K_SEQ = const(14)
_K_TYPE = const(0)
_PERMIT = const(8)
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
_STATUS = const(7)
_SYNC = const(3)
_TIME = const(10)
_WE_ACKED = const(2)
_WE_NONCE = const(1)
_WE_TIME = const(3)
_WELCOME = const(2)
_NONCE_LEN = const(16)
_PROTOCOL_VERSION = const(1)
# SPEC §5.1.
_WINDOW = const(8)
_RTO_MS = const(500)
_RTO_MAX_MS = const(8000)
_HELLO_RETRY_MS = const(1000)
_HELLO_RETRY_MAX_MS = const(30000)
_LINK_DEAD_MS = const(30000)
_SYNC_INTERVAL_MS = const(1000)
_STATUS_INTERVAL_MS = const(60000)
_MAX_ALARMS = const(8)

DOWN = const(0)
HELLO_SENT = const(1)
UP = const(2)


class Link:
    def __init__(self, device_id, key, boot_id, firmware, journal, recorder, guard, battery_mv,
                 urandom, send):
        self._device_id = device_id
        self._key = key
        self._boot_id = boot_id
        self._firmware = firmware
        self._journal = journal
        self._recorder = recorder
        self._guard = guard
        self._battery_mv = battery_mv
        self._urandom = urandom
        self._send = send
        self._decoder = FrameDecoder()
        self.state = DOWN
        self._nonce = None
        self._session_key = None
        self._tx_seq = 0
        self._rx_seq = 0
        self._acked = journal.acked
        self._next = self._acked + 1
        self._sent_max = self._acked
        self._timer_ms = 0
        self._rto_ms = _RTO_MS
        self._fast_retransmitted = False
        self._host_ms = 0
        self._hello_ms = 0
        self._hello_retry_ms = _HELLO_RETRY_MS
        self._status_ms = 0
        self._status_due = False
        self._stalled = False
        self._alarms = []
        # What was refused or resent, for tests and benches.
        self.rejected_mac = 0
        self.rejected_replay = 0
        self.rejected_decode = 0
        self.rejected_ack = 0
        self.retransmits = 0

    def start(self, now_ms):
        self._hello(now_ms)

    def alarm(self, code, detail=0):
        if len(self._alarms) >= _MAX_ALARMS:
            self._alarms.pop(0)
        self._alarms.append((code, self._guard.time_s(), detail))

    def status_changed(self):
        self._status_due = True

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
            self._on_ack(msg[_AK_COUNTER], now_ms)
        elif kind == _PERMIT or kind == _REVOKE or kind == _TIME:
            code = self._guard.command(kind, msg)
            self._send_session({_K_TYPE: _RESULT, _RE_SEQ: seq, _RE_CODE: code})

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
        # Never compact what this device does not hold (SPEC §5.2).
        acked = min(msg[_WE_ACKED], self._recorder.next_counter - 1)
        if acked > self._acked:
            self._journal_ack(acked)
        # Resume: everything not acked is sent again, from the oldest, after STATUS.
        self._next = self._acked + 1
        self._sent_max = self._acked
        self._rto_ms = _RTO_MS
        self._fast_retransmitted = False
        self._stalled = False
        self._send_status(now_ms)

    def _journal_ack(self, counter):
        try:
            self._journal.ack(counter)
        except OSError:
            self._guard.raise_alarm(_AL_JOURNAL_FAULT)
            return
        self._acked = counter

    def _on_ack(self, counter, now_ms):
        if self._acked < counter <= self._sent_max:
            self._journal_ack(counter)
            if self._next <= counter:
                self._next = counter + 1
            self._rto_ms = _RTO_MS
            self._fast_retransmitted = False
            self._timer_ms = now_ms
        elif counter == self._acked and self._sent_max > counter:
            # A repeated ACK while events are in flight: the host saw a gap. One fast
            # retransmit, then duplicates wait for progress or the timer (SPEC §5.5).
            if not self._fast_retransmitted:
                self._fast_retransmitted = True
                self._go_back(now_ms)
        else:
            self.rejected_ack += 1

    def _go_back(self, now_ms):
        self.retransmits += self._next - self._acked - 1
        self._next = self._acked + 1
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
        if self._sent_max > self._acked:
            if ticks_diff(now_ms, self._host_ms) >= _LINK_DEAD_MS:
                self._hello(now_ms)
                return
            if ticks_diff(now_ms, self._timer_ms) >= self._rto_ms:
                self._rto_ms = min(2 * self._rto_ms, _RTO_MAX_MS)
                self._fast_retransmitted = False
                self._go_back(now_ms)
        self._send_window(now_ms)
        while self._alarms:
            code, time_s, detail = self._alarms.pop(0)
            self._send_session({_K_TYPE: _ALARM, _AL_CODE: code, _AL_TIME: time_s,
                                _AL_DETAIL: detail})
        if self._status_due or ticks_diff(now_ms, self._status_ms) >= _STATUS_INTERVAL_MS:
            self._send_status(now_ms)

    def _send_window(self, now_ms):
        newest = self._recorder.next_counter - 1
        while self._next <= newest and self._next - self._acked <= _WINDOW:
            try:
                payload = self._journal.read(self._next)
            except OSError:
                payload = None
            if payload is None:
                # An unacked record the journal cannot give back: stall rather than skip it,
                # and say so once per session.
                if not self._stalled:
                    self._stalled = True
                    self._guard.raise_alarm(_AL_JOURNAL_FAULT, self._next)
                return
            if self._next == self._acked + 1:
                self._timer_ms = now_ms
            self._send(encode_frame(payload))
            if self._next > self._sent_max:
                self._sent_max = self._next
            self._next += 1

    def _send_status(self, now_ms):
        guard = self._guard
        self._status_due = False
        self._status_ms = now_ms
        self._send_session({
            _K_TYPE: _STATUS,
            _ST_BATTERY: self._battery_mv(),
            _ST_BACKLOG: self._journal.backlog,
            _ST_FREE: self._journal.free,
            _ST_FLAGS: guard.flags(),
            _ST_PERMIT_LEFT: guard.permit_left(),
            _ST_NEXT: self._recorder.next_counter,
        })

    def _send_session(self, msg):
        self._tx_seq += 1
        msg[_K_SEQ] = self._tx_seq
        self._send(encode_frame(codec.encode(auth.sign(msg, self._session_key))))

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
            _HE_BOOT: self._boot_id,
            _HE_NEXT: self._recorder.next_counter,
            _HE_FIRMWARE: self._firmware,
        }
        self._send(encode_frame(codec.encode(auth.sign(msg, self._key))))
