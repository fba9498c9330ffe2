"""COBS and the streaming FrameDecoder: any chunking, resync, over-long frames, counters."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_testlib import PROTOCOL, reference_cobs_decode, run_micropython
from sealproto import cobs
from sealproto.errors import COBS, CRC, OVERSIZE, SHORT, DecodeError
from sealproto.framing import MAX_PAYLOAD, FrameDecoder, encode_frame

PAYLOADS = st.binary(min_size=1, max_size=MAX_PAYLOAD)


@settings(max_examples=400)
@given(st.binary(max_size=1200))
def test_cobs_roundtrip(data: bytes) -> None:
    stuffed = cobs.encode(data)
    assert b"\x00" not in stuffed
    assert len(stuffed) <= len(data) + len(data) // 254 + 1
    assert cobs.decode(stuffed) == data
    assert reference_cobs_decode(stuffed) == data


def test_cobs_minimal_form_at_block_boundaries() -> None:
    assert cobs.encode(b"") == b"\x01"
    assert cobs.encode(b"\x00") == b"\x01\x01"
    assert cobs.encode(b"\x11" * 254) == b"\xff" + b"\x11" * 254
    assert cobs.encode(b"\x11" * 255) == b"\xff" + b"\x11" * 254 + b"\x02\x11"
    # the non-minimal form (a trailing empty block) still decodes to the same data
    assert cobs.decode(b"\xff" + b"\x11" * 254 + b"\x01") == b"\x11" * 254


@pytest.mark.parametrize("bad", [b"\x00", b"\x03\x01", b"\x02\x00", b"\x05abc"])
def test_cobs_rejects(bad: bytes) -> None:
    with pytest.raises(DecodeError) as e:
        cobs.decode(bad)
    assert e.value.reason == COBS


@settings(max_examples=300)
@given(st.lists(PAYLOADS, min_size=1, max_size=6), st.data())
def test_frames_survive_any_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = FrameDecoder()
    got: list[bytes | DecodeError] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += decoder.feed(stream[start:end])
    assert got == payloads
    assert (decoder.frames, decoder.dropped) == (len(payloads), 0)


def test_frame_layout() -> None:
    payload = b"\x00\x01\x00"
    wire = encode_frame(payload)
    body = payload + zlib.crc32(payload).to_bytes(4, "little")
    assert wire == cobs.encode(body) + b"\x00"
    assert len(encode_frame(bytes(MAX_PAYLOAD))) <= MAX_PAYLOAD + 4 + 3
    for bad in (b"", bytes(MAX_PAYLOAD + 1)):
        with pytest.raises(ValueError):
            encode_frame(bad)


def outcome(items: list[bytes | DecodeError]) -> list[object]:
    return [i if isinstance(i, bytes) else i.reason for i in items]


def test_each_framing_error_is_named() -> None:
    decoder = FrameDecoder()
    good = encode_frame(b"\xa1\x00\x03")
    corrupt = bytearray(encode_frame(b"\xa1\x01\x03"))
    corrupt[2] ^= 0x40  # a data byte: this frame is a single COBS block
    stream = b"\x04ab\x00" + b"\x01\x00" + bytes(corrupt) + b"\x01" * 600 + b"\x00" + good
    assert outcome(decoder.feed(stream)) == [COBS, SHORT, CRC, OVERSIZE, b"\xa1\x00\x03"]
    assert (decoder.frames, decoder.dropped) == (1, 4)


def test_overlong_frame_is_not_buffered() -> None:
    # That nothing is stored is measured under MicroPython (mp_alloc_check.py); here: the
    # run yields nothing until its delimiter, then exactly one OVERSIZE, then the next frame.
    decoder = FrameDecoder(max_payload=16)
    assert decoder.feed(b"\x07" * 100_000) == []
    assert outcome(decoder.feed(b"\x00" + encode_frame(b"\x01" * 16))) == [OVERSIZE, b"\x01" * 16]


def test_payload_of_exactly_max_is_accepted() -> None:
    for size in (1, 250, 251, 253, 254, 255, MAX_PAYLOAD):
        payload = bytes([7]) * size
        assert FrameDecoder().feed(encode_frame(payload)) == [payload]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[pos % len(data)] ^= 1 << rng.randrange(8)
        elif op == 1:
            data.insert(pos, rng.randrange(256))
        elif op == 2 and data:
            del data[pos % len(data)]
        else:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    return bytes(data)


@settings(max_examples=500)
@given(st.binary(max_size=2000), st.lists(PAYLOADS, max_size=3), st.integers(0, 2**32))
def test_garbage_and_mutations_only_yield_payloads_or_decode_errors(
    garbage: bytes, payloads: list[bytes], seed: int
) -> None:
    rng = random.Random(seed)
    stream = garbage + b"".join(mutate(rng, encode_frame(p)) for p in payloads)
    decoder = FrameDecoder()
    items: list[bytes | DecodeError] = []
    step = rng.randint(1, 64)
    for start in range(0, len(stream), step):
        items += decoder.feed(stream[start : start + step])
    good = [i for i in items if isinstance(i, bytes)]
    assert all(isinstance(i, bytes | DecodeError) for i in items)
    assert all(1 <= len(p) <= MAX_PAYLOAD for p in good)
    assert (decoder.frames, decoder.dropped) == (len(good), len(items) - len(good))
    # resynchronisation: whatever came before, a delimiter and a good frame get through
    assert decoder.feed(b"\x00" + encode_frame(b"sync"))[-1] == b"sync"


def test_per_byte_work_does_not_allocate_under_micropython() -> None:
    out = run_micropython(str(PROTOCOL / "tests" / "mp_alloc_check.py"))
    assert "alloc ok" in out, out
