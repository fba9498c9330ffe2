"""What other processes change in the ledger, seen by the running service once a `POLL_S`.

The CLI writes from its own process (WAL lets it): operator actions on devices (hold, release,
adopt), newly registered or re-registered devices, pending commands. The watch reloads the
affected devices into the registry and hands each live session its pending commands. A
registration writes the key store before the ledger, so when the ledger shows a new one the
key store, read again then, already holds its link key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from sealproto import messages

from sealink.crypto.keystore import LinkKeys, LinkKeyStore
from sealink.errors import KeyFileError
from sealink.gateway.committer import GroupCommitter
from sealink.gateway.fastpath import decode_event
from sealink.gateway.registry import DeviceRegistry
from sealink.gateway.session import Session
from sealink.ledger import Ledger

__all__ = ["POLL_S", "LedgerWatch"]

log = logging.getLogger("sealink.gateway")

POLL_S = 1.0
Db = Callable[..., Awaitable[Any]]


class LedgerWatch:
    def __init__(
        self,
        ledger: Ledger,
        db: Db,
        registry: DeviceRegistry,
        sessions: Iterable[Session],
        committer: GroupCommitter,
        link_keys: LinkKeyStore,
        on_loaded: Callable[[str], None] = lambda device: None,
    ) -> None:
        self._ledger = ledger
        self._on_loaded = on_loaded  # the gateway publishes a quarantine set or released
        self._key_store = link_keys
        self._keys = LinkKeys({})
        self._keys_error: str | None = None
        self._db = db
        self._registry = registry
        self._sessions = sessions
        self._committer = committer
        self._action_id = 0
        self._shape: tuple[int, int] = (0, 0)

    async def load(self) -> None:
        """Every registered device, at start (KeyFileError: the key store is unusable);
        operator actions from now on are news."""
        self._action_id = await self._db(self._ledger.max_operator_action_id)
        self._keys = await self._db(self._key_store.load)
        await self._load_devices()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await self.poll_once()

    async def poll_once(self) -> None:
        ledger = self._ledger
        for action in await self._db(ledger.operator_actions, self._action_id):
            self._action_id = max(self._action_id, action.id)
            fields = {"device": action.device, "action": action.action, "by": action.operator}
            log.info("operator action", extra={"fields": fields})
            await self.load_device(action.device)
        # Changes when a device is registered or re-registered (`sealink devices add`).
        if await self._db(ledger.registrations) != self._shape and await self._reload_keys():
            await self._load_devices()
        for session in list(self._sessions):
            if session.device is not None:
                session.offer_commands(await self._db(ledger.pending_commands, session.device))
        # Rejection counters ride on the next commit; with nothing else happening they still
        # reach the ledger within a poll.
        if len(self._committer):
            self._committer.wake()

    async def load_device(self, device: str) -> None:
        ledger = self._ledger
        record = await self._db(ledger.device_record, device)
        if record is None:
            self._registry.forget(device)
            return
        key = self._keys.get(device)
        if key is None:
            self._lacks_key(device)
            return
        boot = 0
        if record.stored and record.stored_hash is not None:
            payload = await self._db(ledger.event_bytes, device, record.stored)
            event = decode_event(payload) if payload is not None else None
            boot = event[messages.EV_BOOT] if event is not None else 0
        self._registry.load(record, key, boot)
        for session in self._sessions:
            if session.device == device:
                # A release may have made stored events ackable.
                session.committed()
        self._on_loaded(device)

    async def _load_devices(self) -> None:
        self._shape = await self._db(self._ledger.registrations)
        for device in await self._db(self._ledger.device_ids):
            await self.load_device(device)

    async def _reload_keys(self) -> bool:
        """False: the key store was made unusable while the service runs (a chmod, a bad
        edit); the keys read before stay in use and the next poll tries again."""
        try:
            self._keys = await self._db(self._key_store.load)
        except KeyFileError as exc:
            if str(exc) != self._keys_error:
                log.error("link keys not reread", extra={"fields": {"why": str(exc)}})
            self._keys_error = str(exc)
            return False
        self._keys_error = None
        return True

    def _lacks_key(self, device: str) -> None:
        store = self._key_store.path
        if self._registry.missing_key(device) is None:
            fields = {
                "device": device,
                "link_keys": str(store),
                "fix": f"sealink devices add {device} --replace --key-file ...",
            }
            log.error(
                "registered device has no link key; its HELLOs are refused",
                extra={"fields": fields},
            )
        self._registry.lacks_key(device, store)
