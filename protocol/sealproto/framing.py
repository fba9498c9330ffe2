# sealproto.framing: one frame on the wire (SPEC §2), a streaming decoder fed any chunking.
# [COBS(payload || crc32le(payload))][0x00]; payload 1..MAX_PAYLOAD bytes.
import binascii

from sealproto import cobs
from sealproto.errors import DecodeError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# Reason codes of sealproto.errors as private consts: no name table on a device.
_COBS = const(1)
_CRC = const(3)
_OVERSIZE = const(4)
_SHORT = const(2)

MAX_PAYLOAD = const(480)
_CRC_LEN = const(4)


def encode_frame(payload):
    size = len(payload)
    if size == 0 or size > MAX_PAYLOAD:
        raise ValueError("payload must be 1.." + str(MAX_PAYLOAD) + " bytes")
    body = bytearray(size + _CRC_LEN)
    body[:size] = payload
    body[size:] = (binascii.crc32(payload) & 0xFFFFFFFF).to_bytes(_CRC_LEN, "little")
    return cobs.encode(body) + b"\x00"


class FrameDecoder:
    # COBS is undone byte by byte straight into one preallocated buffer, so a frame is never
    # buffered twice and an over-long one is skipped without being stored at all.
    def __init__(self, max_payload=MAX_PAYLOAD):
        self._cap = max_payload + _CRC_LEN
        self._buf = bytearray(self._cap)
        self._view = memoryview(self._buf)
        self.frames = 0
        self.dropped = 0
        self.reset()

    def reset(self):
        self._n = 0
        self._left = 0
        self._zero = False
        self._seen = False
        self._err = 0

    def feed(self, data):
        out = []
        buf = self._buf
        cap = self._cap
        n = self._n
        left = self._left
        zero = self._zero
        seen = self._seen
        err = self._err
        for b in data:
            if b == 0:
                if seen:
                    self._n = n
                    self._left = left
                    self._err = err
                    out.append(self._finish())
                n = 0
                left = 0
                zero = False
                seen = False
                err = 0
            elif err:
                pass
            elif left:
                if n == cap:
                    err = _OVERSIZE
                else:
                    buf[n] = b
                    n += 1
                    left -= 1
            else:
                seen = True
                if zero:
                    if n == cap:
                        err = _OVERSIZE
                        continue
                    buf[n] = 0
                    n += 1
                left = b - 1
                zero = b != 0xFF
        self._n = n
        self._left = left
        self._zero = zero
        self._seen = seen
        self._err = err
        return out

    def _finish(self):
        n = self._n
        if self._err:
            error = DecodeError(self._err, "frame longer than " + str(self._cap) + " bytes")
        elif self._left:
            error = DecodeError(_COBS, "block runs past the delimiter")
        elif n <= _CRC_LEN:
            error = DecodeError(_SHORT, str(n) + " bytes")
        else:
            buf = self._buf
            end = n - _CRC_LEN
            got = buf[end] | buf[end + 1] << 8 | buf[end + 2] << 16 | buf[end + 3] << 24
            if binascii.crc32(self._view[:end]) & 0xFFFFFFFF == got:
                self.frames += 1
                return bytes(self._view[:end])
            error = DecodeError(_CRC, "crc mismatch")
        self.dropped += 1
        return error
