"""The group commit: everything the links accepted or rejected, in one SQLite transaction.

Sessions add rows with `submit`; the loop commits the batch (after `group_commit_ms` of
linger unless it is already full), tells the registry what is now stored, resolves the batch's
future and hands the new outbox rows to the publisher. On a disk that refuses, it retries with
backoff and acknowledges nothing meanwhile (SPEC §11.3: no ACK before the commit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sealink.config import LedgerConfig
from sealink.errors import LedgerError
from sealink.gateway.registry import DeviceRegistry
from sealink.ledger import Batch, EventRow, Ledger, OutboxRow, QuarantineRow

__all__ = ["GroupCommitter"]

log = logging.getLogger("sealink.gateway")

T = TypeVar("T")
Db = Callable[..., Awaitable[Any]]

_MARK_FLUSH_S = 0.05
_MARK_FLUSH_ROWS = 256
_RETRY_MIN_S = 0.1
_RETRY_MAX_S = 5.0

OutboxEntry = tuple[str, bytes, str | None, int | None]


class GroupCommitter:
    def __init__(
        self,
        ledger: Ledger,
        db: Db,
        registry: DeviceRegistry,
        config: LedgerConfig,
        *,
        on_committed: Callable[[set[str], list[OutboxRow]], None],
        on_failing: Callable[[str | None], None],
        on_latency: Callable[[float], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._db = db
        self._registry = registry
        self._linger_s = config.group_commit_ms / 1000
        self._max_rows = config.group_commit_rows
        self._on_committed = on_committed
        self._on_failing = on_failing
        # Seconds from a batch's first submit to its commit on disk (the metrics' histogram).
        self._on_latency = on_latency
        self._batch = Batch()
        self._first_submit: float | None = None
        self._done: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._mark_timer: asyncio.TimerHandle | None = None
        self._rejections: Counter[tuple[str, str | None, str]] = Counter()
        # Why the ledger refuses to commit, while it does (None: the last commit succeeded).
        self.failing: str | None = None
        self.commits = 0
        self.events_stored = 0
        self.quarantined = 0

    def __len__(self) -> int:
        return len(self._batch) + len(self._rejections)

    def submit(
        self,
        *,
        event: EventRow | None = None,
        outbox: list[OutboxEntry] | None = None,
        quarantine: QuarantineRow | None = None,
        command_state: tuple[int, str, int | None] | None = None,
    ) -> asyncio.Future[None]:
        """Add rows to the next group commit; the future resolves once they are on disk. It is
        the whole batch's future (one per commit, not per event): await it through
        asyncio.shield() where the waiting task may be cancelled."""
        batch = self._batch
        if self._first_submit is None:
            self._first_submit = time.monotonic()
        if event is not None:
            batch.events.append(event)
        if outbox:
            batch.outbox.extend(outbox)
        if quarantine is not None:
            batch.quarantine.append(quarantine)
        if command_state is not None:
            batch.command_states.append(command_state)
        return self.wake()

    def count_rejection(self, port: str, device: str | None, reason: str) -> None:
        """Counted in memory, written with the next commit (never a commit of its own)."""
        self._rejections[(port, device, reason)] += 1

    def wake(self) -> asyncio.Future[None]:
        done = self._done
        if done is None:
            done = self._done = asyncio.get_running_loop().create_future()
        self._wake.set()
        return done

    def mark_published(self, ids: list[int]) -> None:
        self._batch.published.extend(ids)
        if len(self._batch.published) >= _MARK_FLUSH_ROWS:
            self._wake.set()
        elif self._mark_timer is None:
            self._mark_timer = asyncio.get_running_loop().call_later(_MARK_FLUSH_S, self._flush)

    def _flush(self) -> None:
        self._mark_timer = None
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._linger_s and len(self._batch.events) < self._max_rows:
                await asyncio.sleep(self._linger_s)
            await self.commit_now()

    async def commit_now(self) -> None:
        first_submit, self._first_submit = self._first_submit, None
        batch, done = self._take()
        if not len(batch):
            if done is not None and not done.done():
                done.set_result(None)
            return
        outbox = await self._commit(batch)
        if first_submit is not None and self._on_latency is not None:
            self._on_latency(time.monotonic() - first_submit)
        self.commits += 1
        self.events_stored += len(batch.events)
        self.quarantined += len(batch.quarantine)
        devices: set[str] = set()
        for row in batch.events:
            self._registry.stored(row.device, row.counter, row.hash)
            devices.add(row.device)
        if done is not None and not done.done():
            done.set_result(None)
        self._on_committed(devices, outbox)

    def _take(self) -> tuple[Batch, asyncio.Future[None] | None]:
        batch, done = self._batch, self._done
        self._batch, self._done = Batch(), None
        batch.devices.extend(self._registry.take_updates())
        batch.rejections.extend((p, d, r, n) for (p, d, r), n in self._rejections.items())
        self._rejections.clear()
        return batch, done

    async def _commit(self, batch: Batch) -> list[OutboxRow]:
        delay = _RETRY_MIN_S
        while True:
            try:
                rows: list[OutboxRow] = await self._db(self._commit_rows, batch)
            except LedgerError as exc:
                log.error(
                    "ledger commit failed; nothing is acked until it succeeds",
                    extra={"fields": {"error": str(exc), "retry_s": delay}},
                )
                first, self.failing = self.failing is None, str(exc)
                if first:
                    self._on_failing(self.failing)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            if self.failing is not None:
                self.failing = None
                self._on_failing(None)
            return rows

    def _commit_rows(self, batch: Batch) -> list[OutboxRow]:
        ledger = self._ledger
        ledger.commit(batch)
        if not batch.outbox:
            return []
        # One writer (this thread): the new rows hold the highest ids, in insertion order.
        last = ledger.max_outbox_id()
        first = last - len(batch.outbox) + 1
        return [
            OutboxRow(first + i, topic, payload, device, counter)
            for i, (topic, payload, device, counter) in enumerate(batch.outbox)
        ]
