"""What the console changes on a seal goes through the approval path only (SPEC §11.5): a
signed request per action (permit, revoke, release, bundle) from the console's approver key,
one `ApprovalClient` per followed gateway, and the gateway's signed results followed until the
request is settled. The console never writes a gateway's ledger.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from sealink.approvals import ApprovalClient, ApproverKey
from sealink.console.config import ConsoleConfig, ConsoleError
from sealink.console.store import RequestRow, Store

__all__ = ["FINAL_STATES", "Actions"]

log = logging.getLogger("sealink.console")

# A request whose latest result is one of these is settled: nothing more follows for it.
FINAL_STATES = frozenset({"refused", "done", "expired"})
_BUNDLE_TIMEOUT_S = 30.0
_RESUME_S = 7 * 24 * 3600
_OUTCOMES = frozenset({"delivered", "refused", "done", "expired"})


def _settled(body: dict[str, Any]) -> bool:
    """Nothing more follows this result: a final state, or a permit used up."""
    if body.get("state") in FINAL_STATES:
        return True
    return body.get("state") == "used" and body.get("used") == body.get("count")


class Actions:
    def __init__(
        self,
        config: ConsoleConfig,
        store: Store,
        on_result: Callable[[RequestRow], None],
    ) -> None:
        if config.approver is None or config.approver_key_file is None:
            raise ConsoleError("no [console] approver and approver_key_file: read-only console")
        self.approver = config.approver
        self._key = ApproverKey.load(config.approver_key_file)
        self._store = store
        self._on_result = on_result
        self._clients = {
            g.gateway_id: ApprovalClient(
                config.mqtt,
                self._key,
                config.approver,
                config.mqtt.prefix,
                g.gateway_id,
                g.public_raw,
                client_id=config.approver_client_id(g.gateway_id),
                persistent=True,  # results sent while the console is away wait at the broker
            )
            for g in config.gateways
        }
        self._stack = contextlib.AsyncExitStack()
        self._followers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Actions:
        for client in self._clients.values():
            await self._stack.enter_async_context(client)
        self._resume()
        return self

    def _resume(self) -> None:
        """Ask again for the state of each request not settled when the console last
        stopped. The clients' persistent sessions bring what the gateway sent meanwhile; this
        is the fallback for a session the broker let expire (results would be lost to it).
        The same request id asks for the first request's state, never a second command
        (SPEC §11.5), and a result seen twice is kept once."""
        for row in self._store.requests(("permit", "revoke", "release")):
            client = self._clients.get(row.gateway)
            if client is None or _settled({"state": row.state, **row.last}):
                continue
            if row.time_ms < time.time() * 1000 - _RESUME_S * 1000:
                continue  # a week on, unanswered: the gateway has forgotten it or never knew
            task = asyncio.create_task(self._again(client, row), name=f"console:{row.request}")
            self._followers.add(task)
            task.add_done_callback(self._followers.discard)

    async def _again(self, client: ApprovalClient, row: RequestRow) -> None:
        await client.request(
            row.action, row.device, request_id=row.request, requested_by=row.user, **row.fields
        )
        await self._follow(client, row.request)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._followers:
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)
        await self._stack.aclose()

    def _client(self, gateway: str) -> ApprovalClient:
        client = self._clients.get(gateway)
        if client is None:
            raise ConsoleError(f"gateway {gateway!r} is not one this console follows")
        return client

    async def request(
        self, gateway: str, action: str, device: str, user: str, **fields: Any
    ) -> str:
        """Send one signed request for `user`; its results are stored as they come."""
        client = self._client(gateway)
        request = await client.request(action, device, requested_by=user, **fields)
        self._store.add_request(request, gateway, action, device, user, fields)
        task = asyncio.create_task(self._follow(client, request), name=f"console:{request}")
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)
        return request

    async def _follow(self, client: ApprovalClient, request: str) -> None:
        async for body in client.results(request):
            before = self._store.request_row(request)
            row = self._store.add_result(request, body)
            if row is None:
                continue
            self._on_result(row)
            if before is not None and before.state != row.state and row.state in _OUTCOMES:
                # The outcome the seal or the gateway gave, on the audit trail beside the ask.
                why = str(body.get("reason") or body.get("result_name") or "")
                target = f"{row.device}@{row.gateway}"
                self._store.audit(
                    row.user, row.action, target, row.state, f"request {request} {why}".strip()
                )
            if _settled(body):
                return

    async def bundle(self, gateway: str, device: str, counter: int, user: str) -> bytes:
        """The evidence bundle of one record (SPEC §14.5), asked of its gateway."""
        request = await self.request(gateway, "bundle", device, user, counter=counter)
        body = await self._client(gateway).wait(request, {"done", "refused"}, _BUNDLE_TIMEOUT_S)
        if body.get("state") != "done" or not isinstance(body.get("bundle"), str):
            why = body.get("reason") or body.get("detail") or "no bundle"
            raise ConsoleError(f"the gateway refused the bundle of {device} #{counter}: {why}")
        return base64.b64decode(body["bundle"], validate=True)
