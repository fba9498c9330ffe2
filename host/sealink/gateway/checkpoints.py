"""Signed checkpoints of the gateway's transparency log (SPEC §14.2), made by the service.

Every `ledger.checkpoint_interval_s` (when the log grew since the last one) and once more when
the service stops, the tree head (size, root, device heads) is read in one snapshot, signed as a
C2SP note, stored in the ledger and published retained on `<prefix>/gateway/<id>/checkpoint`
(the publisher keeps the retained payload and sends it again after a reconnect).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sealink.crypto import GatewayKey
from sealink.errors import LedgerError
from sealink.evidence import Checkpoint, checkpoint_origin, heads_hash, sign_checkpoint
from sealink.ledger import Ledger, now_ms

if TYPE_CHECKING:
    from sealink.gateway.service import Gateway

__all__ = ["Checkpoints", "make_checkpoint"]

log = logging.getLogger("sealink.gateway")


def make_checkpoint(ledger: Ledger, key: GatewayKey, origin: str) -> Checkpoint | None:
    """Sign and keep a checkpoint of the current tree, unless the latest already covers it."""
    size, root, heads = ledger.log.tree_head()
    latest = ledger.log.checkpoint()
    if latest is not None and latest.size >= size:
        return None
    checkpoint = sign_checkpoint(key, origin, size, root, heads_hash(heads), now_ms())
    ledger.log.add_checkpoint(checkpoint)
    return checkpoint


class Checkpoints:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.origin = checkpoint_origin(gateway.gateway_id)
        self.latest: Checkpoint | None = None

    async def run(self) -> None:
        gateway = self._gateway
        self.latest = await gateway.db(gateway.ledger.log.checkpoint)
        if self.latest is not None:
            self._publish(self.latest)
        while True:
            await asyncio.sleep(gateway.config.ledger.checkpoint_interval_s)
            await self.make()

    async def make(self) -> Checkpoint | None:
        """Sign, keep and publish a checkpoint if the log grew since the last one."""
        gateway = self._gateway
        try:
            checkpoint = await gateway.db(self._make)
        except LedgerError as exc:
            log.error("checkpoint failed", extra={"fields": {"error": str(exc)}})
            return None
        if checkpoint is not None:
            self.latest = checkpoint
            log.info(
                "checkpoint",
                extra={"fields": {"size": checkpoint.size, "root": checkpoint.root.hex()}},
            )
            self._publish(checkpoint)
        return checkpoint

    def _make(self) -> Checkpoint | None:
        """On the ledger's thread."""
        gateway = self._gateway
        return make_checkpoint(gateway.ledger, gateway.key, self.origin)

    def _publish(self, checkpoint: Checkpoint) -> None:
        gateway = self._gateway
        gateway.publisher.publish_now(
            gateway.topics.checkpoint(), checkpoint.note.encode(), retain=True
        )
