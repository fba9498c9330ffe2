"""The thirteen message types of SPEC §4: plain dicts with int keys.

`encode` and `decode` run the same schema check and raise DecodeError(TYPE or FIELD) on a
message that does not conform; `encode` alone lets a MAC-carrying message lack its MAC (key 15),
which is how `sealproto.auth.sign` computes it. `decode` raises only DecodeError.
"""

from typing import Any, Final

Message = dict[int, Any]

HELLO: Final = 1
WELCOME: Final = 2
SYNC: Final = 3
EVENT: Final = 4
ACK: Final = 5
ALARM: Final = 6
STATUS: Final = 7
PERMIT: Final = 8
REVOKE: Final = 9
TIME: Final = 10
RESULT: Final = 11
ENROL: Final = 12
STORED: Final = 13
OPERATOR: Final = 14
K_TYPE: Final = 0
K_SEQ: Final = 14
K_MAC: Final = 15
HE_VERSION: Final = 1
HE_DEVICE: Final = 2
HE_NONCE: Final = 3
HE_BOOT: Final = 4
HE_NEXT: Final = 5
HE_FIRMWARE: Final = 6
HE_ENROLMENT: Final = 7
WE_NONCE: Final = 1
WE_ACKED: Final = 2
WE_TIME: Final = 3
WE_STORED: Final = 4
EV_COUNTER: Final = 1
EV_BOOT: Final = 2
EV_UPTIME: Final = 3
EV_TIME: Final = 4
EV_KIND: Final = 5
EV_PERMIT: Final = 6
EV_OPERATOR: Final = 7
EV_PREV: Final = 8
EV_SIG: Final = 9
EV_CAUSE: Final = 10
AK_COUNTER: Final = 1
AK_STORED: Final = 2
EN_SERIAL: Final = 1
EN_GATEWAY: Final = 2
EN_SIG: Final = 3
EN_DEVICE: Final = 4
SD_DEVICE: Final = 1
SD_COUNTER: Final = 2
SD_HEAD: Final = 3
AL_CODE: Final = 1
AL_TIME: Final = 2
AL_DETAIL: Final = 3
ST_BATTERY: Final = 1
ST_BACKLOG: Final = 2
ST_FREE: Final = 3
ST_FLAGS: Final = 4
ST_PERMIT_LEFT: Final = 5
ST_NEXT: Final = 6
ST_UNRECORDED: Final = 7
PE_ID: Final = 1
PE_COUNT: Final = 2
PE_NOT_BEFORE: Final = 3
PE_NOT_AFTER: Final = 4
PE_OPERATOR: Final = 5
PE_OPERATORS: Final = 6
OP_ID: Final = 1
OP_SALT: Final = 2
OP_PIN: Final = 3
OP_CARD: Final = 4
RV_PERMIT: Final = 1
TI_TIME: Final = 1
RE_SEQ: Final = 1
RE_CODE: Final = 2
KIND_IMPRESSION: Final = 0
KIND_FORCED: Final = 1
KIND_TAMPER: Final = 2
KIND_LOW_BATTERY: Final = 3
KIND_REBOOT: Final = 4
KIND_ALARM: Final = 5
KIND_UNRECORDED: Final = 6
CA_TORN: Final = 1
CA_ROLLBACK: Final = 2
CA_NEW_JOURNAL: Final = 4
CA_WATCHDOG: Final = 8
CA_BROWNOUT: Final = 16
CA_HARD_RESET: Final = 32
CA_MISSING_SHIFT: Final = 8
AL_FORCED_STAMP: Final = 1
AL_TAMPER: Final = 2
AL_LOW_BATTERY: Final = 3
AL_JOURNAL_FULL: Final = 4
AL_JOURNAL_FAULT: Final = 5
AL_CLOCK_UNSET: Final = 6
AL_ROLLBACK: Final = 7
AL_CHIP_FAULT: Final = 8
AL_UNVERIFIED_ACK: Final = 9
AL_RESERVE_EXHAUSTED: Final = 10
AL_PIN_LOCKOUT: Final = 11
R_OK: Final = 0
R_BAD_FIELD: Final = 1
R_EXPIRED: Final = 2
R_UNKNOWN_PERMIT: Final = 3
R_NO_TIME: Final = 4
R_BUSY: Final = 5
R_BAD_SIGNATURE: Final = 6
F_LOCKED: Final = 1
F_TAMPERED: Final = 2
F_LOW_BATTERY: Final = 4
F_JOURNAL_FULL: Final = 8
F_CLOCK_UNSET: Final = 16
F_PERMIT_ACTIVE: Final = 32
F_CHIP_FAULT: Final = 64
F_RESERVE_EXHAUSTED: Final = 128
F_NOT_ENROLLED: Final = 256
AUTH_NONE: Final = 0
AUTH_DEVICE: Final = 1
AUTH_SESSION: Final = 2
MAC_LEN: Final = 32
NONCE_LEN: Final = 16
HASH_LEN: Final = 32
SIG_LEN: Final = 64
MAX_ID_LEN: Final = 32
MAX_FIRMWARE_LEN: Final = 32
SALT_LEN: Final = 16
MAX_PERMIT_OPERATORS: Final = 4
MAX_OPERATORS: Final = 16

def type_name(msg_type: int) -> str:
    """The type's name ("HELLO", "EVENT", ...), or "?" for an unknown type."""

def auth(msg_type: int) -> int:
    """AUTH_NONE, AUTH_DEVICE or AUTH_SESSION; DecodeError(TYPE) for an unknown type."""

def encode(msg: Message) -> bytes:
    """The deterministic CBOR payload of `msg` (MAC optional)."""

def decode(payload: bytes | bytearray | memoryview) -> Message:
    """Strict CBOR + schema check; raises only DecodeError."""
