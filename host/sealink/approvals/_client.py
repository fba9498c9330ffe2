"""The approver's side of SPEC §11.5 over MQTT 5: publish signed requests, gather the
gateway's signed results by request id.

    async with ApprovalClient(config.mqtt, key, "erp", "sealink", "gw-1", gw_public) as client:
        request = await client.request("permit", "seal-0001", count=1, not_before_s=...)
        result = await client.wait(request, {"delivered", "refused"}, timeout=30)

With a fixed `client_id` and `persistent=True` the broker keeps the client's session (MQTT 5
session expiry: the config's session_expiry_s) while it is away, and the results the gateway
sent meanwhile arrive when it connects again; past the expiry they are lost to it, and asking
again with the same request id (SPEC §11.5) is the way back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing
from types import TracebackType
from typing import Any

from sealink.approvals._keys import ApproverKey
from sealink.approvals._wire import ResultError, build_request, verify_result
from sealink.config import MqttConfig
from sealink.errors import SealinkError
from sealink.mqtt.client import Message, MqttClient
from sealink.topics import Topics

__all__ = ["ApprovalClient", "ApprovalTimeout"]

log = logging.getLogger("sealink.approvals")


class ApprovalTimeout(SealinkError):
    """No result in one of the awaited states came in time."""


class ApprovalClient:
    def __init__(
        self,
        mqtt_config: MqttConfig,
        key: ApproverKey,
        approver: str,
        prefix: str,
        gateway_id: str,
        gateway_public_raw: bytes,
        *,
        client_id: str | None = None,
        persistent: bool = False,
    ) -> None:
        self._key = key
        self.approver = approver
        self._gateway_public = gateway_public_raw
        topics = Topics(prefix, gateway_id)
        self.request_topic = topics.approval_request()
        self.result_topic = topics.approval_result(approver)
        self._mqtt = MqttClient(
            mqtt_config,
            client_id or f"sealink-approver-{approver}-{secrets.token_hex(4)}",
            [self.result_topic],
            self._on_message,
            persistent=persistent and client_id is not None,
        )
        self._results: dict[str, list[dict[str, Any]]] = {}
        # Set (and replaced) on every new result: the waiters look again.
        self._news = asyncio.Event()

    async def __aenter__(self) -> ApprovalClient:
        await self._mqtt.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._mqtt.__aexit__(exc_type, exc, tb)

    async def wait_connected(self, timeout: float) -> None:
        """Until connected and subscribed to the results: none can be missed from then on."""
        await self._mqtt.wait_subscribed(timeout)

    async def request(
        self,
        action: str,
        device: str,
        *,
        request_id: str | None = None,
        requested_by: str | None = None,
        **fields: Any,
    ) -> str:
        """Publish one signed request (QoS 1; kept by paho while the broker is away); its id.
        The same `request_id` again asks for the state of the first, never a second command."""
        request = request_id or f"r-{secrets.token_hex(8)}"
        body = {
            "request": request,
            "action": action,
            "device": device,
            "requested_by": requested_by or self.approver,
            **fields,
        }
        self._results.setdefault(request, [])
        payload = build_request(self._key, self.approver, self.request_topic, body)
        self._mqtt.publish(
            self.request_topic,
            payload,
            response_topic=self.result_topic,
            correlation=request.encode(),
        )
        return request

    async def results(self, request_id: str) -> AsyncGenerator[dict[str, Any], None]:
        """Every result of `request_id` in the order they came, then each new one as it comes
        (an endless iterator: the caller stops when it has what it waits for)."""
        seen = 0
        while True:
            news = self._news
            new = self._results.get(request_id, [])[seen:]
            if not new:
                await news.wait()
                continue
            seen += len(new)
            for body in new:
                yield body

    async def wait(
        self, request_id: str, states: Collection[str], timeout: float
    ) -> dict[str, Any]:
        """The first result of `request_id` in one of `states`; ApprovalTimeout if none came."""
        try:
            async with asyncio.timeout(timeout), aclosing(self.results(request_id)) as results:
                async for body in results:
                    if body.get("state") in states:
                        return body
        except TimeoutError:
            pass
        seen = [b.get("state") for b in self._results.get(request_id, [])]
        raise ApprovalTimeout(
            f"request {request_id}: no result in {', '.join(sorted(states))} within "
            f"{timeout:g} s (seen: {', '.join(map(str, seen)) or 'none'})"
        )

    def _on_message(self, message: Message) -> None:
        try:
            body = verify_result(message.payload, self._gateway_public, message.topic)
        except ResultError as exc:
            log.warning(
                "result ignored", extra={"fields": {"topic": message.topic, "why": str(exc)}}
            )
            return
        request = body.get("request")
        if not isinstance(request, str):
            request = message.correlation.decode(errors="replace") if message.correlation else ""
        history = self._results.setdefault(request, [])
        if body in history:
            return  # a QoS 1 redelivery, or a result sent again after a broker outage
        history.append(body)
        news, self._news = self._news, asyncio.Event()
        news.set()
