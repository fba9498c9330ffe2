"""C-speed shortcuts for the hot path of the gateway, each proven equal to sealproto by tests.

`decode_event` accepts a payload only when cbor2 (C) decodes it to a map that re-encodes to
exactly the same bytes (so it is deterministic CBOR, SPEC §3) and that passes the EVENT schema
(SPEC §4); anything else returns None and the caller falls back to `sealproto.messages.decode`,
which produces the precise DecodeError. host/tests/test_fastpath.py checks with hypothesis that
the shortcut never accepts what sealproto rejects, and decodes identically what it accepts.
`FrameDecoder` and `encode_session` are held to the same standard there.
"""

from __future__ import annotations

import hmac
import zlib
from typing import Any

import cbor2
from sealproto import framing
from sealproto.errors import DecodeError
from sealproto.framing import MAX_PAYLOAD

__all__ = ["FrameDecoder", "decode_ack", "decode_event", "device_mac_ok", "encode_session"]

_CRC_LEN = 4

_EVENT = 4
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
# key -> (low, high) for ints; None marks the 32-byte byte strings (prev, mac)
_EVENT_SCHEMA: dict[int, tuple[int, int] | None] = {
    0: (_EVENT, _EVENT),
    1: (1, _U32),
    2: (0, _U32),
    3: (0, _U64),
    4: (0, _U64),
    5: (0, 4),
    6: (0, _U32),
    7: (0, _U32),
    8: None,
    15: None,
}
_MAC_TAIL = b"\x0f\x58\x20"
_MAC_TAIL_LEN = 3 + 32


def decode_event(payload: bytes) -> dict[int, Any] | None:
    try:
        msg = cbor2.loads(payload)
    except Exception:  # any oddity: let sealproto give the precise reason
        return None
    if type(msg) is not dict or len(msg) != len(_EVENT_SCHEMA):
        return None
    for key, bounds in _EVENT_SCHEMA.items():
        value = msg.get(key)
        if bounds is None:
            if type(value) is not bytes or len(value) != 32:
                return None
        elif type(value) is not int or not bounds[0] <= value <= bounds[1]:
            return None
    if cbor2.dumps(msg, canonical=True) != payload:
        return None
    return msg


def decode_ack(payload: bytes) -> dict[int, Any] | None:
    """An ACK, or None (then sealproto decides): used by the simulated devices of benchmarks."""
    try:
        msg = cbor2.loads(payload)
    except Exception:
        return None
    if (
        type(msg) is not dict
        or msg.keys() != {0, 1, 14, 15}
        or msg[0] != 5
        or type(msg[1]) is not int
        or not 0 <= msg[1] <= _U32
        or type(msg[14]) is not int
        or not 1 <= msg[14] <= _U32
        or type(msg[15]) is not bytes
        or len(msg[15]) != 32
        or cbor2.dumps(msg, canonical=True) != payload
    ):
        return None
    return msg


def device_mac_ok(payload: bytes, key: bytes) -> bool:
    """HELLO/EVENT MAC check straight on the received bytes (C hmac, no re-encoding).

    Valid for a payload that passed the strict decode: re-encoding the decoded map without
    key 15 gives exactly these bytes minus the trailing MAC entry, one map entry fewer.
    """
    head = payload[0]
    if not (0xA1 <= head <= 0xB7) or payload[-_MAC_TAIL_LEN:-32] != _MAC_TAIL:
        return False
    body = bytes([head - 1]) + payload[1:-_MAC_TAIL_LEN]
    return hmac.compare_digest(hmac.digest(key, body, "sha256"), payload[-32:])


def encode_session(msg: dict[int, Any], session_key: bytes) -> bytes:
    """encode(sign(msg, session_key)) for a host session message whose keys are all below 15
    and whose values are ints or bytes: cbor2's canonical output is SPEC §3's encoding."""
    body = cbor2.dumps(msg, canonical=True)
    mac = hmac.digest(session_key, body, "sha256")
    return bytes([body[0] + 1]) + body[1:] + _MAC_TAIL + mac


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
