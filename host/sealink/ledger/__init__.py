"""The gateway's durable ledger (SQLite, WAL, synchronous=FULL)."""

from sealink.ledger.operator import AHEAD_OF_LEDGER, OPERATOR_HOLD, gap_payload
from sealink.ledger.records import (
    GENESIS,
    Batch,
    Command,
    DeviceRecord,
    DeviceUpdate,
    EventRow,
    Gap,
    OperatorAction,
    OutboxRow,
    Quarantine,
    QuarantineRow,
    Rejection,
    now_ms,
)
from sealink.ledger.sqlite import Ledger

__all__ = [
    "AHEAD_OF_LEDGER",
    "GENESIS",
    "OPERATOR_HOLD",
    "Batch",
    "Command",
    "DeviceRecord",
    "DeviceUpdate",
    "EventRow",
    "Gap",
    "Ledger",
    "OperatorAction",
    "OutboxRow",
    "Quarantine",
    "QuarantineRow",
    "Rejection",
    "gap_payload",
    "now_ms",
]
