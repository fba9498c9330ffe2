"""The one exception every sealproto decoder raises, with a reason code (SPEC §7.1)."""

from typing import Final

COBS: Final = 1
SHORT: Final = 2
CRC: Final = 3
OVERSIZE: Final = 4
CBOR: Final = 5
NONCANONICAL: Final = 6
TYPE: Final = 7
FIELD: Final = 8
MAC: Final = 9
REPLAY: Final = 10

def reason_name(code: int) -> str:
    """The SPEC name of a reason code ("CRC", ...), or "UNKNOWN"."""

class DecodeError(Exception):
    reason: int
    detail: str
    def __init__(self, reason: int, detail: str = "") -> None: ...
