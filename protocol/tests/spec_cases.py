"""Conformance cases for the sealproto-level MUSTs of SPEC §2-§4, written from the SPEC text.

Expected outcomes come from the SPEC and from independent code (cbor2, zlib, hmac, a COBS
encoder written here from the §2 paragraph), never from sealproto itself. The §4 field cases
are generated from the §4 message table as the SPEC prints it, so a field added to the table
gets its cases without anyone writing them. spec_runner.py runs the cases on both interpreters.

Each case names the groups it belongs to; a group is one parameter of
test_sealproto_conformance.py and one test id in protocol/CONFORMANCE.md.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cbor2
from protocol_testlib import PROTOCOL

Case = dict[str, Any]
SPEC = (PROTOCOL / "SPEC.md").read_text()
MAX_PAYLOAD = int(re.search(r"`MAX_PAYLOAD = (\d+)`", SPEC)[1])  # type: ignore[index]
U32, U64 = 2**32 - 1, 2**64 - 1
KEY = hashlib.sha256(b"sealink spec cases/device key").digest()
OTHER_KEY = hashlib.sha256(b"sealink spec cases/another key").digest()


def section(number: str) -> str:
    """The text of one SPEC section, up to the next heading."""
    start = re.search(rf"^#+ {re.escape(number)}\.? .*$", SPEC, flags=re.MULTILINE)
    assert start, number
    rest = SPEC[start.end() :]
    end = re.search(r"^#+ ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


# --- framing (§2), by the SPEC's own definitions ----------------------------------------------


def cobs_minimal(data: bytes) -> bytes:
    """COBS as the §2 paragraph states it: cut at each 0x00 and after 254 non-zero bytes."""
    out = bytearray()
    piece = bytearray()
    after_run = False  # the last piece sent was a 254-byte run (code 0xFF)
    for b in data:
        if b == 0:
            out += bytes([len(piece) + 1]) + piece
            piece, after_run = bytearray(), False
            continue
        piece.append(b)
        if len(piece) == 254:
            out += b"\xff" + piece
            piece, after_run = bytearray(), True
    if piece or not after_run:  # the minimal form: no empty piece after a final 0xFF piece
        out += bytes([len(piece) + 1]) + piece
    return bytes(out)


def body(payload: bytes) -> bytes:
    return payload + zlib.crc32(payload).to_bytes(4, "little")


def frame(payload: bytes) -> bytes:
    return cobs_minimal(body(payload)) + b"\x00"


def nonzero_payload(size: int) -> bytes:
    """`size` non-zero bytes whose CRC has no zero byte either: stuffing adds no zero cuts."""
    for last in range(1, 256):
        payload = b"\x11" * (size - 1) + bytes([last])
        if 0 not in body(payload):
            return payload
    raise AssertionError(size)


def stream_case(name: str, groups: list[str], parts: list[tuple[bytes, int]],
                want: list[bytes | str], every_cut: bool = False,
                cuts: tuple[tuple[int, ...], ...] = ()) -> Case:
    return {
        "name": name, "groups": groups, "op": "stream", "every_cut": every_cut,
        "parts": [[p.hex(), n] for p, n in parts], "cuts": [list(c) for c in cuts],
        "want": [w.hex() if isinstance(w, bytes) else w for w in want],
        "frames": sum(isinstance(w, bytes) for w in want),
        "dropped": sum(isinstance(w, str) for w in want),
    }


def framing_cases() -> Iterator[Case]:
    g = ["cobs_minimal"]
    for size in (1, 2, 250, 251, 252, 253, 254, 255, 300, MAX_PAYLOAD):
        for label, payload in (("non-zero", nonzero_payload(size)), ("zero", bytes(size)),
                               ("counting", (bytes(range(256)) * 2)[:size])):
            yield {"name": f"minimal stuffing of a {size}-byte {label} payload",
                   "groups": g, "op": "encode_frame", "hex": payload.hex(),
                   "want": frame(payload).hex()}
    exact = nonzero_payload(250)  # payload + CRC = one 254-byte run
    assert frame(exact) == b"\xff" + body(exact) + b"\x00"
    yield {"name": "254 stuffed bytes end without an empty piece", "groups": g,
           "op": "encode_frame", "hex": exact.hex(), "want": frame(exact).hex()}

    g = ["cobs_nonminimal"]
    padded = b"\xff" + body(exact) + b"\x01\x00"
    yield stream_case("a trailing empty piece after 0xFF is accepted", g, [(padded, 1)],
                      [exact], every_cut=True)
    yield stream_case("minimal and non-minimal forms give the same payload", g,
                      [(frame(exact), 1), (padded, 1)], [exact, exact])

    g = ["oversize"]
    largest = nonzero_payload(MAX_PAYLOAD)
    assert len(frame(largest)) == 487  # 486 stuffed + the delimiter
    yield stream_case("486 stuffed bytes are one frame", g, [(frame(largest), 1)], [largest])
    over = cobs_minimal(body(nonzero_payload(MAX_PAYLOAD + 1)))
    assert len(over) == 487
    yield stream_case("487 stuffed bytes are OVERSIZE", g, [(over + b"\x00", 1)], ["OVERSIZE"])
    yield stream_case("481 zero bytes payload is OVERSIZE", g,
                      [(cobs_minimal(body(bytes(MAX_PAYLOAD + 1))) + b"\x00", 1)], ["OVERSIZE"])
    yield stream_case("a 100 kB run is one OVERSIZE at its delimiter, then the next frame", g,
                      [(b"\x07", 100_000), (b"\x00", 1), (frame(b"next"), 1)],
                      ["OVERSIZE", b"next"])
    yield stream_case("a 600-zero run (code 01s) is one OVERSIZE", g,
                      [(b"\x01", 600), (b"\x00", 1), (frame(b"after"), 1)],
                      ["OVERSIZE", b"after"], every_cut=True)

    g = ["no_empty_payload"]
    yield {"name": "an empty payload is refused", "groups": g, "op": "encode_frame", "hex": "",
           "want": "ValueError"}
    yield {"name": f"a {MAX_PAYLOAD + 1}-byte payload is refused", "groups": g,
           "op": "encode_frame", "hex": bytes(MAX_PAYLOAD + 1).hex(), "want": "ValueError"}
    yield stream_case("an empty payload (its CRC alone) arrives as SHORT", g,
                      [(cobs_minimal(body(b"")) + b"\x00", 1)], ["SHORT"])
    yield stream_case("bare delimiters are no frames at all", g, [(b"\x00", 5)], [])

    g = ["any_split"]
    corrupt = bytearray(frame(b"\xa1\x01\x03"))
    corrupt[2] ^= 0x40
    mixed = [
        (b"\x00", 2), (b"garbage\x03", 1), (b"\x00", 1), (frame(b"\xa1\x00\x03"), 1),
        (b"\x04ab\x00", 1), (b"\x01\x00", 1), (bytes(corrupt), 1), (b"\x01", 600),
        (b"\x00", 1), (frame(bytes(range(256))), 1), (frame(nonzero_payload(260)), 1),
        (frame(b"partial, never delimited")[:-1], 1),
    ]
    total = sum(len(p) * n for p, n in mixed)
    yield stream_case(
        "every frame and error the same at every cut", g, mixed,
        ["COBS", b"\xa1\x00\x03", "COBS", "SHORT", "CRC", "OVERSIZE", bytes(range(256)),
         nonzero_payload(260)],
        every_cut=True,
        cuts=tuple(tuple(range(start, total, step)) for start, step in ((1, 7), (3, 64), (5, 255))),
    )


# --- encoding (§3) ----------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {"map": [[k, to_json(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def encoding_cases() -> Iterator[Case]:
    g = ["deterministic"]
    values: list[Any] = []
    for n in (0, 23, 24, 255, 256, 65535, 65536, U32, U32 + 1, U64):
        values += [n, -n - 1]
    for size in (0, 23, 24, 255, 256):
        values += [b"\x5a" * size, "z" * size, [0] * size]
    values += [
        {23: 0, 5: 1, 0: 2, 14: 3}, {1: {3: [], 2: {}}, 0: [[[None]]]}, "ü€𝄞", True, False,
        None, {k: k for k in range(23, -1, -1)},
    ]
    for n, value in enumerate(values):
        yield {"name": f"deterministic encoding #{n}: {value!r:.50}", "groups": g, "op": "dumps",
               "value": to_json(value), "want": cbor2.dumps(value, canonical=True).hex()}

    g = ["reject_malformed"]
    noncanonical = {
        "int in a longer head": ["1817", "1900ff", "1a0000ffff", "1b00000000ffffffff", "3817"],
        "length in a longer head": ["5801aa", "780161", "980100", "b8010000"],
        "map key in a longer head": ["a1180000", "a1190000f6", "a11a00000000f6",
                                     "a11b0000000000000000f6"],
        "indefinite length": ["5f40ff", "7f60ff", "9fff", "bfff", "5fff"],
        "map keys unsorted": ["a2010000f6"],
        "map key duplicated": ["a200000000", "a3000001000100"],
    }
    malformed = {
        "truncated": ["18", "43aabb", "8200", "a100", "1b00", "62c3"],
        "trailing bytes": ["0000", "a10000f6"],
        "reserved additional information": [f"{m << 5 | ai:02x}" for m in range(8)
                                            for ai in (28, 29, 30)],
        "lone break": ["ff", "81ff"],
        "float": ["f93c00", "fa3f800000", "fb3ff0000000000000", "a100f93c00"],
        "tag": ["c0617a", "d81840", "c24101", "a100c100"],
        "simple value other than false/true/null": ["f7", "e0", "f0", "f3", "f820", "f8ff"],
        "invalid UTF-8": ["61ff", "6180", "61c3", "62c0af", "63eda080", "64f4908080"],
        "map key not an integer 0..23": ["a12000", "a1181800", "a1616100", "a14000",
                                         "a1f500", "a18000"],
        "map of more than 24 entries": ["b819" + "".join(f"{k:02x}00" for k in range(24))
                                        + "1700"],
        "more than 4 nested containers": ["818181818100", "a100a100a100a100a10000",
                                          "81a100818181f6"],
    }
    for want, table in (("NONCANONICAL", noncanonical), ("CBOR", malformed)):
        for what, samples in table.items():
            for sample in samples:
                yield {"name": f"{what}: {sample[:24]} is {want}", "groups": g, "op": "loads",
                       "hex": sample, "want": want}
    for ok in ("81818181f6", "a100a100a100a100f6", "1bffffffffffffffff", "3bffffffffffffffff",
               "f4", "f5", "f6", "63e282ac", "64f48fbfbf"):
        yield {"name": f"inside the subset: {ok}", "groups": g, "op": "loads", "hex": ok,
               "want": "ok"}


# --- messages (§4), generated from the SPEC's table -------------------------------------------


def codes(number: str, pattern: str = r"(?<![\w.])(\d+) [A-Z][A-Z_]+") -> list[int]:
    return sorted({int(n) for n in re.findall(pattern, section(number))})


KIND_BULLET = re.search(r"^- `kind`:(.*?)^- ", section("4.1"), flags=re.MULTILINE | re.DOTALL)
KINDS = sorted(int(n) for n in re.findall(r"(?<![\w.])(\d+) [A-Z][A-Z_]+", KIND_BULLET[1]))  # type: ignore[index]
ALARM_CODES = codes("7.3")
RESULT_CODES = codes("7.2")
RESERVED_BIT = int(re.search(r"bits (\d+) and up are reserved", section("4.3"))[1])  # type: ignore[index]
ID_CHARS = "".join(chr(c) for c in range(128) if re.fullmatch(r"[A-Za-z0-9._-]", chr(c)))


@dataclass(frozen=True)
class Field:
    key: int
    name: str
    kind: str  # "int", "text", "bytes"
    low: int  # the least value, or byte length
    high: int
    domain: tuple[int, ...] = ()  # an enumeration: only these values
    device_id: bool = False
    sizes: tuple[int, ...] = ()  # bytes of only these lengths ("bytes(0 or 64)")
    step: int = 1  # bytes of a whole number of these ("bytes(4..16 in steps of 4)")
    # May be left out ("optional"); of an EVENT field: the kinds that may carry it and those
    # that must ("optional on kind 4, required on kinds 5..6"), none other may.
    optional: bool = False
    may_kinds: tuple[int, ...] = ()
    must_kinds: tuple[int, ...] = ()


@dataclass(frozen=True)
class Message:
    type: int
    name: str
    auth: str
    fields: tuple[Field, ...]


def parse_field(item: str, type_name: str) -> Field:
    key, name, *rest = item.split(" ", 2)
    spec = rest[0] if rest else ""
    if name == "seq":  # §4: key 14 `seq` (uint32, ≥ 1)
        return Field(14, name, "int", 1, U32)
    if name == "mac":  # §4: key 15 `mac` (bytes(32))
        return Field(15, name, "bytes", 32, 32)
    if sized := re.fullmatch(r"bytes\((\d+)\)", spec):
        return Field(int(key), name, "bytes", int(sized[1]), int(sized[1]))
    if stepped := re.match(r"bytes\((\d+)\.\.(\d+) in steps of (\d+)\)", spec):
        return Field(int(key), name, "bytes", int(stepped[1]), int(stepped[2]),
                     step=int(stepped[3]), optional="optional" in spec)
    if either := re.match(r"bytes\((\d+) or (\d+)\)", spec):
        low, high = int(either[1]), int(either[2])
        return Field(int(key), name, "bytes", low, high, sizes=(low, high))
    if spec.startswith("text"):
        span = re.search(r"\((?:(\d+)\.\.)?(?:≤)?(\d+) bytes\)", spec)
        assert span, item
        return Field(int(key), name, "text", int(span[1] or 0), int(span[2]),
                     device_id=name == "device_id")
    assert spec.startswith("uint"), item
    low = 1 if "(≥1)" in spec else 0
    high = U32 if spec.startswith("uint32") else U64
    domain: list[int] = []
    if "(§4.3)" in spec:
        high = 2**RESERVED_BIT - 1
    elif "(§7.2)" in spec:
        domain = RESULT_CODES
    elif name == "kind":
        domain = KINDS
    elif type_name == "ALARM" and name == "code":  # §4: "an alarm code outside §7.3"
        domain = ALARM_CODES
    if domain:
        low, high = domain[0], domain[-1]
        assert domain == list(range(low, high + 1)), (item, domain)
    return Field(int(key), name, "int", low, high, tuple(domain), optional="optional" in spec,
                 may_kinds=_kinds("optional", spec), must_kinds=_kinds("required", spec))


def _kinds(word: str, spec: str) -> tuple[int, ...]:
    found = re.search(word + r" on kinds? (\d+)(?:\.\.(\d+))?", spec)
    if not found:
        return ()
    return tuple(range(int(found[1]), int(found[2] or found[1]) + 1))


def message_table() -> list[Message]:
    rows = re.findall(r"^\| (\d+) \| (\w+) \| [^|]+ \| ([^|]+) \| ([^|]+) \|$", section("4"),
                      flags=re.MULTILINE)
    table = []
    for number, name, auth, fields in rows:
        items = [] if fields.strip() == "—" else re.split(r", (?=\d+ )", fields.strip())
        table.append(Message(int(number), name, auth.strip(),
                             tuple(parse_field(i, name) for i in items)))
    # 13 is STORED, a statement never sent (§5.11): no row.
    assert [m.type for m in table] == [*range(1, 13), 14], "the §4 table as the cases read it"
    return table


def of_size(f: Field, size: int) -> Any:
    if f.kind == "bytes":
        return b"\xa5" * size
    if f.device_id:
        return (ID_CHARS * 2)[:size]
    return "ü" * (size // 2) + "f" * (size % 2)  # two-byte UTF-8: the limit is in bytes


def sample(f: Field, high: bool) -> Any:
    if f.kind == "int":
        return f.high if high else f.low
    return of_size(f, f.high if high else f.low)


_DROP = object()  # a field value meaning: leave the field out


def message(m: Message, high: bool = False, **change: Any) -> dict[int, Any]:
    msg: dict[int, Any] = {0: m.type}
    for f in m.fields:
        if not f.optional or f.name in change:
            msg[f.key] = change.get(f.name, sample(f, high))
    kind = next((f for f in m.fields if f.name == "kind"), None)
    for f in m.fields:
        if kind is None or not f.must_kinds or change.get(f.name) is _DROP:
            continue
        # A field only some kinds of record carry: given the field, a kind that must carry it;
        # given such a kind, the field.
        if f.key in msg and "kind" not in change:
            msg[kind.key] = f.must_kinds[0]
        elif f.key not in msg and msg.get(kind.key) in f.must_kinds:
            msg[f.key] = sample(f, high)
    return {k: v for k, v in msg.items() if v is not _DROP}


def wrong_values(f: Field) -> Iterator[tuple[str, Any]]:
    if f.kind == "int":
        yield from (("true", True), ("false", False), ("null", None), ("bytes", b"\x01"),
                    ("text", "1"), ("an array", [1]))
        if f.low > 0 or f.domain:
            yield f"{f.low - 1}", f.low - 1
        else:
            yield "-1", -1
        if f.high < U64:
            yield f"{f.high + 1}", f.high + 1
        if f.high == 2**RESERVED_BIT - 1:
            yield from ((f"bit {b}", 1 << b) for b in (RESERVED_BIT, 15, 31, 32, 63))
        return
    other = "t" if f.kind == "bytes" else b"t"
    yield from ((f"{'text' if f.kind == 'bytes' else 'bytes'}", other), ("an int", 0),
                ("null", None))
    if f.low > 0:
        yield f"{f.low - 1} bytes", of_size(f, f.low - 1)
    if f.sizes:
        yield from ((f"{n} bytes", of_size(f, n)) for n in (f.low + 1, f.high - 1))
    if f.step > 1:
        yield from ((f"{n} bytes", of_size(f, n)) for n in (f.low + 1, f.high - 1))
    yield f"{f.high + 1} bytes", of_size(f, f.high + 1)
    if f.device_id:
        yield from ((f"{c!r} in it", "seal" + c + "1") for c in (" ", "/", ":", "é", "\x00", "+"))


def message_cases() -> Iterator[Case]:
    table = message_table()

    def decode(name: str, groups: list[str], msg: Any, want: str) -> Case:
        return {"name": name, "groups": groups, "op": "decode",
                "hex": cbor2.dumps(msg, canonical=True).hex(), "want": want}

    for m in table:
        own = f"fields_{m.name}"
        for high in (False, True):
            yield decode(f"{m.name} with every field at its {'most' if high else 'least'}",
                         [own], message(m, high), "ok")
        for f in m.fields:
            if f.optional:
                yield from _optional_cases(m, f, decode, own)
            else:
                yield decode(f"{m.name} without {f.name}", [own, "field_rules"],
                             message(m, **{f.name: _DROP}), "FIELD")
            for what, value in wrong_values(f):
                groups = [own, "field_rules"]
                if f.key == 4 and m.name == "STATUS":
                    groups.append("reserved_flags")
                if f.device_id:
                    groups.append("device_id")
                yield decode(f"{m.name} {f.name} = {what}", groups,
                             message(m, **{f.name: value}), "FIELD")
            for value in f.domain:
                yield decode(f"{m.name} {f.name} = {value} (defined)", [own],
                             message(m, **{f.name: value}), "ok")
            if f.device_id:
                yield decode(f"{m.name} {f.name} of every allowed character", [own, "device_id"],
                             message(m, **{f.name: ID_CHARS[:32]}), "ok")
        listed = {f.key for f in m.fields} | {0}
        for key in sorted(set(range(24)) - listed):
            yield decode(f"{m.name} with unlisted key {key}", [own, "unknown_keys"],
                         {**message(m), key: 0}, "FIELD")
    g = ["types"]
    for what, value in (("an array", [4]), ("an int", 4), ("bytes", b"\x04"), ("text", "4"),
                        ("null", None), ("an empty map", {}), ("a map without key 0", {1: 1}),
                        ("type 0", {0: 0}), ("type 13", {0: 13}), ("type 23", {0: 23}),
                        ("type -1", {0: -1}), ("type 2**32", {0: 2**32}), ("type true", {0: True}),
                        ("type as text", {0: "4"}), ("type as bytes", {0: b"\x04"})):
        yield decode(f"{what} is TYPE", g, value, "TYPE")


def _optional_cases(m: Message, f: Field, decode: Any, own: str) -> Iterator[Case]:
    for high in (False, True):
        yield decode(f"{m.name} with {f.name} at its {'most' if high else 'least'}", [own],
                     message(m, high, **{f.name: sample(f, high)}), "ok")
    if not f.must_kinds:
        yield decode(f"{m.name} without {f.name}", [own, "field_rules"], message(m), "ok")
        return
    for kind in KINDS:
        carried = message(m, kind=kind, **{f.name: f.low})
        left_out = message(m, kind=kind, **{f.name: _DROP})
        may = kind in f.may_kinds
        yield decode(f"{m.name} of kind {kind} with {f.name}", [own, "field_rules"], carried,
                     "ok" if may or kind in f.must_kinds else "FIELD")
        yield decode(f"{m.name} of kind {kind} without {f.name}", [own, "field_rules"],
                     left_out, "FIELD" if kind in f.must_kinds else "ok")


# --- MACs and seq (§4.2) ----------------------------------------------------------------------


def signed(msg: dict[int, Any], key: bytes) -> bytes:
    unsigned = {k: v for k, v in msg.items() if k != 15}
    mac = hmac.new(key, cbor2.dumps(unsigned, canonical=True), hashlib.sha256).digest()
    return cbor2.dumps({**unsigned, 15: mac}, canonical=True)


def tampered(payload: bytes) -> bytes:
    msg = cbor2.loads(payload)
    msg[15] = bytes([msg[15][0] ^ 1]) + msg[15][1:]
    return cbor2.dumps(msg, canonical=True)


def auth_cases() -> Iterator[Case]:
    session = hmac.new(KEY, b"sealink/session/v1" + bytes(16) + bytes(range(16)),
                       hashlib.sha256).digest()
    other_session = hmac.new(KEY, b"sealink/session/v1" + bytes(16) + bytes(16),
                             hashlib.sha256).digest()
    g = ["session_accept"]

    def accept(name: str, payload: bytes, key: bytes, last: int, want: int | str) -> Case:
        return {"name": name, "groups": g, "op": "accept", "hex": payload.hex(),
                "key": key.hex(), "last_seq": last, "want": want}

    ack = signed({0: 5, 1: 7, 2: b"", 14: 5}, session)
    yield accept("seq after the last accepted", ack, session, 4, 5)
    yield accept("a gap in seq is normal", ack, session, 1, 5)
    yield accept("seq equal to the last is REPLAY", ack, session, 5, "REPLAY")
    yield accept("seq below the last is REPLAY", ack, session, 9, "REPLAY")
    yield accept("another session's MAC is MAC", ack, other_session, 0, "MAC")
    yield accept("MAC is checked before seq", ack, other_session, 9, "MAC")
    yield accept("a flipped MAC bit is MAC", tampered(ack), session, 0, "MAC")
    top = signed({0: 7, 1: 3300, 2: 0, 3: 9, 4: 0, 5: 0, 6: 1, 14: U32}, session)
    yield accept("the last seq of a session, 2**32-1", top, session, U32 - 1, U32)
    yield accept("nothing after 2**32-1", top, session, U32, "REPLAY")
    changed = cbor2.loads(ack)
    changed[1] = 8
    yield accept("a changed field is MAC", cbor2.dumps(changed, canonical=True), session, 0,
                 "MAC")

    g = ["hello_mac"]
    hello = {0: 1, 1: 3, 2: "seal-0001", 3: bytes(range(16)), 4: 1, 5: 1, 6: "fw", 7: 0}
    for name, payload, key, want in (
        ("a HELLO under its device key verifies", signed(hello, KEY), KEY, "ok"),
        ("a HELLO under another key is MAC", signed(hello, OTHER_KEY), KEY, "MAC"),
        ("a HELLO with a flipped MAC bit is MAC", tampered(signed(hello, KEY)), KEY, "MAC"),
        ("a changed HELLO field is MAC",
         cbor2.dumps({**cbor2.loads(signed(hello, KEY)), 5: 2}, canonical=True), KEY, "MAC"),
    ):
        yield {"name": name, "groups": g, "op": "verify", "hex": payload.hex(),
               "key": key.hex(), "want": want}


def all_cases() -> list[Case]:
    cases = [*framing_cases(), *encoding_cases(), *message_cases(), *auth_cases()]
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases
