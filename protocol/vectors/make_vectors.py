"""Regenerate the protocol test vectors: `python protocol/vectors/make_vectors.py [--check]`.

Everything is derived from fixed labels, so the output is byte-for-byte reproducible; `--check`
exits 1 if a file on disk differs from what this script would write. The vectors are produced
with sealproto itself and verified independently (cbor2, hmac, zlib) by protocol/tests.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, utils  # noqa: E402
from sealproto import auth, cbor, cobs, framing  # noqa: E402
from sealproto import messages as m  # noqa: E402

Json = dict[str, Any]


def fixed(label: str, size: int = 32) -> bytes:
    return hashlib.sha256(b"sealink vectors/" + label.encode()).digest()[:size]


DEVICE_KEY = fixed("device key")
OTHER_KEY = fixed("another device key")
DEVICE_NONCE = fixed("device nonce", 16)
HOST_NONCE = fixed("host nonce", 16)
OPERATOR_SALT = fixed("operator salt", 16)
SESSION_KEY = auth.session_key(DEVICE_KEY, DEVICE_NONCE, HOST_NONCE)
# The seal's chip key of the vectors: a P-256 scalar derived from a label. Signatures are
# RFC 6979 deterministic so the files are reproducible; a chip's random k verifies the same.
SEAL_KEY = ec.derive_private_key(
    # reduced mod n, the order of P-256's base point (SEC 2 §2.4.2), as SPEC §4.4 says
    int.from_bytes(fixed("seal chip key"), "big")
    % 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    ec.SECP256R1(),
)
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def p256_key(label: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(fixed(label), "big") % _P256_N, ec.SECP256R1())


def public_xy(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]


SEAL_PUBLIC = public_xy(SEAL_KEY)
# The enrolment authority and a gateway's acknowledgement key (SPEC §5.11).
AUTHORITY_KEY = p256_key("enrolment authority key")
GATEWAY_KEY = p256_key("gateway acknowledgement key")
TIME_S = 1_764_115_200  # 2025-11-26T00:00:00Z
U32 = 2**32 - 1


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def frame_of(payload: bytes) -> bytes:
    return framing.encode_frame(payload)


def raw_frame(payload: bytes) -> bytes:
    """A frame around any payload, even one encode_frame would refuse."""
    body = payload + (binascii.crc32(payload) & 0xFFFFFFFF).to_bytes(4, "little")
    return cobs.encode(body) + b"\x00"


def signed(msg: dict[int, Any], key: bytes) -> dict[int, Any]:
    return auth.sign(dict(msg), key)


def seal_signature(digest: bytes, key: ec.EllipticCurvePrivateKey = SEAL_KEY) -> bytes:
    algorithm = ec.ECDSA(utils.Prehashed(hashes.SHA256()), deterministic_signing=True)
    r, s = utils.decode_dss_signature(key.sign(digest, algorithm))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def certificate(serial: int, gateway: bytes) -> dict[int, Any]:
    """An ENROL's certificate fields, signed by the vectors' authority (no seq, no MAC)."""
    msg = {m.K_TYPE: m.ENROL, m.EN_SERIAL: serial, m.EN_GATEWAY: gateway, m.EN_SIG: b"",
           m.EN_DEVICE: "seal-0001"}
    msg[m.EN_SIG] = seal_signature(auth.enrolment_digest(msg), AUTHORITY_KEY)
    return msg


def stored(counter: int, head: bytes) -> bytes:
    return seal_signature(auth.stored_digest("seal-0001", counter, head), GATEWAY_KEY)


def event(counter: int, prev: bytes, **fields: int) -> dict[int, Any]:
    msg = {
        m.K_TYPE: m.EVENT,
        m.EV_COUNTER: counter,
        m.EV_BOOT: fields.get("boot", 3),
        m.EV_UPTIME: fields.get("uptime", 61_250 + 1000 * counter),
        m.EV_TIME: fields.get("time", TIME_S + counter),
        m.EV_KIND: fields.get("kind", m.KIND_IMPRESSION),
        m.EV_PERMIT: fields.get("permit", 17),
        m.EV_OPERATOR: fields.get("operator", 1042),
        m.EV_PREV: prev,
    }
    if "cause" in fields:
        msg[m.EV_CAUSE] = fields["cause"]
    msg[m.EV_SIG] = seal_signature(auth.seal_digest(msg))
    return signed(msg, DEVICE_KEY)


def valid_messages() -> list[tuple[str, dict[int, Any], bytes | None]]:
    """(name, message, MAC key) for every type, plus boundary values."""
    prev = fixed("some earlier record")
    return [
        (
            "hello",
            signed(
                {
                    m.K_TYPE: m.HELLO,
                    m.HE_VERSION: 3,
                    m.HE_DEVICE: "seal-0001",
                    m.HE_NONCE: DEVICE_NONCE,
                    m.HE_BOOT: 3,
                    m.HE_NEXT: 42,
                    m.HE_FIRMWARE: "sealfw 0.1.0",
                    m.HE_ENROLMENT: 1_764_115_000,
                },
                DEVICE_KEY,
            ),
            DEVICE_KEY,
        ),
        (
            "welcome",
            signed(
                {
                    m.K_TYPE: m.WELCOME,
                    m.WE_NONCE: HOST_NONCE,
                    m.WE_ACKED: 39,
                    m.WE_TIME: TIME_S * 1000 + 125,
                    m.WE_STORED: stored(39, fixed("record 39")),
                    m.K_SEQ: 1,
                },
                SESSION_KEY,
            ),
            SESSION_KEY,
        ),
        ("sync", {m.K_TYPE: m.SYNC}, None),
        ("event impression", event(42, prev), DEVICE_KEY),
        ("event first (genesis prev)", event(1, auth.GENESIS, permit=0, operator=0), DEVICE_KEY),
        (
            "event largest fields",
            event(U32, prev, boot=U32, uptime=2**64 - 1, time=2**64 - 1, kind=m.KIND_REBOOT,
                  permit=U32, operator=U32),
            DEVICE_KEY,
        ),
        ("event forced, clock unset", event(7, prev, time=0, kind=m.KIND_FORCED), DEVICE_KEY),
        (
            "event reboot after a watchdog reset, 3 records rolled back",
            event(43, prev, kind=m.KIND_REBOOT, permit=0, operator=0,
                  cause=m.CA_ROLLBACK | m.CA_WATCHDOG | 3 << m.CA_MISSING_SHIFT),
            DEVICE_KEY,
        ),
        (
            "event alarm journaled",
            event(44, prev, kind=m.KIND_ALARM, permit=0, operator=0, cause=m.AL_JOURNAL_FULL),
            DEVICE_KEY,
        ),
        (
            "event unrecorded presses",
            event(45, prev, kind=m.KIND_UNRECORDED, permit=0, operator=0, cause=12),
            DEVICE_KEY,
        ),
        (
            "event longest the seal makes (SPEC 4.5)",
            event(U32, prev, boot=U32, uptime=2**64 - 1, time=2**64 - 1, kind=m.KIND_REBOOT,
                  permit=U32, operator=U32, cause=U32),
            DEVICE_KEY,
        ),
        (
            "ack",
            signed(
                {m.K_TYPE: m.ACK, m.AK_COUNTER: 42, m.AK_STORED: stored(42, prev), m.K_SEQ: 2},
                SESSION_KEY,
            ),
            SESSION_KEY,
        ),
        (
            "ack unsigned",
            signed({m.K_TYPE: m.ACK, m.AK_COUNTER: 42, m.AK_STORED: b"", m.K_SEQ: 2}, SESSION_KEY),
            SESSION_KEY,
        ),
        (
            "alarm",
            signed(
                {m.K_TYPE: m.ALARM, m.AL_CODE: m.AL_TAMPER, m.AL_TIME: TIME_S, m.AL_DETAIL: 0,
                 m.K_SEQ: 1},
                SESSION_KEY,
            ),
            SESSION_KEY,
        ),
        (
            "status",
            signed(
                {
                    m.K_TYPE: m.STATUS,
                    m.ST_BATTERY: 3712,
                    m.ST_BACKLOG: 3,
                    m.ST_FREE: 1021,
                    m.ST_FLAGS: m.F_LOCKED | m.F_PERMIT_ACTIVE,
                    m.ST_PERMIT_LEFT: 4,
                    m.ST_NEXT: 43,
                    m.K_SEQ: 2,
                },
                SESSION_KEY,
            ),
            SESSION_KEY,
        ),
        (
            "status, presses without a record",
            signed(
                {
                    m.K_TYPE: m.STATUS,
                    m.ST_BATTERY: 3712,
                    m.ST_BACKLOG: 1000,
                    m.ST_FREE: 0,
                    m.ST_FLAGS: m.F_LOCKED | m.F_JOURNAL_FULL | m.F_RESERVE_EXHAUSTED,
                    m.ST_PERMIT_LEFT: 0,
                    m.ST_NEXT: 1043,
                    m.ST_UNRECORDED: 5,
                    m.K_SEQ: 3,
                },
                SESSION_KEY,
            ),
            SESSION_KEY,
        ),
        (
            "permit",
            signed(
                {
                    m.K_TYPE: m.PERMIT,
                    m.PE_ID: 17,
                    m.PE_COUNT: 5,
                    m.PE_NOT_BEFORE: TIME_S,
                    m.PE_NOT_AFTER: TIME_S + 8 * 3600,
                    m.PE_OPERATOR: 1042,
                    m.K_SEQ: 3,
                },
                SESSION_KEY,
            ),
            SESSION_KEY,
        ),
        (
            "permit naming operators 2 and 1042 (SPEC 5.7)",
            signed(
                {
                    m.K_TYPE: m.PERMIT,
                    m.PE_ID: 18,
                    m.PE_COUNT: 5,
                    m.PE_NOT_BEFORE: TIME_S,
                    m.PE_NOT_AFTER: TIME_S + 8 * 3600,
                    m.PE_OPERATOR: 0,
                    m.PE_OPERATORS: (2).to_bytes(4, "big") + (1042).to_bytes(4, "big"),
                    m.K_SEQ: 3,
                },
                SESSION_KEY,
            ),
            SESSION_KEY,
        ),
        (
            "operator 2 with PIN 4711 and a card (SPEC 5.7)",
            signed(
                {
                    m.K_TYPE: m.OPERATOR,
                    m.OP_ID: 2,
                    m.OP_SALT: OPERATOR_SALT,
                    m.OP_PIN: hashlib.sha256(OPERATOR_SALT + b"4711").digest(),
                    m.OP_CARD: hashlib.sha256(OPERATOR_SALT + bytes.fromhex("04a22b91")).digest(),
                    m.K_SEQ: 8,
                },
                SESSION_KEY,
            ),
            SESSION_KEY,
        ),
        (
            "operator 3 removed",
            signed({m.K_TYPE: m.OPERATOR, m.OP_ID: 3, m.OP_SALT: OPERATOR_SALT, m.OP_PIN: b"",
                    m.OP_CARD: b"", m.K_SEQ: 9}, SESSION_KEY),
            SESSION_KEY,
        ),
        (
            "alarm pin_lockout after 3 wrong PINs",
            signed({m.K_TYPE: m.ALARM, m.AL_CODE: m.AL_PIN_LOCKOUT, m.AL_TIME: TIME_S,
                    m.AL_DETAIL: 3, m.K_SEQ: 4}, SESSION_KEY),
            SESSION_KEY,
        ),
        (
            "revoke",
            signed({m.K_TYPE: m.REVOKE, m.RV_PERMIT: 17, m.K_SEQ: 4}, SESSION_KEY),
            SESSION_KEY,
        ),
        (
            "time",
            signed({m.K_TYPE: m.TIME, m.TI_TIME: TIME_S * 1000 + 500, m.K_SEQ: 5}, SESSION_KEY),
            SESSION_KEY,
        ),
        (
            "result",
            signed({m.K_TYPE: m.RESULT, m.RE_SEQ: 3, m.RE_CODE: m.R_OK, m.K_SEQ: 3}, SESSION_KEY),
            SESSION_KEY,
        ),
        (
            "enrol",
            signed({**certificate(1_764_115_000, public_xy(GATEWAY_KEY)), m.K_SEQ: 6},
                   SESSION_KEY),
            SESSION_KEY,
        ),
        (
            "enrol revoking",
            signed({**certificate(1_764_116_000, b""), m.K_SEQ: 7}, SESSION_KEY),
            SESSION_KEY,
        ),
    ]


def frames_file() -> Json:
    vectors = []
    for name, msg, key in valid_messages():
        payload = m.encode(msg)
        vector: Json = {
            "name": name,
            "message": to_json(msg),
            "payload": payload.hex(),
            "frame": frame_of(payload).hex(),
        }
        if key is not None:
            vector["key"] = key.hex()
        vectors.append(vector)
    return {
        "description": "valid messages: decoded message <-> CBOR payload <-> wire frame; "
        "'key' is the MAC key (device key for HELLO/EVENT, session key of session.json else)",
        "vectors": vectors,
    }


def mac_file() -> Json:
    cases = [
        ("rfc4231 case 1", b"\x0b" * 20, b"Hi There"),
        ("rfc4231 case 2", b"Jefe", b"what do ya want for nothing?"),
        ("rfc4231 case 3", b"\xaa" * 20, b"\xdd" * 50),
        ("rfc4231 case 6 (key longer than a block)", b"\xaa" * 131,
         b"Test Using Larger Than Block-Size Key - Hash Key First"),
        ("empty message", DEVICE_KEY, b""),
        ("key of exactly one block", bytes(range(64)), b"sealink"),
    ]
    vectors = [
        {"name": name, "key": key.hex(), "data": data.hex(),
         "mac": auth.hmac_sha256(key, data).hex()}
        for name, key, data in cases
    ]
    return {"description": "HMAC-SHA256(key, data) = mac", "vectors": vectors}


def session_file() -> Json:
    other = fixed("second host nonce", 16)
    vectors = [
        {
            "name": name,
            "device_key": DEVICE_KEY.hex(),
            "device_nonce": DEVICE_NONCE.hex(),
            "host_nonce": host_nonce.hex(),
            "session_key": auth.session_key(DEVICE_KEY, DEVICE_NONCE, host_nonce).hex(),
        }
        for name, host_nonce in (("session", HOST_NONCE), ("next connection", other))
    ]
    return {
        "description": "session_key = HMAC-SHA256(device_key, "
        "b'sealink/session/v1' || device_nonce || host_nonce)",
        "vectors": vectors,
    }


def chain_file() -> Json:
    events = []
    prev = auth.GENESIS
    plan = [
        {"boot": 1, "kind": m.KIND_IMPRESSION},
        {"boot": 1, "kind": m.KIND_TAMPER, "permit": 0, "operator": 0},
        {"boot": 1, "kind": m.KIND_IMPRESSION},
        {"boot": 2, "kind": m.KIND_REBOOT, "permit": 0, "operator": 0, "uptime": 812},
        {"boot": 2, "kind": m.KIND_FORCED, "permit": 0, "operator": 0},
        {"boot": 2, "kind": m.KIND_IMPRESSION},
    ]
    for counter, fields in enumerate(plan, start=1):
        msg = event(counter, prev, **fields)
        payload = m.encode(msg)
        digest = auth.record_hash(payload)
        events.append({"message": to_json(msg), "payload": payload.hex(), "hash": digest.hex()})
        prev = digest
    return {
        "description": "a device's chain from genesis: event n's prev = SHA-256(payload n-1); "
        "every MAC is under device_key",
        "vectors": [
            {"name": f"chain of {len(events)}", "device_key": DEVICE_KEY.hex(), "events": events}
        ],
    }


def seal_file() -> Json:
    """Every chain event's seal signature, checkable with any P-256 ECDSA implementation."""
    vectors = []
    for i, link in enumerate(chain_file()["vectors"][0]["events"], start=1):
        msg = m.decode(bytes.fromhex(link["payload"]))
        vectors.append({"name": f"chain event {i}", "payload": link["payload"],
                        "digest": auth.seal_digest(msg).hex(), "sig": msg[m.EV_SIG].hex(),
                        "valid": True})
    forged = bytearray.fromhex(vectors[-1]["sig"])
    forged[63] ^= 1
    vectors.append({**vectors[-1], "name": "chain event 6, s bit flipped", "sig": forged.hex(),
                    "valid": False})
    return {
        "description": "seal signatures (SPEC 4.1): sig = ECDSA P-256 over digest = "
        "SHA-256(encode(event without keys 9 and 15)), r || s big-endian; public_key = X || Y",
        "vectors": [{"name": "public key", "public_key": SEAL_PUBLIC.hex()}, *vectors],
    }


def enrol_file() -> Json:
    """Certificates and stored statements (SPEC §5.11), checkable with any P-256 ECDSA."""
    vectors: list[Json] = [
        {"name": "keys", "authority_key": public_xy(AUTHORITY_KEY).hex(),
         "gateway_key": public_xy(GATEWAY_KEY).hex()},
    ]
    for name, serial, gateway in (("certificate", 1_764_115_000, public_xy(GATEWAY_KEY)),
                                  ("revocation", 1_764_116_000, b"")):
        cert = certificate(serial, gateway)
        vectors.append({"name": name, "message": to_json(cert),
                        "digest": auth.enrolment_digest(cert).hex(),
                        "sig": cert[m.EN_SIG].hex(), "valid": True})
    forged = certificate(1_764_117_000, public_xy(SEAL_KEY))
    forged[m.EN_SIG] = seal_signature(auth.enrolment_digest(forged), GATEWAY_KEY)
    vectors.append({"name": "certificate signed by the gateway itself", "message": to_json(forged),
                    "digest": auth.enrolment_digest(forged).hex(),
                    "sig": forged[m.EN_SIG].hex(), "valid": False})
    head = fixed("record 42")
    statement = {0: m.STORED, m.SD_DEVICE: "seal-0001", m.SD_COUNTER: 42, m.SD_HEAD: head}
    digest = auth.stored_digest("seal-0001", 42, head)
    assert digest == hashlib.sha256(cbor.dumps(statement)).digest()
    vectors.append({"name": "stored 42", "statement": to_json(statement),
                    "encoded": cbor.dumps(statement).hex(), "digest": digest.hex(),
                    "sig": stored(42, head).hex(), "valid": True})
    wrong = seal_signature(auth.stored_digest("seal-0001", 42, head), SEAL_KEY)
    vectors.append({"name": "stored 42 signed by the seal's key", "statement": to_json(statement),
                    "encoded": cbor.dumps(statement).hex(), "digest": digest.hex(),
                    "sig": wrong.hex(), "valid": False})
    return {
        "description": "enrolment (SPEC 5.11): a certificate's sig = ECDSA P-256 by "
        "authority_key over SHA-256(encode(ENROL without keys 3, 14, 15)); a stored statement's "
        "sig = ECDSA P-256 by gateway_key over SHA-256(encode({0: 13, 1: device_id, 2: counter, "
        "3: head})); r || s big-endian, keys X || Y",
        "vectors": vectors,
    }


