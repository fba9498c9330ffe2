"""C-speed shortcuts for the hot path of the gateway, each proven equal to sealproto by tests.

`decode_event` accepts a payload only when it is byte for byte the deterministic CBOR (SPEC §3)
of a valid EVENT (SPEC §4), which has one fixed shape, parsed directly (a third of the time of
cbor2 decoding plus a canonical re-encoding); anything else returns None and the caller falls
back to `sealproto.messages.decode`, which produces the precise DecodeError. `decode_ack`
decodes with cbor2 (C) and accepts only a map that re-encodes to the same bytes.
host/tests/test_fastpath.py checks with hypothesis that the shortcuts never accept what
sealproto rejects, and decode identically what they accept. `FrameDecoder`, `encode_frame`,
`encode_session` and `hmac_sha256` are held to the same standard there.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import zlib
from typing import Any

import cbor2
from sealproto import framing, messages
from sealproto.errors import DecodeError
from sealproto.framing import MAX_PAYLOAD
from sealproto.messages import K_MAC, K_SEQ, K_TYPE

__all__ = [
    "FrameDecoder",
    "decode_ack",
    "decode_event",
    "device_mac_ok",
    "encode_frame",
    "encode_session",
    "hmac_sha256",
    "seal_digest",
    "seal_signature",
]

_CRC_LEN = 4
_COBS_BLOCK = 254

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
# CBOR heads (RFC 8949 §3): a map of n entries (n < 24), a byte string of n bytes (24 <= n < 256).
_CBOR_MAP = 0xA0
_CBOR_BYTES_1 = 0x58
# An EVENT in deterministic CBOR (SPEC §3, §4) is one fixed shape: a map of 11, key 0 = the
# type, keys 1..7 unsigned ints in their shortest form, then `prev` (32 bytes), the seal's
# signature (64) and the MAC (32), each a byte string with a one-byte length. (key, low, high)
# for the ints, in key order:
_EVENT_HEAD = bytes([_CBOR_MAP + 11, K_TYPE, messages.EVENT])
_EVENT_INTS = (
    (messages.EV_COUNTER, 1, _U32),
    (messages.EV_BOOT, 0, _U32),
    (messages.EV_UPTIME, 0, _U64),
    (messages.EV_TIME, 0, _U64),
    (messages.EV_KIND, 0, messages.KIND_REBOOT),
    (messages.EV_PERMIT, 0, _U32),
    (messages.EV_OPERATOR, 0, _U32),
)
_PREV_HEAD = bytes([messages.EV_PREV, _CBOR_BYTES_1, messages.HASH_LEN])
_MAC_TAIL = bytes([K_MAC, _CBOR_BYTES_1, messages.MAC_LEN])
_MAC_TAIL_LEN = 3 + messages.MAC_LEN
_SIG_HEAD = bytes([messages.EV_SIG, _CBOR_BYTES_1, messages.SIG_LEN])
_SIG_ENTRY_LEN = 3 + messages.SIG_LEN
_EVENT_TAIL_LEN = _MAC_TAIL_LEN + _SIG_ENTRY_LEN + _MAC_TAIL_LEN
# uint head byte -> (argument bytes, least value that may use it: shortest form only)
_UINT_FORMS = {24: (1, 24), 25: (2, 0x100), 26: (4, 0x10000), 27: (8, 0x100000000)}
_ACK_KEYS = (K_TYPE, messages.AK_COUNTER, messages.AK_STORED, K_SEQ, K_MAC)
# The shortest EVENT: its head, every int in one byte after its key, the three byte strings.
_EVENT_MIN_LEN = len(_EVENT_HEAD) + 2 * len(_EVENT_INTS) + _EVENT_TAIL_LEN


def decode_event(payload: bytes) -> dict[int, Any] | None:
    """The EVENT in `payload` if it is exactly the deterministic encoding of a valid one, else
    None. Parsed against the one shape such an EVENT has: no CBOR decoder, no re-encoding."""
    if payload[:3] != _EVENT_HEAD:
        return None
    msg: dict[int, Any] = {K_TYPE: messages.EVENT}
    pos = 3
    end = len(payload)
    for key, low, high in _EVENT_INTS:
        if pos + 2 > end or payload[pos] != key:
            return None
        head = payload[pos + 1]
        pos += 2
        if head < 24:
            value = head
        else:
            form = _UINT_FORMS.get(head)
            if form is None:
                return None
            size, least = form
            value = int.from_bytes(payload[pos : pos + size], "big")
            pos += size
            if value < least:
                return None
        if not low <= value <= high:
            return None
        msg[key] = value
    # pos past the end (a truncated int) fails here too
    sig_at = pos + _MAC_TAIL_LEN
    mac_at = sig_at + _SIG_ENTRY_LEN
    if (
        end != pos + _EVENT_TAIL_LEN
        or payload[pos : pos + 3] != _PREV_HEAD
        or payload[sig_at : sig_at + 3] != _SIG_HEAD
        or payload[mac_at : mac_at + 3] != _MAC_TAIL
    ):
        return None
    msg[messages.EV_PREV] = payload[pos + 3 : sig_at]
    msg[messages.EV_SIG] = payload[sig_at + 3 : mac_at]
    msg[K_MAC] = payload[end - messages.MAC_LEN :]
    return msg


def seal_signature(payload: bytes) -> tuple[bytes, bytes] | None:
    """(seal digest, sig) of what looks like an EVENT, for checking ahead (SealKey.prefetch);
    None for anything else. Not a verdict: the link machine decodes and checks it in full."""
    if payload[:3] != _EVENT_HEAD or len(payload) < _EVENT_MIN_LEN:
        return None
    sig_at = len(payload) - _MAC_TAIL_LEN - messages.SIG_LEN
    return seal_digest(payload), payload[sig_at : sig_at + messages.SIG_LEN]


def seal_digest(payload: bytes) -> bytes:
    """sealproto.auth.seal_digest of the EVENT in `payload`, straight from its bytes: for a
    payload decode_event accepted, the map without keys 9 and 15 is these bytes minus the two
    trailing entries, two map entries fewer (tested)."""
    body = bytes([payload[0] - 2]) + payload[1 : -(_SIG_ENTRY_LEN + _MAC_TAIL_LEN)]
    return hashlib.sha256(body).digest()


def decode_ack(payload: bytes) -> dict[int, Any] | None:
    """An ACK, or None (then sealproto decides): used by the simulated devices of benchmarks."""
    try:
        msg = cbor2.loads(payload)
    except Exception:
        return None
    if (
        type(msg) is not dict
        or tuple(msg) != _ACK_KEYS
        or any(type(key) is not int for key in msg)
        or msg[K_TYPE] != messages.ACK
        or type(msg[messages.AK_COUNTER]) is not int
        or not 0 <= msg[messages.AK_COUNTER] <= _U32
        or type(msg[messages.AK_STORED]) is not bytes
        or len(msg[messages.AK_STORED]) not in (0, messages.SIG_LEN)
        or type(msg[K_SEQ]) is not int
        or not 1 <= msg[K_SEQ] <= _U32
        or type(msg[K_MAC]) is not bytes
        or len(msg[K_MAC]) != messages.MAC_LEN
        or cbor2.dumps(msg) != payload
    ):
        return None
    return msg


def device_mac_ok(payload: bytes, key: bytes) -> bool:
    """HELLO/EVENT MAC check straight on the received bytes (C hmac, no re-encoding).

    Valid for a payload that passed the strict decode: re-encoding the decoded map without
    key 15 gives exactly these bytes minus the trailing MAC entry, one map entry fewer.
    """
    head = payload[0]
    mac_at = len(payload) - messages.MAC_LEN
    if not (_CBOR_MAP + 1 <= head <= _CBOR_MAP + 23) or payload[-_MAC_TAIL_LEN:mac_at] != _MAC_TAIL:
        return False
    body = bytes([head - 1]) + payload[1:-_MAC_TAIL_LEN]
    return hmac.compare_digest(hmac_sha256(key, body), payload[mac_at:])


_HMAC_BLOCK = 64
_HMAC_KEYS_CACHED = 4096


@functools.lru_cache(maxsize=_HMAC_KEYS_CACHED)
def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after the inner and outer key pads (RFC 2104): per message, HMAC is then
    two copies and three C calls instead of hmac.digest's whole setup (a third of its time)."""
    if len(key) > _HMAC_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_HMAC_BLOCK, b"\x00")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """sealproto.auth.hmac_sha256(key, data), byte for byte (tested)."""
    inner_pad, outer_pad = _hmac_pads(key)
    inner = inner_pad.copy()
    inner.update(data)
    outer = outer_pad.copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


