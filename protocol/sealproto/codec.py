# sealproto.codec: encode() and decode() of the SPEC §4 messages with their schema check.
# A device imports this module alone (the firmware never imports sealproto.messages), so it
# holds no table of names: the field keys below are numbers, named in comments and in
# sealproto.messages, which re-exports encode() and decode() with the public names.
from sealproto import cbor
from sealproto.errors import DecodeError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# Numbers of sealproto.errors and .messages (firmware/tests/test_wire_constants.py checks them).
_TYPE = const(7)
_FIELD = const(8)
_K_TYPE = const(0)
_K_SEQ = const(14)
_K_MAC = const(15)
_EVENT = const(4)
_EV_KIND = const(5)
_EV_CAUSE = const(10)
_KIND_REBOOT = const(4)
_KIND_ALARM = const(5)
_AUTH_NONE = const(0)
_AUTH_DEVICE = const(1)
_AUTH_SESSION = const(2)

_U32 = const(0xFFFFFFFF)
_U64 = 0xFFFFFFFFFFFFFFFF

# Field checks as 3-byte rows (key, kind, bounds); ints bound the value, strings the byte length.
# Rows are bytes, not nested tuples, to keep the tables small in a 64 KB heap.
_INT = const(0)
_BYTES = const(1)
_TEXT = const(2)
_DEVICE_ID = const(3)
# Or'ed into a row's kind: the key may be absent (it then does not count as a key of the message).
_OPTIONAL = const(4)

_B_U64 = const(0)
_B_U32 = const(1)
_B_U32_POSITIVE = const(2)
_B_U64_POSITIVE = const(3)
_B_KIND = const(4)
_B_ALARM = const(5)
_B_FLAGS = const(6)
_B_RESULT = const(7)
_B_NONCE = const(8)
_B_HASH = const(9)
_B_FIRMWARE = const(10)
_B_ID = const(11)
_B_SIG = const(12)
_B_OPT64 = const(13)
_B_OPT32 = const(14)
_B_IDS = const(15)
_B_SALT = const(16)
# fmt: off
_BOUNDS = (
    (0, _U64),
    (0, _U32),
    (1, _U32),
    (1, _U64),
    (0, 6),  # KIND_IMPRESSION .. KIND_UNRECORDED
    (1, 11),  # AL_FORCED_STAMP .. AL_PIN_LOCKOUT
    (0, 511),  # STATUS flags: bits 9.. are reserved and must be 0
    (0, 6),  # R_OK .. R_BAD_SIGNATURE
    (16, 16),  # NONCE_LEN
    (32, 32),  # HASH_LEN (= MAC_LEN)
    (0, 32),  # MAX_FIRMWARE_LEN
    (1, 32),  # MAX_ID_LEN
    (64, 64),  # SIG_LEN
    (0, 64),  # a signature or a public key (X || Y), or nothing: 0 or 64 bytes, no other
    (0, 32),  # a credential hash, or nothing: 0 or 32 bytes, no other
    (4, 16),  # operator ids, each a big-endian uint32: 1..4 of them (MAX_PERMIT_OPERATORS)
    (16, 16),  # SALT_LEN
)
# Indexed by message type; each row: field key (SPEC §4), kind, bounds.
_SCHEMA = (
    None,
    bytes((  # 1 HELLO
        1, _INT, _B_U32_POSITIVE,  # HE_VERSION
        2, _DEVICE_ID, _B_ID,  # HE_DEVICE
        3, _BYTES, _B_NONCE,  # HE_NONCE
        4, _INT, _B_U32,  # HE_BOOT
        5, _INT, _B_U32_POSITIVE,  # HE_NEXT
        6, _TEXT, _B_FIRMWARE,  # HE_FIRMWARE
        7, _INT, _B_U32,  # HE_ENROLMENT
    )),
    bytes((  # 2 WELCOME
        1, _BYTES, _B_NONCE,  # WE_NONCE
        2, _INT, _B_U32,  # WE_ACKED
        3, _INT, _B_U64,  # WE_TIME
        4, _BYTES, _B_OPT64,  # WE_STORED
    )),
    b"",  # 3 SYNC
    bytes((  # 4 EVENT
        1, _INT, _B_U32_POSITIVE,  # EV_COUNTER
        2, _INT, _B_U32,  # EV_BOOT
        3, _INT, _B_U64,  # EV_UPTIME
        4, _INT, _B_U64,  # EV_TIME
        5, _INT, _B_KIND,  # EV_KIND
        6, _INT, _B_U32,  # EV_PERMIT
        7, _INT, _B_U32,  # EV_OPERATOR
        8, _BYTES, _B_HASH,  # EV_PREV
        9, _BYTES, _B_SIG,  # EV_SIG
        10, _INT | _OPTIONAL, _B_U32,  # EV_CAUSE
    )),
    bytes((  # 5 ACK
        1, _INT, _B_U32,  # AK_COUNTER
        2, _BYTES, _B_OPT64,  # AK_STORED
    )),
    bytes((  # 6 ALARM
        1, _INT, _B_ALARM,  # AL_CODE
        2, _INT, _B_U64,  # AL_TIME
        3, _INT, _B_U64,  # AL_DETAIL
    )),
    bytes((  # 7 STATUS
        1, _INT, _B_U64,  # ST_BATTERY
        2, _INT, _B_U64,  # ST_BACKLOG
        3, _INT, _B_U64,  # ST_FREE
        4, _INT, _B_FLAGS,  # ST_FLAGS
        5, _INT, _B_U64,  # ST_PERMIT_LEFT
        6, _INT, _B_U32_POSITIVE,  # ST_NEXT
        7, _INT | _OPTIONAL, _B_U64,  # ST_UNRECORDED
    )),
    bytes((  # 8 PERMIT
        1, _INT, _B_U32_POSITIVE,  # PE_ID
        2, _INT, _B_U64_POSITIVE,  # PE_COUNT
        3, _INT, _B_U64,  # PE_NOT_BEFORE
        4, _INT, _B_U64,  # PE_NOT_AFTER
        5, _INT, _B_U32,  # PE_OPERATOR
        6, _BYTES | _OPTIONAL, _B_IDS,  # PE_OPERATORS
    )),
    bytes((1, _INT, _B_U32_POSITIVE)),  # 9 REVOKE: RV_PERMIT
    bytes((1, _INT, _B_U64)),  # 10 TIME: TI_TIME
    bytes((  # 11 RESULT
        1, _INT, _B_U32_POSITIVE,  # RE_SEQ
        2, _INT, _B_RESULT,  # RE_CODE
    )),
    bytes((  # 12 ENROL
        1, _INT, _B_U32_POSITIVE,  # EN_SERIAL
        2, _BYTES, _B_OPT64,  # EN_GATEWAY
        3, _BYTES, _B_SIG,  # EN_SIG
        4, _DEVICE_ID, _B_ID,  # EN_DEVICE
    )),
    None,  # 13 STORED: signed, never sent (SPEC §5.11)
    bytes((  # 14 OPERATOR
        1, _INT, _B_U32_POSITIVE,  # OP_ID
        2, _BYTES, _B_SALT,  # OP_SALT
        3, _BYTES, _B_OPT32,  # OP_PIN
        4, _BYTES, _B_OPT32,  # OP_CARD
    )),
)
# fmt: on

