# sealproto.errors: the one exception every decoder raises, with a reason code (SPEC §7.1).
# Shared by CPython and MicroPython.
try:
    from micropython import const
except ImportError:

    def const(x):
        return x


COBS = const(1)
SHORT = const(2)
CRC = const(3)
OVERSIZE = const(4)
CBOR = const(5)
NONCANONICAL = const(6)
TYPE = const(7)
FIELD = const(8)
MAC = const(9)
REPLAY = const(10)

_NAMES = (
    "UNKNOWN",
    "COBS",
    "SHORT",
    "CRC",
    "OVERSIZE",
    "CBOR",
    "NONCANONICAL",
    "TYPE",
    "FIELD",
    "MAC",
    "REPLAY",
)


def reason_name(code):
    if type(code) is int and 0 < code < len(_NAMES):
        return _NAMES[code]
    return _NAMES[0]


class DecodeError(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(reason_name(reason) + ": " + detail if detail else reason_name(reason))
        self.reason = reason
        self.detail = detail
