# A small host that speaks the protocol, for firmware tests: it checks every frame the device
# sends (MACs, counter continuity, hash chain, session seq) and keeps what it accepted.
# Runs unchanged under MicroPython (in-memory pipe tests) and CPython (over the emulated pty).
# `prove(device, counter, head)` signs its acknowledgements as the seal's enrolled gateway
# (SPEC §5.11); without it the seal frees nothing, as with a host that holds only the link key.
import os

from sealproto import auth, messages
from sealproto.errors import DecodeError
from sealproto.framing import FrameDecoder, encode_frame
from sealproto.messages import (
    ACK,
    AK_COUNTER,
    AK_STORED,
    EV_COUNTER,
    EV_PREV,
    EVENT,
    HE_DEVICE,
    HE_NONCE,
    HELLO,
    K_SEQ,
    K_TYPE,
    SYNC,
    WE_ACKED,
    WE_NONCE,
    WE_STORED,
    WE_TIME,
    WELCOME,
)


class Peer:
    def __init__(self, device_key, time_ms=1700000000000, keep=True, prove=None):
        self.key = device_key
        self.prove = prove
        self.device = None
        self.time_ms = time_ms
        self.decoder = FrameDecoder()
        # Accepted EVENT payloads in counter order; a long run under MicroPython keeps none and
        # checks each accepted event through on_event(msg) instead.
        self.keep = keep
        self.events = []
        self.stored = 0
        self.on_event = None
        self.last_hash = auth.GENESIS
        self.hellos = []
        self.session = []  # decoded session messages from the device (ALARM, STATUS, RESULT)
        self.errors = []
        self.duplicates = 0
        self.gaps = 0
        self.ack_every = 1
        self.session_key = None
        self._tx_seq = 0
        self._rx_seq = 0
        self._unacked = 0

    def feed(self, data):
        out = []
        for item in self.decoder.feed(data):
            if isinstance(item, DecodeError):
                self.errors.append(("frame", item.reason))
            else:
                self._on_payload(item, out)
        return b"".join(out)

    def _on_payload(self, payload, out):
        try:
            msg = messages.decode(payload)
        except DecodeError as e:
            self.errors.append(("decode", e.reason))
            return
        kind = msg[K_TYPE]
        if kind == HELLO:
            try:
                auth.verify(msg, self.key)
            except DecodeError as e:
                self.errors.append(("hello", e.reason))
                return
            self.hellos.append(msg)
            self.device = msg[HE_DEVICE]
            out.append(self.welcome(msg[HE_NONCE]))
        elif kind == EVENT:
            self._on_event(msg, payload, out)
        elif self.session_key is not None:
            try:
                self._rx_seq = auth.accept(msg, self.session_key, self._rx_seq)
            except DecodeError as e:
                self.errors.append(("session", e.reason))
                return
            self.session.append(msg)

    def welcome(self, device_nonce):
        host_nonce = os.urandom(16)
        self.session_key = auth.session_key(self.key, device_nonce, host_nonce)
        self._tx_seq = 0
        self._rx_seq = 0
        self._unacked = 0
        return self.command({K_TYPE: WELCOME, WE_NONCE: host_nonce, WE_ACKED: self.stored,
                             WE_TIME: self.time_ms, WE_STORED: self.proof()})

    def proof(self):
        if self.prove is None or not self.stored:
            return b""
        return self.prove(self.device, self.stored, self.last_hash)

    def sync(self):
        # What a host sends on opening a link (SPEC §5.9): a 0x00 to flush, then SYNC.
        return b"\x00" + encode_frame(messages.encode({K_TYPE: SYNC}))

    def command(self, msg):
        self._tx_seq += 1
        msg[K_SEQ] = self._tx_seq
        return encode_frame(messages.encode(auth.sign(msg, self.session_key)))

    def _on_event(self, msg, payload, out):
        try:
            auth.verify(msg, self.key)
        except DecodeError as e:
            self.errors.append(("event", e.reason))
            return
        counter = msg[EV_COUNTER]
        if counter <= self.stored:
            self.duplicates += 1
        elif counter > self.stored + 1:
            # A gap: the device must resend from stored + 1; the repeated ACK says so.
            self.gaps += 1
        elif msg[EV_PREV] != self.last_hash:
            self.errors.append(("chain", counter))
            return
        else:
            if self.keep:
                self.events.append(payload)
            if self.on_event:
                self.on_event(msg)
            self.stored = counter
            self.last_hash = auth.record_hash(payload)
            self._unacked += 1
            if self._unacked < self.ack_every:
                return
        self._unacked = 0
        if self.session_key is not None:
            out.append(self.command({K_TYPE: ACK, AK_COUNTER: self.stored,
                                     AK_STORED: self.proof()}))

    def counters(self):
        return [messages.decode(p)[EV_COUNTER] for p in self.events]

    def of_type(self, kind):
        return [m for m in self.session if m[K_TYPE] == kind]
