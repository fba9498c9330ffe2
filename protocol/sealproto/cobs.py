# sealproto.cobs: Consistent Overhead Byte Stuffing (Cheshire & Baker), SPEC §2.
# The output never contains 0x00; a block of 254 data bytes (code 0xFF) implies no zero.
from sealproto.errors import DecodeError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# Reason codes of sealproto.errors as private consts: no name table on a device.
_COBS = const(1)


def encode(data):
    size = len(data)
    out = bytearray(size + size // 254 + 1)
    code_at = 0
    n = 1
    for i in range(size):
        b = data[i]
        if b == 0:
            out[code_at] = n - code_at
            code_at = n
            n += 1
        else:
            out[n] = b
            n += 1
            # A full block only opens another when data remains: the minimal form
            if n - code_at == 0xFF and i + 1 < size:
                out[code_at] = 0xFF
                code_at = n
                n += 1
    out[code_at] = n - code_at
    return bytes(out[:n])


def decode(data):
    n = len(data)
    out = bytearray(n)
    length = 0
    i = 0
    while i < n:
        code = data[i]
        if code == 0:
            raise DecodeError(_COBS, "zero byte inside a frame")
        end = i + code
        if end > n:
            raise DecodeError(_COBS, "block runs past the end")
        i += 1
        while i < end:
            b = data[i]
            if b == 0:
                raise DecodeError(_COBS, "zero byte inside a frame")
            out[length] = b
            length += 1
            i += 1
        if code != 0xFF and i < n:
            out[length] = 0
            length += 1
    return bytes(out[:length])