def encode_session(msg: dict[int, Any], session_key: bytes) -> bytes:
    """encode(sign(msg, session_key)) for a host session message whose keys are all below 15
    and whose values are ints or bytes: cbor2's canonical output is SPEC §3's encoding."""
    body = cbor2.dumps(msg, canonical=True)
    mac = hmac_sha256(session_key, body)
    return bytes([body[0] + 1]) + body[1:] + _MAC_TAIL + mac


def encode_frame(payload: bytes) -> bytes:
    """sealproto.framing.encode_frame(payload), byte for byte (tested): COBS cut with
    bytes.split at the zeros instead of a loop over every byte."""
    if not 0 < len(payload) <= MAX_PAYLOAD:
        raise ValueError(f"payload must be 1..{MAX_PAYLOAD} bytes")
    segments = (payload + zlib.crc32(payload).to_bytes(_CRC_LEN, "little")).split(b"\x00")
    out = bytearray()
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        while len(segment) >= _COBS_BLOCK:
            out += b"\xff"
            out += segment[:_COBS_BLOCK]
            segment = segment[_COBS_BLOCK:]
            # the minimal form: a full block at the very end opens no empty one
            if not segment and i == last:
                out += b"\x00"
                return bytes(out)
        out.append(len(segment) + 1)
        out += segment
    out += b"\x00"
    return bytes(out)


