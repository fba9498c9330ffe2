# sealproto.timers: the link's constants of SPEC §5.1, one source for host and firmware tests.
# The firmware keeps its own const() copies (a name imported from here costs RAM);
# firmware/tests/test_wire_constants.py checks them against this module.
try:
    from micropython import const
except ImportError:

    def const(x):
        return x


WINDOW = const(8)  # EVENTs in flight, at most
RTO_MS = const(500)  # first retransmission timeout, doubling
RTO_MAX_MS = const(8000)
HELLO_RETRY_MS = const(1000)  # first HELLO retry, doubling
HELLO_RETRY_MAX_MS = const(30000)
LINK_DEAD_MS = const(30000)  # device: in flight and no host message for this long
SYNC_INTERVAL_MS = const(1000)  # host: at most one SYNC per link per interval
SYNC_INTERVAL_MAX_MS = const(30000)  # host: SYNCs unanswered by a session back off to this
DUP_ACK_HOLDOFF_MS = const(250)  # host: at most one duplicate-answering ACK per interval
STATUS_INTERVAL_MS = const(60000)  # device: STATUS at least this often in a session
COMMAND_TIMEOUT_MS = const(2000)  # host: resend a command without RESULT after this
COMMAND_ATTEMPTS = const(6)  # host: the first send and 5 resends, then "unreachable"
# Operator identity at the seal (SPEC §5.1, §5.7): an identification opens a permit that names
# operators for this long; a PIN's digits more than DIGIT_TIMEOUT_MS apart start a new entry;
# PIN_FAILURES wrong PINs in a row lock identification out for PIN_LOCKOUT_MS.
IDENT_WINDOW_MS = const(60000)
DIGIT_TIMEOUT_MS = const(5000)
PIN_FAILURES = const(3)
PIN_LOCKOUT_MS = const(300000)
