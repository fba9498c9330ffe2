# sealproto.messages: the eleven message types of SPEC §4 as plain dicts with int keys.
# encode() and decode() run the same schema check; request/response pairs are listed below.
from sealproto import cbor
from sealproto.errors import FIELD, TYPE, DecodeError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


HELLO = const(1)  # D->H, answered by WELCOME
WELCOME = const(2)  # H->D, answers HELLO
SYNC = const(3)  # H->D, answered by HELLO
EVENT = const(4)  # D->H, answered by ACK (cumulative)
ACK = const(5)  # H->D, answers EVENT
ALARM = const(6)  # D->H, unanswered
STATUS = const(7)  # D->H, unanswered
PERMIT = const(8)  # H->D, answered by RESULT
REVOKE = const(9)  # H->D, answered by RESULT
TIME = const(10)  # H->D, answered by RESULT
RESULT = const(11)  # D->H, answers PERMIT, REVOKE, TIME (RE_SEQ = the command's seq)

K_TYPE = const(0)
K_SEQ = const(14)
K_MAC = const(15)

HE_VERSION = const(1)
HE_DEVICE = const(2)
HE_NONCE = const(3)
HE_BOOT = const(4)
HE_NEXT = const(5)
HE_FIRMWARE = const(6)

WE_NONCE = const(1)
WE_ACKED = const(2)
WE_TIME = const(3)

EV_COUNTER = const(1)
EV_BOOT = const(2)
EV_UPTIME = const(3)
EV_TIME = const(4)
EV_KIND = const(5)
EV_PERMIT = const(6)
EV_OPERATOR = const(7)
EV_PREV = const(8)

AK_COUNTER = const(1)

AL_CODE = const(1)
AL_TIME = const(2)
AL_DETAIL = const(3)

ST_BATTERY = const(1)
ST_BACKLOG = const(2)
ST_FREE = const(3)
ST_FLAGS = const(4)
ST_PERMIT_LEFT = const(5)
ST_NEXT = const(6)

PE_ID = const(1)
PE_COUNT = const(2)
PE_NOT_BEFORE = const(3)
PE_NOT_AFTER = const(4)
PE_OPERATOR = const(5)

RV_PERMIT = const(1)

TI_TIME = const(1)

RE_SEQ = const(1)
RE_CODE = const(2)

KIND_IMPRESSION = const(0)
KIND_FORCED = const(1)
KIND_TAMPER = const(2)
KIND_LOW_BATTERY = const(3)
KIND_REBOOT = const(4)

AL_FORCED_STAMP = const(1)
AL_TAMPER = const(2)
AL_LOW_BATTERY = const(3)
AL_JOURNAL_FULL = const(4)
AL_JOURNAL_FAULT = const(5)
AL_CLOCK_UNSET = const(6)

R_OK = const(0)
R_BAD_FIELD = const(1)
R_EXPIRED = const(2)
R_UNKNOWN_PERMIT = const(3)
R_NO_TIME = const(4)
R_BUSY = const(5)

F_LOCKED = const(1)
F_TAMPERED = const(2)
F_LOW_BATTERY = const(4)
F_JOURNAL_FULL = const(8)
F_CLOCK_UNSET = const(16)
F_PERMIT_ACTIVE = const(32)

# Who keys a message's MAC (SPEC §4): nothing, the device key, or the session key (+ seq).
AUTH_NONE = const(0)
AUTH_DEVICE = const(1)
AUTH_SESSION = const(2)

MAC_LEN = const(32)
NONCE_LEN = const(16)
HASH_LEN = const(32)
MAX_ID_LEN = const(32)
MAX_FIRMWARE_LEN = const(32)

_U32 = const(0xFFFFFFFF)
_U64 = 0xFFFFFFFFFFFFFFFF

