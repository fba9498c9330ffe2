"""One frame on the wire (SPEC §2): [COBS(payload || crc32le(payload))][0x00].

`FrameDecoder.feed` takes any chunking of the byte stream and returns, in order, each good
payload (`bytes`, CRC stripped) and each malformed frame (a `DecodeError`); bytes not yet
followed by 0x00 are a partial frame and stay inside the decoder.
"""

from typing import Final

from sealproto.errors import DecodeError

MAX_PAYLOAD: Final = 480

def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """Wire bytes of one frame, delimiter included; ValueError unless 1..MAX_PAYLOAD bytes."""

class FrameDecoder:
    frames: int
    dropped: int
    def __init__(self, max_payload: int = 480) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | DecodeError]: ...
    def reset(self) -> None:
        """Forget a partial frame (e.g. after the transport reconnected); counters stay."""
