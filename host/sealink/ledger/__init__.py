"""The gateway's durable ledger (SQLite, WAL, synchronous=FULL)."""

from sealink.ledger.sqlite import Batch, Command, EventRow, Ledger, OutboxRow, QuarantineRow, now_ms

__all__ = ["Batch", "Command", "EventRow", "Ledger", "OutboxRow", "QuarantineRow", "now_ms"]