class FrameDecoder:
    """sealproto.framing.FrameDecoder's exact outcomes (tested), at C speed for good frames.

    Complete frames are cut at 0x00 with bytes.find and unstuffed block by block; anything
    unusual (bad stuffing, short, CRC, oversize) is handed to sealproto's own decoder, so every
    malformed frame is reported with the very DecodeError the reference gives.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._cap = max_payload + _CRC_LEN
        # longest stuffed frame that can still decode to at most _cap bytes
        self._stuffed_max = self._cap + self._cap // 254 + 1
        self._buf = bytearray()
        self._reference = framing.FrameDecoder(max_payload)
        self._delegating = False
        self.fast_frames = 0

    @property
    def frames(self) -> int:
        return self.fast_frames + self._reference.frames

    @property
    def dropped(self) -> int:
        return self._reference.dropped

    def feed(self, data: bytes) -> list[bytes | DecodeError]:
        out: list[bytes | DecodeError] = []
        view = memoryview(data)
        while view:
            if self._delegating:
                end = bytes(view).find(0)
                if end < 0:
                    out.extend(self._reference.feed(view))
                    return out
                out.extend(self._reference.feed(view[: end + 1]))
                self._delegating = False
                view = view[end + 1 :]
                continue
            end = bytes(view).find(0)
            if end < 0:
                self._buf += view
                if len(self._buf) > self._stuffed_max:
                    # Too long to be a frame: the reference skips it without buffering.
                    out.extend(self._reference.feed(self._buf))
                    self._buf = bytearray()
                    self._delegating = True
                return out
            self._buf += view[:end]
            view = view[end + 1 :]
            chunk, self._buf = bytes(self._buf), bytearray()
            if chunk:
                out.append(self._frame(chunk))
        return out

    def _frame(self, chunk: bytes) -> bytes | DecodeError:
        payload = _unstuff(chunk) if len(chunk) <= self._stuffed_max else None
        if payload is not None and _CRC_LEN < len(payload) <= self._cap:
            body = payload[:-_CRC_LEN]
            if zlib.crc32(body) == int.from_bytes(payload[-_CRC_LEN:], "little"):
                self.fast_frames += 1
                return body
        results = self._reference.feed(chunk + b"\x00")
        return results[0]


def _unstuff(chunk: bytes) -> bytes | None:
    out = bytearray()
    i, n = 0, len(chunk)
    while i < n:
        code = chunk[i]
        end = i + code
        if end > n:
            return None
        out += chunk[i + 1 : end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)
