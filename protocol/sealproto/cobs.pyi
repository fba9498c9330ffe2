"""Consistent Overhead Byte Stuffing (SPEC §2)."""

def encode(data: bytes | bytearray | memoryview) -> bytes:
    """Stuff `data` so the result holds no 0x00 (minimal form, no delimiter)."""

def decode(data: bytes | bytearray | memoryview) -> bytes:
    """Unstuff one frame without its delimiter; raises DecodeError(COBS)."""
