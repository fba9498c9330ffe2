"""The gateway's side of the approval commands (SPEC §11.5).

Signed requests arrive on `<prefix>/cmd/<id>/request` on the desk's own MQTT client (like the
witness desk's); they are handled one at a time, in arrival order, so an approver's seqs are
judged in the order it sent them. Each is checked (signature, approver, rights, time, then in
one ledger transaction the replay, the same request id again, the command's fields) and
recorded, accepted or refused; a refusal also raises a gateway alarm. Results are signed
(§11.4), kept in the ledger until the broker acknowledges them, and follow the command: the
seal's RESULT, each impression stored under an approved permit, its window closing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sealproto import messages

from sealink.approvals import ApprovalRefused, claimed, open_request
from sealink.errors import DeviceError, SealinkError
from sealink.gateway.actions import CommandDone
from sealink.gateway.bundles import bundle_base64
from sealink.gateway.limits import RefusalLimiter
from sealink.ledger import now_ms
from sealink.ledger.approvals import (
    ApprovalEntry,
    ApprovalRow,
    Approver,
    Refusal,
    replay_refusal,
)
from sealink.mqtt.client import Message, MqttClient
from sealink.topics import approver_name_problem

if TYPE_CHECKING:
    from sealink.gateway.service import Gateway

__all__ = ["ApprovalDesk", "result_name"]

log = logging.getLogger("sealink.gateway")

_RESULT_NAMES = {
    value: name[2:].lower() for name, value in vars(messages).items() if name.startswith("R_")
}
# A permit's states after which nothing more is said of it.
_FINAL = ("refused", "expired", "done")


def result_name(code: int) -> str:
    """A RESULT code's name (SPEC §7, lower case); an unknown one as `result<n>`."""
    return _RESULT_NAMES.get(code, f"result{code}")


@dataclass
class _Watched:
    """An approved permit whose impressions and window the desk follows."""

    row: ApprovalRow
    count: int
    not_after_s: int
    used: int = 0


Work = Callable[[], Awaitable[None]]


