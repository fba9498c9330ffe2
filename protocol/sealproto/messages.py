# sealproto.messages: the thirteen message types of SPEC §4 as plain dicts with int keys.
# encode() and decode() run the same schema check (sealproto.codec, re-exported here: the
# firmware imports that module alone and so holds none of these names); pairs are listed below.
from sealproto.codec import _AUTH, _NAMES, _is_int
from sealproto.codec import decode as decode
from sealproto.codec import encode as encode
from sealproto.errors import TYPE, DecodeError

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
RESULT = const(11)  # D->H, answers PERMIT, REVOKE, TIME, ENROL, OPERATOR (RE_SEQ = its seq)
ENROL = const(12)  # H->D, answered by RESULT: an enrolment authority's certificate
# Never sent: the statement a gateway signs when it acknowledges (SPEC §5.11), built by
# sealproto.auth.stored_digest alone; encode() and decode() know no such message.
STORED = const(13)
OPERATOR = const(14)  # H->D, answered by RESULT: one operator's credentials (SPEC §5.7)

K_TYPE = const(0)
K_SEQ = const(14)
K_MAC = const(15)

HE_VERSION = const(1)
HE_DEVICE = const(2)
HE_NONCE = const(3)
HE_BOOT = const(4)
HE_NEXT = const(5)
HE_FIRMWARE = const(6)
HE_ENROLMENT = const(7)

WE_NONCE = const(1)
WE_ACKED = const(2)
WE_TIME = const(3)
WE_STORED = const(4)

EV_COUNTER = const(1)
EV_BOOT = const(2)
EV_UPTIME = const(3)
EV_TIME = const(4)
EV_KIND = const(5)
EV_PERMIT = const(6)
EV_OPERATOR = const(7)
EV_PREV = const(8)
EV_SIG = const(9)
EV_CAUSE = const(10)  # REBOOT, ALARM and UNRECORDED records only (SPEC §4.1)

AK_COUNTER = const(1)
AK_STORED = const(2)

EN_SERIAL = const(1)
EN_GATEWAY = const(2)
EN_SIG = const(3)
EN_DEVICE = const(4)

SD_DEVICE = const(1)
SD_COUNTER = const(2)
SD_HEAD = const(3)

AL_CODE = const(1)
AL_TIME = const(2)
AL_DETAIL = const(3)

ST_BATTERY = const(1)
ST_BACKLOG = const(2)
ST_FREE = const(3)
ST_FLAGS = const(4)
ST_PERMIT_LEFT = const(5)
ST_NEXT = const(6)
ST_UNRECORDED = const(7)  # present only while > 0

PE_ID = const(1)
PE_COUNT = const(2)
PE_NOT_BEFORE = const(3)
PE_NOT_AFTER = const(4)
PE_OPERATOR = const(5)
PE_OPERATORS = const(6)  # optional: the operators who may open the lock, u32 big-endian each

OP_ID = const(1)
OP_SALT = const(2)
OP_PIN = const(3)  # SHA-256(salt || PIN digits), or empty: no PIN
OP_CARD = const(4)  # SHA-256(salt || card UID), or empty: no card

RV_PERMIT = const(1)

TI_TIME = const(1)

RE_SEQ = const(1)
RE_CODE = const(2)

KIND_IMPRESSION = const(0)
KIND_FORCED = const(1)
KIND_TAMPER = const(2)
KIND_LOW_BATTERY = const(3)
KIND_REBOOT = const(4)
KIND_ALARM = const(5)
KIND_UNRECORDED = const(6)

# A REBOOT record's cause (EV_CAUSE): bits 0..7 say why the boot was unclean, bits 8.. how many
# records the chip counted that the journal lacks (ROLLBACK, NEW_JOURNAL).
CA_TORN = const(1)
CA_ROLLBACK = const(2)
CA_NEW_JOURNAL = const(4)
CA_WATCHDOG = const(8)
CA_BROWNOUT = const(16)
CA_HARD_RESET = const(32)
CA_MISSING_SHIFT = const(8)

AL_FORCED_STAMP = const(1)
AL_TAMPER = const(2)
AL_LOW_BATTERY = const(3)
AL_JOURNAL_FULL = const(4)
AL_JOURNAL_FAULT = const(5)
AL_CLOCK_UNSET = const(6)
AL_ROLLBACK = const(7)
AL_CHIP_FAULT = const(8)
AL_UNVERIFIED_ACK = const(9)
AL_RESERVE_EXHAUSTED = const(10)
AL_PIN_LOCKOUT = const(11)

R_OK = const(0)
R_BAD_FIELD = const(1)
R_EXPIRED = const(2)
R_UNKNOWN_PERMIT = const(3)
R_NO_TIME = const(4)
R_BUSY = const(5)
R_BAD_SIGNATURE = const(6)

F_LOCKED = const(1)
F_TAMPERED = const(2)
F_LOW_BATTERY = const(4)
F_JOURNAL_FULL = const(8)
F_CLOCK_UNSET = const(16)
F_PERMIT_ACTIVE = const(32)
F_CHIP_FAULT = const(64)
F_RESERVE_EXHAUSTED = const(128)
F_NOT_ENROLLED = const(256)

# Who keys a message's MAC (SPEC §4): nothing, the device key, or the session key (+ seq).
AUTH_NONE = const(0)
AUTH_DEVICE = const(1)
AUTH_SESSION = const(2)

MAC_LEN = const(32)
NONCE_LEN = const(16)
HASH_LEN = const(32)
SIG_LEN = const(64)
MAX_ID_LEN = const(32)
MAX_FIRMWARE_LEN = const(32)
SALT_LEN = const(16)
MAX_PERMIT_OPERATORS = const(4)  # operator ids a PERMIT may name
MAX_OPERATORS = const(16)  # operators a seal's table holds


# For hosts and tools; the firmware never needs them, so they live here, not in codec.
def type_name(msg_type):
    if _is_int(msg_type) and 0 < msg_type < len(_NAMES):
        return _NAMES[msg_type]
    return _NAMES[0]


def auth(msg_type):
    if _is_int(msg_type) and 0 < msg_type < len(_AUTH):
        return _AUTH[msg_type]
    raise DecodeError(TYPE, "unknown message type")