def invalid_vectors() -> list[Json]:
    ev_payload = m.encode(event(42, fixed("some earlier record")))
    ack = signed(
        {m.K_TYPE: m.ACK, m.AK_COUNTER: 42, m.AK_STORED: b"", m.K_SEQ: 2}, SESSION_KEY
    )

    def payload_case(name: str, payload: bytes, reason: str) -> Json:
        return {"name": name, "frame": raw_frame(payload).hex(), "reason": reason}

    def msg_case(name: str, msg: dict[int, Any], reason: str) -> Json:
        from sealproto import cbor

        return payload_case(name, cbor.dumps(msg), reason)

    good = frame_of(ev_payload)
    flipped = bytearray(ev_payload)
    flipped[20] ^= 0x01
    crc_bad = cobs.encode(bytes(flipped) + good_crc(ev_payload)) + b"\x00"
    mac_bad = bytearray(ev_payload)
    mac_bad[-1] ^= 0x80
    cases: list[Json] = [
        {"name": "cobs block runs past the delimiter", "frame": "0501020300", "reason": "COBS"},
        {"name": "cobs block truncated at end of a good frame",
         "frame": (good[:-2] + b"\x00").hex(), "reason": "COBS"},
        {"name": "empty decoded frame", "frame": "0100", "reason": "SHORT"},
        {"name": "crc only, no payload", "frame": (cobs.encode(good_crc(b"")) + b"\x00").hex(),
         "reason": "SHORT"},
        {"name": "crc mismatch (payload bit flipped)", "frame": crc_bad.hex(), "reason": "CRC"},
        {"name": "payload of 481 bytes", "frame": raw_frame(b"\x58\xff" + bytes(479)).hex(),
         "reason": "OVERSIZE"},
        payload_case("trailing byte after the map", ev_payload + b"\x00", "CBOR"),
        payload_case("truncated map", ev_payload[:-1], "CBOR"),
        payload_case("float", bytes.fromhex("fa3f800000"), "CBOR"),
        payload_case("half float as a field value", bytes.fromhex("a2000401f93c00"), "CBOR"),
        payload_case("tag", bytes.fromhex("c11a69264300"), "CBOR"),
        payload_case("undefined", bytes.fromhex("f7"), "CBOR"),
        payload_case("simple value in one extra byte", bytes.fromhex("f820"), "CBOR"),
        payload_case("reserved additional info 28", bytes.fromhex("1c"), "CBOR"),
        payload_case("lone break", bytes.fromhex("ff"), "CBOR"),
        payload_case("text with overlong UTF-8", bytes.fromhex("62c080"), "CBOR"),
        payload_case("text with a UTF-16 surrogate", bytes.fromhex("63eda080"), "CBOR"),
        payload_case("text beyond U+10FFFF", bytes.fromhex("64f4908080"), "CBOR"),
        payload_case("map key 24", bytes.fromhex("a1181801"), "CBOR"),
        payload_case("text map key", bytes.fromhex("a1616101"), "CBOR"),
        payload_case("nesting of 5 arrays", bytes.fromhex("818181818100"), "CBOR"),
        payload_case("array count beyond the data", bytes.fromhex("9bffffffffffffffff"), "CBOR"),
        payload_case("int in a non-shortest head", bytes.fromhex("a20005011805"), "NONCANONICAL"),
        payload_case("map key in a two-byte head", bytes.fromhex("a20005180100"), "NONCANONICAL"),
        payload_case("length in a non-shortest head", bytes.fromhex("5801ff"), "NONCANONICAL"),
        payload_case("uint64 head for a uint32 value", bytes.fromhex("1b00000000ffffffff"),
                     "NONCANONICAL"),
        payload_case("map keys unsorted", bytes.fromhex("a201000005"), "NONCANONICAL"),
        payload_case("map key duplicated", bytes.fromhex("a200050005"), "NONCANONICAL"),
        payload_case("indefinite-length map", bytes.fromhex("bf0005ff"), "NONCANONICAL"),
        payload_case("indefinite-length bytes", bytes.fromhex("5f4100ff"), "NONCANONICAL"),
        payload_case("not a map", bytes.fromhex("820501"), "TYPE"),
        msg_case("type 0", {0: 0}, "TYPE"),
        msg_case("type 15", {0: 15}, "TYPE"),
        msg_case("operator with a 31-byte PIN hash",
                 {0: m.OPERATOR, 1: 2, 2: bytes(16), 3: bytes(31), 4: b"", 14: 2,
                  15: bytes(32)}, "FIELD"),
        msg_case("operator with a 15-byte salt",
                 {0: m.OPERATOR, 1: 2, 2: bytes(15), 3: b"", 4: b"", 14: 2, 15: bytes(32)},
                 "FIELD"),
        msg_case("operator id 0",
                 {0: m.OPERATOR, 1: 0, 2: bytes(16), 3: b"", 4: b"", 14: 2, 15: bytes(32)},
                 "FIELD"),
        msg_case("permit naming operators in 6 bytes",
                 {0: m.PERMIT, 1: 1, 2: 1, 3: 0, 4: 0, 5: 0, 6: bytes(6), 14: 2,
                  15: bytes(32)}, "FIELD"),
        msg_case("permit naming 5 operators",
                 {0: m.PERMIT, 1: 1, 2: 1, 3: 0, 4: 0, 5: 0, 6: bytes(range(1, 21)), 14: 2,
                  15: bytes(32)}, "FIELD"),
        msg_case("alarm code 12", {0: m.ALARM, 1: 12, 2: 0, 3: 0, 14: 2, 15: bytes(32)},
                 "FIELD"),
        msg_case("no type key", {1: 42, 14: 2}, "TYPE"),
        payload_case("type is text", bytes.fromhex("a1006141"), "TYPE"),
        payload_case("type is true", bytes.fromhex("a100f5"), "TYPE"),
        msg_case("ack missing its counter", {0: m.ACK, 2: b"", 14: 2, 15: bytes(32)}, "FIELD"),
        msg_case("ack missing its stored signature", {0: m.ACK, 1: 4, 14: 2, 15: bytes(32)},
                 "FIELD"),
        msg_case("ack stored signature of 63 bytes",
                 {0: m.ACK, 1: 4, 2: bytes(63), 14: 2, 15: bytes(32)}, "FIELD"),
        msg_case("enrol gateway key of 1 byte",
                 {**certificate(9, b"\x04"), 14: 2, 15: bytes(32)}, "FIELD"),
        msg_case("stored is a statement, not a message",
                 {0: m.STORED, 1: "seal-0001", 2: 42, 3: bytes(32)}, "TYPE"),
        msg_case("ack with an unknown key 9",
                 {0: m.ACK, 1: 4, 2: b"", 9: 0, 14: 2, 15: bytes(32)},
                 "FIELD"),
        msg_case("sync with a seq", {0: m.SYNC, 14: 1}, "FIELD"),
        msg_case("ack without its MAC", {0: m.ACK, 1: 4, 2: b"", 14: 2}, "FIELD"),
        msg_case("ack with seq 0", {0: m.ACK, 1: 4, 2: b"", 14: 0, 15: bytes(32)}, "FIELD"),
        msg_case("ack with a 31-byte MAC", {0: m.ACK, 1: 4, 2: b"", 14: 2, 15: bytes(31)},
                 "FIELD"),
        msg_case("event counter 0", replace(event(1, auth.GENESIS), m.EV_COUNTER, 0), "FIELD"),
        msg_case("event counter 2**32", replace(event(1, auth.GENESIS), m.EV_COUNTER, 2**32),
                 "FIELD"),
        msg_case("event kind 7", replace(event(1, auth.GENESIS), m.EV_KIND, 7), "FIELD"),
        msg_case("event alarm without its cause",
                 replace(event(1, auth.GENESIS), m.EV_KIND, m.KIND_ALARM), "FIELD"),
        msg_case("event impression with a cause",
                 replace(event(1, auth.GENESIS), m.EV_CAUSE, 1), "FIELD"),
        msg_case("event cause of 2**32",
                 replace(event(1, auth.GENESIS, kind=m.KIND_REBOOT, cause=1), m.EV_CAUSE, 2**32),
                 "FIELD"),
        msg_case("event prev of 31 bytes", replace(event(1, auth.GENESIS), m.EV_PREV, bytes(31)),
                 "FIELD"),
        msg_case("event sig of 63 bytes", replace(event(1, auth.GENESIS), m.EV_SIG, bytes(63)),
                 "FIELD"),
        msg_case("event without its seal signature",
                 {k: v for k, v in event(1, auth.GENESIS).items() if k != m.EV_SIG}, "FIELD"),
        msg_case("event counter as bytes", replace(event(1, auth.GENESIS), m.EV_COUNTER, b"\x01"),
                 "FIELD"),
        msg_case("event permit negative", replace(event(1, auth.GENESIS), m.EV_PERMIT, -1),
                 "FIELD"),
        msg_case("event boot_id true", replace(event(1, auth.GENESIS), m.EV_BOOT, True), "FIELD"),
        msg_case("hello device id with a space",
                 replace(hello_msg(), m.HE_DEVICE, "seal 0001"), "FIELD"),
        msg_case("hello device id of 33 bytes", replace(hello_msg(), m.HE_DEVICE, "s" * 33),
                 "FIELD"),
        msg_case("hello empty device id", replace(hello_msg(), m.HE_DEVICE, ""), "FIELD"),
        msg_case("hello nonce of 15 bytes", replace(hello_msg(), m.HE_NONCE, bytes(15)), "FIELD"),
        msg_case("status flags with a reserved bit",
                 {0: m.STATUS, 1: 3700, 2: 0, 3: 9, 4: 512, 5: 0, 6: 1, 14: 1, 15: bytes(32)},
                 "FIELD"),
        msg_case("result code 7", {0: m.RESULT, 1: 3, 2: 7, 14: 1, 15: bytes(32)}, "FIELD"),
        msg_case("permit count 0",
                 {0: m.PERMIT, 1: 17, 2: 0, 3: 0, 4: 1, 5: 1, 14: 2, 15: bytes(32)}, "FIELD"),
        msg_case("alarm code 0", {0: m.ALARM, 1: 0, 2: 0, 3: 0, 14: 1, 15: bytes(32)}, "FIELD"),
        {"name": "event MAC bit flipped", "frame": raw_frame(bytes(mac_bad)).hex(),
         "key": DEVICE_KEY.hex(), "reason": "MAC"},
        {"name": "event under another device's key",
         "frame": frame_of(m.encode(auth.sign(event(42, auth.GENESIS), OTHER_KEY))).hex(),
         "key": DEVICE_KEY.hex(), "reason": "MAC"},
        {"name": "ack from an earlier session",
         "frame": frame_of(m.encode(signed(dict(ack), auth.session_key(
             DEVICE_KEY, DEVICE_NONCE, fixed("old host nonce", 16))))).hex(),
         "key": SESSION_KEY.hex(), "last_seq": 0, "reason": "MAC"},
        {"name": "ack replayed (seq not after the last accepted)",
         "frame": frame_of(m.encode(ack)).hex(), "key": SESSION_KEY.hex(), "last_seq": 2,
         "reason": "REPLAY"},
    ]
    return cases


