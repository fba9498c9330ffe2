# Checks under MicroPython that FrameDecoder.feed allocates per call and per frame, never per byte.
# Run by test_framing.py; prints "alloc ok" or raises.
import gc

from sealproto.framing import FrameDecoder


def allocated(decoder, data):
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    decoder.feed(data)
    after = gc.mem_alloc()
    gc.enable()
    return after - before


partial = bytes(range(1, 256)) + bytes(range(1, 200))
short = partial[:8]
small = allocated(FrameDecoder(), short)
large = allocated(FrameDecoder(), partial)
skipped = allocated(FrameDecoder(max_payload=16), partial)
print("bytes allocated feeding 8 / 454 / 454 skipped bytes:", small, large, skipped)
assert large == small, "allocation grows with the byte count"
assert skipped == small, "an over-long frame allocates"
print("alloc ok")