class ApprovalDesk:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._client: MqttClient | None = None
        self._work: asyncio.Queue[Work] = asyncio.Queue()
        self._inflight: dict[int, int] = {}  # MQTT message id -> approval_results id
        self._watched: dict[int, _Watched] = {}  # approval_requests id -> its permit
        self._rewatch = asyncio.Event()
        self._started = asyncio.Event()
        limits = gateway.config.approvals
        self._refusals = RefusalLimiter(
            limits.refusals_per_approver_per_min, limits.refusals_per_min
        )
        self._folded = asyncio.Event()  # a refusal was counted into the open summary
        # The refusal limits' time, Unix ms: a test sets its own, so that a bucket refills and
        # a summary falls due without waiting.
        self.clock: Callable[[], int] = now_ms

    async def ready(self, timeout: float) -> None:
        """Until the desk's subscription is in place (tests, and an operator's check). Its
        session is persistent: once it has subscribed, requests sent while the gateway is away
        wait at the broker (for `session_expiry_s`); only one published before the desk's
        first subscription ever is dropped, and its approver sends it again with the same id."""
        async with asyncio.timeout(timeout):
            await self._started.wait()
            assert self._client is not None
            await self._client.wait_subscribed(timeout)

    async def run(self) -> None:
        gateway = self._gateway
        async with MqttClient(
            gateway.config.mqtt,
            f"{gateway.config.client_id}-approvals",
            [gateway.topics.approval_request()],
            self._on_message,
            on_published=self._on_published,
            persistent=True,
        ) as client:
            self._client = client
            self._started.set()
            try:
                await self._load()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._worker(), name="approvals:work")
                    tg.create_task(self._expiries(), name="approvals:expiry")
                    tg.create_task(self._summaries(), name="approvals:refusals")
            finally:
                self._client = None
                self._started.clear()

    async def _load(self) -> None:
        """Results the broker never acknowledged (a restart, an outage), and the permits still
        followed, from the ledger."""
        gateway = self._gateway
        for pending in await gateway.db(gateway.ledger.pending_approval_results):
            self._send(pending.id, pending.topic, pending.correlation, pending.payload)
        rows = await gateway.db(
            gateway.ledger.approval_requests,
            "WHERE outcome = 'accepted' AND action = 'permit' AND state IN "
            "('queued', 'delivered', 'used')",
        )
        for row in rows:
            self._watch(row, (row.last or {}).get("used", 0))
        # Accepted, then the gateway stopped before its first result was stored: answered now
        # from the ledger's row (its command was queued with it; a release or a bundle, made
        # only after that first result, is made now).
        for row in await gateway.db(
            gateway.ledger.approval_requests, "WHERE outcome = 'accepted' AND last IS NULL"
        ):
            await self._decided(row)

    def _watch(self, row: ApprovalRow, used: int) -> None:
        count, not_after = row.body["count"], row.body["not_after_s"]
        if used < count:
            self._watched[row.id] = _Watched(row, count, not_after, used)
            self._rewatch.set()

    # what the gateway tells the desk ---------------------------------------------------------

    def command_done(self, action: CommandDone) -> None:
        self._work.put_nowait(lambda: self._command_done(action))

    def committed(self, devices: set[str]) -> None:
        """Events of `devices` were committed: count the impressions of their permits."""
        rows = [w.row.id for w in self._watched.values() if w.row.device in devices]
        if rows:
            self._work.put_nowait(lambda: self._count(rows))

    # MQTT --------------------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        if message.topic == self._gateway.topics.approval_request():
            self._work.put_nowait(lambda: self._request(message))

    def _on_published(self, mid: int, ok: bool) -> None:
        result = self._inflight.pop(mid, None)
        if result is None:
            return
        if not ok:
            log.warning("approval result refused by the broker", extra={"fields": {"id": result}})
            return  # stays pending: sent again at the next start
        self._work.put_nowait(lambda: self._gateway.db(self._ledger_published, result))

    def _ledger_published(self, result: int) -> None:
        self._gateway.ledger.approval_result_published(result)

    def _send(self, result: int, topic: str, correlation: bytes | None, payload: bytes) -> None:
        client = self._client
        if client is not None:
            self._inflight[client.publish(topic, payload, correlation=correlation)] = result

    async def _worker(self) -> None:
        while True:
            work = await self._work.get()
            try:
                await work()
            except SealinkError as exc:
                # The ledger failed (a full disk): said here, the request is not acknowledged
                # with a result, and the gateway's own ledger alarm tells the operator.
                log.error("approval work failed", extra={"fields": {"error": str(exc)}})
            except Exception:
                # One bad message must not stop the desk (nor the gateway): say so and go on.
                log.exception("approval work failed")

    # requests --------------------------------------------------------------------------------

    async def _request(self, message: Message) -> None:
        gateway = self._gateway
        name, request = claimed(message.payload)
        found = await gateway.db(gateway.ledger.approvers, name) if name else []
        approver = found[0] if found else None
        opened = None
        try:
            key = approver.public_key if approver and approver.revoked_ms is None else None
            opened = open_request(message.payload, message.topic, key)
            assert approver is not None  # open_request verified under its key
            refusal = replay_refusal(opened.seq, approver.highest_seq) or self._judge(
                approver, opened.body["action"], opened.time_ms
            )
        except ApprovalRefused as exc:
            detail = exc.detail
            if exc.reason == "unknown_approver" and approver is not None:
                detail = f"approver {name} was revoked"
            refusal = Refusal(exc.reason, detail, exc.field)
        # Accountable: the approver's key signed it and its seq is new, so its refusal is an
        # act of that key, recorded and answered every time (its alarm alone is limited). Any
        # other refusal (not signed by a registered key, not opened, a copy of a signed one)
        # anybody who can write the request topic can send without end: beyond the limits it
        # is only counted, or a flood of them would fill the ledger and drown the alarms.
        accountable = opened is not None and (refusal is None or refusal.reason != "replay")
        if refusal is not None and not accountable and not self._admitted(name, refusal, False):
            return
        entry = ApprovalEntry(
            approver=name,
            request=opened.body["request"] if opened else request,
            body=opened.body if opened else None,
            seq=opened.seq if opened else None,
            response_topic=self._response_topic(name, message.response_topic),
            correlation=message.correlation,
            refusal=refusal,
        )
        row = await gateway.db(gateway.ledger.record_request, entry)
        # An accountable request the ledger refused (its device, its command's fields) takes
        # a token now; an unaccountable one took its token above.
        alarmed = row.refusal is not None and (
            not accountable or self._admitted(name, row.refusal, True)
        )
        await self._decided(row, alarmed=alarmed)

    def _admitted(self, name: str | None, refusal: Refusal, recorded: bool) -> bool:
        """May this refusal be handled one by one? If not, it is counted in the summary."""
        now = self.clock()
        due = self._refusals.take(now)
        if due is not None:
            self._work.put_nowait(lambda: self._summarise(due))
        if self._refusals.admit(name, now):
            return True
        self._refusals.fold(refusal.reason, name, recorded, now)
        self._folded.set()
        return False

    def _judge(self, approver: Approver, action: str, time_ms: int) -> Refusal | None:
        if action not in approver.actions:
            allowed = ", ".join(approver.actions) or "nothing"
            return Refusal("not_allowed", f"approver {approver.name} may ask for {allowed}")
        skew_ms = abs(now_ms() - time_ms)
        max_skew_s = self._gateway.config.approvals.max_skew_s
        if skew_ms > max_skew_s * 1000:
            return Refusal("stale", f"time_ms is {skew_ms} ms from the gateway's clock")
        return None

    def _response_topic(self, approver: str | None, asked: str | None) -> str:
        """The request's response topic if it is the approver's result topic or below it;
        that topic otherwise (an approver never makes the gateway sign for another topic)."""
        own = self._gateway.topics.approval_result(approver or "-")
        if asked is not None and (asked == own or asked.startswith(own + "/")):
            return asked
        return own

    async def _decided(self, row: ApprovalRow, *, alarmed: bool = False) -> None:
        """Answer `row`; `alarmed`: its refusal raises an alarm of its own."""
        if row.outcome == "refused":
            assert row.refusal is not None
            if alarmed:
                self._alarm(row)
            if row.approver is not None and approver_name_problem(row.approver) is None:
                await self._emit(row, "refused", self._refusal_fields(row.refusal), store=False)
        elif row.outcome == "duplicate":
            await self._repeat(row)
        elif row.action == "bundle":
            await self._bundle(row)
        else:
            await self._emit(row, "queued")
            if row.action == "release":
                await self._release(row)
            else:
                self._gateway.wake_commands(row.device or "")
                if row.action == "permit":
                    self._watch(row, 0)

    @staticmethod
    def _refusal_fields(refusal: Refusal) -> dict[str, Any]:
        fields: dict[str, Any] = {"reason": refusal.reason, "detail": refusal.detail}
        if refusal.field is not None:
            fields["field"] = refusal.field
        return fields

    async def _repeat(self, row: ApprovalRow) -> None:
        """The same request id again: the first one's current state, to this one's topic."""
        gateway = self._gateway
        assert row.first is not None
        first = await gateway.db(gateway.ledger.approval_request, row.first)
        body = first.last or self._body(first, first.state or "queued")
        await self._publish(None, None, body, row.response_topic, row.correlation)

    async def _release(self, row: ApprovalRow) -> None:
        gateway = self._gateway
        operator = f"approver {row.approver} ({row.body['requested_by']})"
        try:
            await gateway.db(gateway.ledger.release, row.device, operator, row.body["note"])
        except DeviceError as exc:
            refusal = {"reason": "invalid", "detail": str(exc), "field": "device"}
            await self._emit(row, "refused", refusal)
            return
        await self._emit(row, "done")

    async def _bundle(self, row: ApprovalRow) -> None:
        gateway = self._gateway
        # A bundle proves its record against a signed checkpoint (SPEC §14.5): one covering
        # every stored record is signed first (none if the latest covers them), so a record
        # acked a moment ago is not refused as not found until the next interval.
        await gateway.checkpoints.make()
        try:
            bundle = await gateway.db(
                bundle_base64,
                gateway.ledger,
                gateway.key,
                gateway.gateway_id,
                row.device,
                row.body["counter"],
            )
        except SealinkError as exc:
            await self._emit(row, "refused", {"reason": "not_found", "detail": str(exc)})
            return
        await self._emit(row, "done", {"counter": row.body["counter"], "bundle": bundle})

    # results ---------------------------------------------------------------------------------

    def _body(self, row: ApprovalRow, state: str, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "request": row.request,
            "action": row.action,
            "device": row.device,
            "state": state,
        }
        if row.command is not None:
            body["command"] = row.command
        if row.permit is not None:
            body["permit"] = row.permit
        if row.action == "permit" and row.outcome == "accepted":
            body["count"] = row.body["count"]
            if "document_sha256" in row.body:
                body["document_sha256"] = row.body["document_sha256"]
        body.update(fields)
        return body

    async def _emit(
        self,
        row: ApprovalRow,
        state: str,
        fields: dict[str, Any] | None = None,
        *,
        store: bool = True,
    ) -> None:
        """Sign and send a result of `row`; `store`: it is the row's new state too (a refused
        row has its state already)."""
        body = self._body(row, state, **(fields or {}))
        await self._publish(
            row.id if store else None, state, body, row.response_topic, row.correlation
        )

    async def _publish(
        self,
        row_id: int | None,
        state: str | None,
        body: dict[str, Any],
        topic: str,
        correlation: bytes | None,
    ) -> None:
        gateway = self._gateway
        payload = gateway.signer.sign(topic, body)
        result = await gateway.db(
            gateway.ledger.approval_result, row_id, state, body, topic, correlation, payload
        )
        log.info(
            "approval result",
            extra={"fields": {k: body.get(k) for k in ("request", "action", "device", "state")}},
        )
        self._send(result, topic, correlation, payload)

    def _alarm(self, row: ApprovalRow) -> None:
        refusal = row.refusal
        assert refusal is not None
        fields = {
            "reason": "approval_refused",
            "detail": f"{refusal.reason}: {refusal.detail}",
            "approver": row.approver,
            "request": row.request,
            "refusal": refusal.reason,
        }
        log.warning("approval refused", extra={"fields": fields})
        self._raise(fields)

    # refusals beyond the limits --------------------------------------------------------------

    async def _summaries(self) -> None:
        """Closes the open summary when its interval has passed by `clock`, even if no other
        refusal comes to close it."""
        while True:
            await self._folded.wait()
            self._folded.clear()
            due_ms = self._refusals.due_ms
            if due_ms is not None:
                await asyncio.sleep(max(due_ms - self.clock(), 0) / 1000)
                self._work.put_nowait(self._summary_due)

    async def _summary_due(self) -> None:
        summary = self._refusals.take(self.clock())
        if summary is not None:
            await self._summarise(summary)
        elif self._refusals.due_ms is not None:
            self._folded.set()  # not due yet by `clock` (moved by a test): look again later

    async def close(self) -> None:
        """The gateway stops: the open summary is recorded and alarmed now, not lost."""
        summary = self._refusals.take(self.clock(), closing=True)
        if summary is None:
            return
        try:
            await self._summarise(summary)
        except SealinkError as exc:
            # The ledger failed (a full disk): the stop goes on; the counts stay in the log.
            fields = {"error": str(exc), **summary}
            log.error("approval refusal summary not recorded", extra={"fields": fields})

    async def _summarise(self, summary: dict[str, Any]) -> None:
        gateway = self._gateway
        topic = gateway.topics.alarms(None)
        await gateway.db(gateway.ledger.record_suppressed_refusals, summary, topic)
        fields = {
            "reason": "approval_refusals_suppressed",
            "detail": f"{summary['count']} approval refusals beyond the limits, "
            f"{summary['recorded']} of them recorded",
            **summary,
        }
        log.warning("approval refusals suppressed", extra={"fields": fields})
        self._raise(fields)

    def _raise(self, fields: dict[str, Any]) -> None:
        """A signed gateway alarm (SPEC §11.4), through the ledger's outbox."""
        gateway = self._gateway
        topic = gateway.topics.alarms(None)
        body = {
            "device": None,
            "gateway": gateway.gateway_id,
            "time_ms": now_ms(),
            "source": "gateway",
            **fields,
        }
        gateway.committer.submit(outbox=[(topic, gateway.signer.sign(topic, body), None, None)])

    # the seal's answers, impressions, windows ------------------------------------------------

    async def _command_done(self, action: CommandDone) -> None:
        gateway = self._gateway
        rows = await gateway.db(
            gateway.ledger.approval_requests,
            "WHERE command = ? AND outcome = 'accepted'",
            (action.command_id,),
        )
        if not rows or rows[0].state in _FINAL:
            return  # a command the CLI queued, or one already answered
        row = rows[0]
        if action.state == "done":
            await self._emit(row, "delivered" if row.action == "permit" else "done")
            return
        self._watched.pop(row.id, None)
        if action.code is None:
            fields: dict[str, Any] = {"reason": "invalid", "detail": "no seal could take it"}
        else:
            name = result_name(action.code)
            fields = {"reason": name, "detail": f"the seal answered {name}"}
            fields.update(result=action.code, result_name=name)
        await self._emit(row, "refused", fields)

    async def _count(self, row_ids: list[int]) -> None:
        gateway = self._gateway
        for row_id in row_ids:
            watched = self._watched.get(row_id)
            if watched is None or watched.row.permit is None:
                continue
            device, permit = watched.row.device or "", watched.row.permit
            used = await gateway.db(gateway.ledger.approval_used, row_id, device, permit)
            for n in range(watched.used + 1, min(used, watched.count) + 1):
                await self._emit(watched.row, "used", {"used": n})
            watched.used = max(watched.used, used)
            if watched.used >= watched.count:
                del self._watched[row_id]

    async def _expiries(self) -> None:
        """`expired` for each followed permit whose window closed before its count was used."""
        while True:
            self._rewatch.clear()
            now_s = now_ms() / 1000
            for row_id, watched in list(self._watched.items()):
                if watched.not_after_s < now_s:
                    self._work.put_nowait(self._expiry(row_id))
            later = [w.not_after_s for w in self._watched.values() if w.not_after_s >= now_s]
            wait_s = min(later) - now_s + 1 if later else None
            try:
                async with asyncio.timeout(wait_s):
                    await self._rewatch.wait()
            except TimeoutError:
                pass

    def _expiry(self, row_id: int) -> Work:
        return lambda: self._expire(row_id)

    async def _expire(self, row_id: int) -> None:
        watched = self._watched.get(row_id)
        if watched is None:
            return
        await self._count([row_id])  # an impression stored just before the end counts
        watched = self._watched.pop(row_id, None)
        if watched is not None:
            await self._emit(watched.row, "expired", {"used": watched.used})