def good_crc(payload: bytes) -> bytes:
    return (binascii.crc32(payload) & 0xFFFFFFFF).to_bytes(4, "little")


def replace(msg: dict[int, Any], key: int, value: Any) -> dict[int, Any]:
    changed = dict(msg)
    changed[key] = value
    return changed


def hello_msg() -> dict[int, Any]:
    return dict(valid_messages()[0][1])


def invalid_file() -> Json:
    return {
        "description": "each frame alone, fed to a fresh FrameDecoder, then messages.decode, then "
        "(with 'key') the MAC check -- auth.accept(msg, key, last_seq) for session messages, "
        "auth.verify otherwise -- fails with DecodeError(reason)",
        "vectors": invalid_vectors(),
    }


def streams_file() -> Json:
    ev = m.encode(event(42, fixed("some earlier record")))
    ack = m.encode(
        signed({m.K_TYPE: m.ACK, m.AK_COUNTER: 42, m.AK_STORED: b"", m.K_SEQ: 2}, SESSION_KEY)
    )
    sync = m.encode({m.K_TYPE: m.SYNC})
    big = b"\x59\x01\xdb" + bytes(range(256)) * 2
    big = big[: 480]
    long_garbage = bytes((7 * i) % 255 + 1 for i in range(600))
    streams = [
        ("garbage, then frames back to back",
         b"\x13\x37garbage" + b"\x00" + frame_of(ev) + frame_of(ack) + frame_of(sync),
         [{"error": "COBS"}, {"payload": ev.hex()}, {"payload": ack.hex()},
          {"payload": sync.hex()}]),
        ("leading and repeated delimiters are ignored",
         b"\x00\x00" + frame_of(sync) + b"\x00\x00\x00" + frame_of(ev),
         [{"payload": sync.hex()}, {"payload": ev.hex()}]),
        ("an over-long run is skipped, the next frame survives",
         long_garbage + b"\x00" + frame_of(ack),
         [{"error": "OVERSIZE"}, {"payload": ack.hex()}]),
        ("largest payload (480 bytes, two COBS 0xFF blocks)", frame_of(big),
         [{"payload": big.hex()}]),
        ("a corrupt frame between two good ones",
         frame_of(ev) + frame_of(ack)[:5] + b"\xee" + frame_of(ack)[6:] + frame_of(sync),
         [{"payload": ev.hex()}, {"error": "CRC"}, {"payload": sync.hex()}]),
        ("a partial frame at the end is not an error", frame_of(ack) + frame_of(ev)[:40],
         [{"payload": ack.hex()}]),
    ]
    vectors = []
    for name, stream, expect in streams:
        vectors.append({
            "name": name,
            "stream": stream.hex(),
            "expect": expect,
            "frames": sum(1 for e in expect if "payload" in e),
            "dropped": sum(1 for e in expect if "error" in e),
        })
    return {
        "description": "a byte stream fed to one FrameDecoder in any chunking yields 'expect' "
        "in order (payload hex or error reason) and ends with these frames/dropped counts",
        "vectors": vectors,
    }


FILES = {
    "frames.json": frames_file,
    "mac.json": mac_file,
    "session.json": session_file,
    "chain.json": chain_file,
    "seal.json": seal_file,
    "enrol.json": enrol_file,
    "invalid.json": invalid_file,
    "streams.json": streams_file,
}


def render(make: Any) -> str:
    """One vector per line, so a 64 KB MicroPython heap can parse a file a vector at a time."""
    data = make()
    assert all(next(iter(v)) == "name" for v in data["vectors"])
    head = json.dumps({"description": data["description"]})[:-1]
    lines = ",\n".join(json.dumps(v) for v in data["vectors"])
    return head + ', "vectors": [\n' + lines + "\n]}\n"


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, make in FILES.items():
        text = render(make)
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale vectors (run protocol/vectors/make_vectors.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