# Field checks as 3-byte rows (key, kind, bounds); ints bound the value, strings the byte length.
# Rows are bytes, not nested tuples, to keep the tables small in a 64 KB heap.
_INT = const(0)
_BYTES = const(1)
_TEXT = const(2)
_DEVICE_ID = const(3)

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
_BOUNDS = (
    (0, _U64),
    (0, _U32),
    (1, _U32),
    (1, _U64),
    (KIND_IMPRESSION, KIND_REBOOT),
    (AL_FORCED_STAMP, AL_CLOCK_UNSET),
    (0, 63),  # STATUS flags: bits 6.. are reserved and must be 0
    (R_OK, R_BUSY),
    (NONCE_LEN, NONCE_LEN),
    (HASH_LEN, HASH_LEN),
    (0, MAX_FIRMWARE_LEN),
    (1, MAX_ID_LEN),
)
_SCHEMA = (
    None,
    bytes((  # HELLO
        HE_VERSION, _INT, _B_U32_POSITIVE,
        HE_DEVICE, _DEVICE_ID, _B_ID,
        HE_NONCE, _BYTES, _B_NONCE,
        HE_BOOT, _INT, _B_U32,
        HE_NEXT, _INT, _B_U32_POSITIVE,
        HE_FIRMWARE, _TEXT, _B_FIRMWARE,
    )),
    bytes((  # WELCOME
        WE_NONCE, _BYTES, _B_NONCE,
        WE_ACKED, _INT, _B_U32,
        WE_TIME, _INT, _B_U64,
    )),
    b"",  # SYNC
    bytes((  # EVENT
        EV_COUNTER, _INT, _B_U32_POSITIVE,
        EV_BOOT, _INT, _B_U32,
        EV_UPTIME, _INT, _B_U64,
        EV_TIME, _INT, _B_U64,
        EV_KIND, _INT, _B_KIND,
        EV_PERMIT, _INT, _B_U32,
        EV_OPERATOR, _INT, _B_U32,
        EV_PREV, _BYTES, _B_HASH,
    )),
    bytes((AK_COUNTER, _INT, _B_U32)),  # ACK
    bytes((  # ALARM
        AL_CODE, _INT, _B_ALARM,
        AL_TIME, _INT, _B_U64,
        AL_DETAIL, _INT, _B_U64,
    )),
    bytes((  # STATUS
        ST_BATTERY, _INT, _B_U64,
        ST_BACKLOG, _INT, _B_U64,
        ST_FREE, _INT, _B_U64,
        ST_FLAGS, _INT, _B_FLAGS,
        ST_PERMIT_LEFT, _INT, _B_U64,
        ST_NEXT, _INT, _B_U32_POSITIVE,
    )),
    bytes((  # PERMIT
        PE_ID, _INT, _B_U32_POSITIVE,
        PE_COUNT, _INT, _B_U64_POSITIVE,
        PE_NOT_BEFORE, _INT, _B_U64,
        PE_NOT_AFTER, _INT, _B_U64,
        PE_OPERATOR, _INT, _B_U32,
    )),
    bytes((RV_PERMIT, _INT, _B_U32_POSITIVE)),  # REVOKE
    bytes((TI_TIME, _INT, _B_U64)),  # TIME
    bytes((  # RESULT
        RE_SEQ, _INT, _B_U32_POSITIVE,
        RE_CODE, _INT, _B_RESULT,
    )),
)

_AUTH = (
    AUTH_NONE,
    AUTH_DEVICE,  # HELLO
    AUTH_SESSION,  # WELCOME
    AUTH_NONE,  # SYNC
    AUTH_DEVICE,  # EVENT
    AUTH_SESSION,  # ACK
    AUTH_SESSION,  # ALARM
    AUTH_SESSION,  # STATUS
    AUTH_SESSION,  # PERMIT
    AUTH_SESSION,  # REVOKE
    AUTH_SESSION,  # TIME
    AUTH_SESSION,  # RESULT
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
)



def type_name(msg_type):
    if _is_int(msg_type) and 0 < msg_type < len(_NAMES):
        return _NAMES[msg_type]
    return _NAMES[0]


def auth(msg_type):
    if _is_int(msg_type) and 0 < msg_type < len(_AUTH):
        return _AUTH[msg_type]
    raise DecodeError(TYPE, "unknown message type")


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
        raise DecodeError(TYPE, "message is not a map")
    msg_type = msg.get(K_TYPE)
    if not _is_int(msg_type) or not 0 < msg_type < len(_SCHEMA):
        raise DecodeError(TYPE, "unknown message type")
    rows = _SCHEMA[msg_type]
    for i in range(0, len(rows), 3):
        _check_field(msg, rows[i], rows[i + 1], rows[i + 2])
    expected = 1 + len(rows) // 3
    kind = _AUTH[msg_type]
    if kind == AUTH_SESSION:
        _check_field(msg, K_SEQ, _INT, _B_U32_POSITIVE)
        expected += 1
    if kind != AUTH_NONE and (need_mac or K_MAC in msg):
        _check_field(msg, K_MAC, _BYTES, _B_HASH)
        expected += 1
    if len(msg) != expected:
        raise DecodeError(FIELD, _NAMES[msg_type] + " has an unknown key")


def _check_field(msg, key, kind, bounds):
    if key not in msg:
        raise DecodeError(FIELD, "missing key " + str(key))
    value = msg[key]
    low, high = _BOUNDS[bounds]
    if kind == _INT:
        if not _is_int(value) or not low <= value <= high:
            raise DecodeError(FIELD, "key " + str(key) + " must be an int in range")
        return
    if kind == _BYTES:
        if not isinstance(value, bytes):
            raise DecodeError(FIELD, "key " + str(key) + " must be bytes")
        size = len(value)
    else:
        if not isinstance(value, str):
            raise DecodeError(FIELD, "key " + str(key) + " must be text")
        size = len(value.encode("utf-8"))
        if kind == _DEVICE_ID and not _id_ok(value):
            raise DecodeError(FIELD, "device id must be [A-Za-z0-9._-]")
    if not low <= size <= high:
        raise DecodeError(FIELD, "key " + str(key) + " has a bad length")


def _id_ok(text):
    return all("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "._-" for c in text)