_AUTH = (
    _AUTH_NONE,
    _AUTH_DEVICE,  # HELLO
    _AUTH_SESSION,  # WELCOME
    _AUTH_NONE,  # SYNC
    _AUTH_DEVICE,  # EVENT
    _AUTH_SESSION,  # ACK
    _AUTH_SESSION,  # ALARM
    _AUTH_SESSION,  # STATUS
    _AUTH_SESSION,  # PERMIT
    _AUTH_SESSION,  # REVOKE
    _AUTH_SESSION,  # TIME
    _AUTH_SESSION,  # RESULT
    _AUTH_SESSION,  # ENROL
    _AUTH_NONE,  # STORED: no such message
    _AUTH_SESSION,  # OPERATOR
)

_NAMES = (
    "?",
    "HELLO",
    "WELCOME",
    "SYNC",
    "EVENT",
    "ACK",
    "ALARM",
    "STATUS",
    "PERMIT",
    "REVOKE",
    "TIME",
    "RESULT",
    "ENROL",
    "?",
    "OPERATOR",
)


def encode(msg):
    _check(msg, False)
    return cbor.dumps(msg)


def decode(payload):
    msg = cbor.loads(payload)
    _check(msg, True)
    return msg


def _is_int(value):
    # CPython's bool is an int; MicroPython's is not. CBOR keeps them apart, so must we.
    return isinstance(value, int) and value is not True and value is not False


def _check(msg, need_mac):
    if not isinstance(msg, dict):
        raise DecodeError(_TYPE, "message is not a map")
    msg_type = msg.get(_K_TYPE)
    if not _is_int(msg_type) or not 0 < msg_type < len(_SCHEMA):
        raise DecodeError(_TYPE, "unknown message type")
    rows = _SCHEMA[msg_type]
    if rows is None:
        raise DecodeError(_TYPE, "unknown message type")
    expected = 1
    for i in range(0, len(rows), 3):
        field = rows[i + 1]
        if field & _OPTIONAL:
            if rows[i] not in msg:
                continue
            field ^= _OPTIONAL
        _check_field(msg, rows[i], field, rows[i + 2])
        expected += 1
    if msg_type == _EVENT:
        # `cause` is on ALARM and UNRECORDED records, may be on a REBOOT (protocol 2 made them
        # without) and is on no other (SPEC §4.1).
        record = msg[_EV_KIND]
        if record != _KIND_REBOOT and (_EV_CAUSE in msg) != (record >= _KIND_ALARM):
            raise DecodeError(_FIELD, "EVENT key 10 on the wrong kind of record")
    kind = _AUTH[msg_type]
    if kind == _AUTH_SESSION:
        _check_field(msg, _K_SEQ, _INT, _B_U32_POSITIVE)
        expected += 1
    if kind != _AUTH_NONE and (need_mac or _K_MAC in msg):
        _check_field(msg, _K_MAC, _BYTES, _B_HASH)
        expected += 1
    if len(msg) != expected:
        raise DecodeError(_FIELD, _NAMES[msg_type] + " has an unknown key")


def _check_field(msg, key, kind, bounds):
    if key not in msg:
        raise DecodeError(_FIELD, "missing key " + str(key))
    value = msg[key]
    low, high = _BOUNDS[bounds]
    if kind == _INT:
        if not _is_int(value) or not low <= value <= high:
            raise DecodeError(_FIELD, "key " + str(key) + " must be an int in range")
        return
    if kind == _BYTES:
        if not isinstance(value, bytes):
            raise DecodeError(_FIELD, "key " + str(key) + " must be bytes")
        size = len(value)
    else:
        if not isinstance(value, str):
            raise DecodeError(_FIELD, "key " + str(key) + " must be text")
        size = len(value.encode("utf-8"))
        if kind == _DEVICE_ID and not _id_ok(value):
            raise DecodeError(_FIELD, "device id must be [A-Za-z0-9._-]")
    if (not low <= size <= high or (bounds >= _B_OPT64 and bounds <= _B_OPT32 and 0 < size < high)
            or (bounds == _B_IDS and size % 4)):
        raise DecodeError(_FIELD, "key " + str(key) + " has a bad length")


def _id_ok(text):
    return all("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "._-" for c in text)
