"""One device link: handshake, verification of every frame, acks after commit, host commands.

Checks, in order, for every frame (protocol/SPEC.md §2, §4): CRC (framing), strict decode,
message type and direction, the MAC (device key for HELLO/EVENT, session key + increasing seq
for the rest), then for an EVENT: counter continuity, deduplication and the hash chain.
Whatever fails is quarantined in the ledger with its bytes and raised as an alarm; it is never
dropped silently and never published as valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from sealproto import auth, errors, framing, messages
from sealproto.errors import DecodeError
from sealproto.messages import K_SEQ, K_TYPE

from sealink.crypto.signer import countersign_payload
from sealink.gateway.fastpath import (
    FrameDecoder,
    decode_event,
    device_mac_ok,
    encode_frame,
    encode_session,
)
from sealink.ledger.sqlite import EventRow, now_ms
from sealink.transport.base import Transport

if TYPE_CHECKING:
    from sealink.gateway.service import DeviceState, Gateway

__all__ = ["Session"]

log = logging.getLogger("sealink.session")

PROTOCOL_VERSION = 1
_SYNC_INTERVAL_S = 1.0
_RESULT_TIMEOUT_S = 5.0
_COMMAND_POLL_S = 1.0
_COMMAND_RETRY_S = 2.0
_ALARM_INTERVAL_S = 1.0


class Session:
    def __init__(self, gateway: Gateway, transport: Transport) -> None:
        self.gateway = gateway
        self.transport = transport
        self.port = transport.name
        self.device: str | None = None
        self.state: DeviceState | None = None
        self._session_key = b""
        self._host_seq = 0
        self._device_seq = 0
        self._acked_sent = -1
        self._ack_wake = asyncio.Event()
        self._dupack = False
        self._gap_at = -1
        self._welcomed = asyncio.Event()
        self._results: dict[int, asyncio.Future[int]] = {}
        self._commander: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._last_sync = 0.0
        self._alarm_last: dict[str, float] = {}
        self._alarm_suppressed: dict[str, int] = {}
        self.frames = 0
        self.duplicates = 0
        self.out_of_order = 0

    # lifecycle -------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Run until the link fails (TransportError)."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._acker(), name=f"{self.port}:acker")
            tg.create_task(self._syncer(), name=f"{self.port}:sync")
            await self._reader()

    async def closed(self) -> None:
        for fut in self._results.values():
            if not fut.done():
                fut.cancel()
        state = self.state
        if state is not None and state.session is self:
            state.session = None
            self._publish_status(online=False)

    def committed(self) -> None:
        """The gateway committed a group: maybe some of our events are now ackable."""
        if self.state is not None and self.state.stored != self._acked_sent:
            self._ack_wake.set()

    # sending ---------------------------------------------------------------------------------

    async def _send_msg(self, msg: dict[int, Any]) -> None:
        await self.transport.send(framing.encode_frame(messages.encode(msg)))

    async def _send_session(self, msg: dict[int, Any]) -> int:
        self._host_seq += 1
        msg[K_SEQ] = self._host_seq
        auth.sign(msg, self._session_key)
        await self._send_msg(msg)
        return self._host_seq

    async def _send_sync(self) -> None:
        self._last_sync = time.monotonic()
        # The leading 0x00 flushes whatever partial frame the device holds (SPEC §2).
        await self.transport.send(b"\x00" + framing.encode_frame(messages.encode({K_TYPE: 3})))

    async def _syncer(self) -> None:
        while not self._welcomed.is_set():
            if time.monotonic() - self._last_sync >= _SYNC_INTERVAL_S:
                await self._send_sync()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SYNC_INTERVAL_S):
                    await self._welcomed.wait()

    async def _acker(self) -> None:
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            state = self.state
            if state is None or not self._session_key or state.session is not self:
                continue
            stored = state.stored
            if stored != self._acked_sent or self._dupack:
                self._dupack = False
                self._acked_sent = stored
                self._host_seq += 1
                ack = {K_TYPE: messages.ACK, messages.AK_COUNTER: stored, K_SEQ: self._host_seq}
                frame = encode_frame(encode_session(ack, self._session_key))
                await self.transport.send(frame)

    # receiving -------------------------------------------------------------------------------

    async def _reader(self) -> None:
        decoder = FrameDecoder()
        while True:
            data = await self.transport.receive()
            for item in decoder.feed(data):
                if isinstance(item, DecodeError):
                    self._reject("malformed_frame", item, None, limited=True)
                else:
                    self.frames += 1
                    await self._on_payload(item)

    def _reject(
        self,
        reason: str,
        error: DecodeError | str,
        data: bytes | None,
        *,
        limited: bool = False,
        device: str | None = None,
    ) -> None:
        if isinstance(error, DecodeError):
            detail = f"{errors.reason_name(error.reason)}: {error.detail}"
        else:
            detail = error
        alarm = True
        extra: dict[str, Any] = {}
        if limited:
            # A garbage stream yields a bad frame every few hundred bytes: each one is
            # quarantined, but the alarms are coalesced to one a second per reason.
            now = time.monotonic()
            if now - self._alarm_last.get(reason, -_ALARM_INTERVAL_S) < _ALARM_INTERVAL_S:
                self._alarm_suppressed[reason] = self._alarm_suppressed.get(reason, 0) + 1
                alarm = False
            else:
                self._alarm_last[reason] = now
                extra["suppressed_since_last"] = self._alarm_suppressed.pop(reason, 0)
        device = device or self.device
        self.gateway.quarantine(device, self.port, reason, detail, data, alarm=alarm, **extra)

    async def _on_payload(self, payload: bytes) -> None:
        msg = decode_event(payload)
        if msg is None:
            try:
                msg = messages.decode(payload)
            except DecodeError as exc:
                self._reject("undecodable", exc, payload, limited=True)
                return
        kind = msg[K_TYPE]
        if kind == messages.EVENT:
            await self._on_event(msg, payload)
        elif kind == messages.HELLO:
            await self._on_hello(msg, payload)
        elif kind in (messages.ALARM, messages.STATUS, messages.RESULT):
            self._on_session_msg(msg, payload)
        else:
            self._reject(
                "unexpected",
                f"{messages.type_name(kind)} is not a device-to-host message",
                payload,
            )

    # handshake -------------------------------------------------------------------------------

    async def _on_hello(self, msg: dict[int, Any], payload: bytes) -> None:
        device = msg[messages.HE_DEVICE]
        if msg[messages.HE_VERSION] != PROTOCOL_VERSION:
            self._reject(
                "version",
                f"{device} speaks version {msg[messages.HE_VERSION]}, "
                f"this gateway {PROTOCOL_VERSION}",
                payload,
            )
            return
        state = await self.gateway.device_state(device)
        if state is None:
            self._reject(
                "unknown_device",
                f"HELLO from unregistered device {device!r}",
                payload,
                limited=True,
            )
            return
        if not device_mac_ok(payload, state.key):
            self._reject(
                "bad_mac", f"HELLO claiming {device!r}: MAC does not verify", payload, device=device
            )
            return
        if state.session is not None and state.session is not self:
            log.warning(
                "device moved to another link",
                extra={"fields": {"device": device, "from": state.session.port, "to": self.port}},
            )
        # Let events still in the group commit land, so `acked` below is exact.
        if state.pending:
            await asyncio.gather(*state.pending.values(), return_exceptions=True)
        next_counter = msg[messages.HE_NEXT]
        if next_counter - 1 < state.stored:
            self._reject(
                "counter_rollback",
                f"HELLO says next counter {next_counter}, gateway already holds {state.stored}",
                payload,
                device=device,
            )
            return
        state.session = self
        state.accepted = state.stored
        state.last_hash = state.stored_hash
        state.pending_bytes.clear()
        self.device, self.state = device, state
        host_nonce = os.urandom(messages.NONCE_LEN)
        self._session_key = auth.session_key(state.key, msg[messages.HE_NONCE], host_nonce)
        self._host_seq = 0
        self._device_seq = 0
        self._gap_at = -1
        for fut in self._results.values():
            fut.cancel()
        self._results.clear()
        self._acked_sent = state.stored
        await self._send_session(
            {
                K_TYPE: messages.WELCOME,
                messages.WE_NONCE: host_nonce,
                messages.WE_ACKED: state.stored,
                messages.WE_TIME: now_ms(),
            }
        )
        self._welcomed.set()
        log.info(
            "session open",
            extra={
                "fields": {
                    "device": device,
                    "port": self.port,
                    "acked": state.stored,
                    "next": next_counter,
                    "boot": msg[messages.HE_BOOT],
                    "firmware": msg[messages.HE_FIRMWARE],
                }
            },
        )
        self._publish_status(
            online=True, firmware=msg[messages.HE_FIRMWARE], boot_id=msg[messages.HE_BOOT]
        )
        if self._commander is not None:
            self._commander.cancel()
        assert self._tg is not None
        self._commander = self._tg.create_task(self._commands(), name=f"{self.port}:commands")

    # events ----------------------------------------------------------------------------------

    async def _on_event(self, msg: dict[int, Any], payload: bytes) -> None:
        state = self.state
        if state is None or state.session is not self:
            # Valid-looking but outside a session (e.g. the gateway restarted mid-stream):
            # not evidence of anything wrong; the device resends after the handshake.
            if time.monotonic() - self._last_sync >= _SYNC_INTERVAL_S / 4:
                await self._send_sync()
            return
        if not device_mac_ok(payload, state.key):
            self._reject(
                "bad_mac", f"EVENT {msg[messages.EV_COUNTER]}: MAC does not verify", payload
            )
            return
        counter = msg[messages.EV_COUNTER]
        if counter <= state.accepted:
            known = state.pending_bytes.get(counter)
            if known is None:
                known = await self.gateway.db(
                    self.gateway.ledger.event_bytes, state.device, counter
                )
            if known == payload:
                # A retransmission of something we hold: ack again, store nothing.
                self.duplicates += 1
                if counter <= state.stored:
                    self._dupack = True
                    self._ack_wake.set()
            else:
                self._reject(
                    "counter_rollback",
                    f"EVENT {counter} differs from the stored event {counter} "
                    f"(gateway holds up to {state.stored})",
                    payload,
                )
            return
        if counter > state.accepted + 1:
            # A frame was lost on the way: ask for a resend once (non-advancing ack), and let
            # go-back-N bring the missing ones in order.
            self.out_of_order += 1
            if self._gap_at != state.accepted:
                self._gap_at = state.accepted
                self._dupack = True
                self._ack_wake.set()
            return
        if msg[messages.EV_PREV] != state.last_hash:
            self._reject(
                "chain_break",
                f"EVENT {counter}: prev does not match the hash of event {counter - 1}",
                payload,
            )
            return
        received = now_ms()
        digest = hashlib.sha256(payload).digest()
        gateway = self.gateway
        cose = gateway.key.sign1(
            countersign_payload(state.device, counter, payload, received, gateway.gateway_id)
        )
        state.accepted = counter
        state.last_hash = digest
        state.pending_bytes[counter] = payload
        state.pending[counter] = gateway.submit(
            event=EventRow(state.device, counter, payload, digest, cose, received),
            outbox=[(gateway.event_topic(state.device), cose, state.device, counter)],
        )

    # session messages from the device --------------------------------------------------------

    def _on_session_msg(self, msg: dict[int, Any], payload: bytes) -> None:
        name = messages.type_name(msg[K_TYPE])
        if self.state is None or not self._session_key:
            self._reject("no_session", f"{name} before any handshake on this link", payload)
            return
        try:
            auth.verify(msg, self._session_key)
        except DecodeError as exc:
            self._reject("bad_mac", exc, payload)
            return
        seq = msg[K_SEQ]
        if seq <= self._device_seq:
            self._reject("replay", f"{name} seq {seq} <= last accepted {self._device_seq}", payload)
            return
        self._device_seq = seq
        kind = msg[K_TYPE]
        if kind == messages.RESULT:
            fut = self._results.pop(msg[messages.RE_SEQ], None)
            if fut is not None and not fut.done():
                fut.set_result(msg[messages.RE_CODE])
        elif kind == messages.STATUS:
            self._publish_status(
                online=True,
                battery_mv=msg[messages.ST_BATTERY],
                backlog=msg[messages.ST_BACKLOG],
                journal_free=msg[messages.ST_FREE],
                flags=msg[messages.ST_FLAGS],
                permit_left=msg[messages.ST_PERMIT_LEFT],
                next_counter=msg[messages.ST_NEXT],
            )
        elif kind == messages.ALARM:
            gateway = self.gateway
            payload_json = gateway.alarm_payload(
                self.device,
                source="device",
                code=msg[messages.AL_CODE],
                time_s=msg[messages.AL_TIME],
                detail=msg[messages.AL_DETAIL],
                port=self.port,
            )
            gateway.submit(
                outbox=[(gateway.alarm_topic(self.device), payload_json, self.device, None)]
            )

    def _publish_status(self, **fields: Any) -> None:
        if self.device is None:
            return
        body = {"device": self.device, "port": self.port, "time_ms": now_ms(), **fields}
        self.gateway.publisher.publish_now(
            self.gateway.status_topic(self.device),
            json.dumps(body, sort_keys=True).encode(),
            retain=True,
        )

    # host commands ---------------------------------------------------------------------------

    async def command(self, msg: dict[int, Any], timeout: float = _RESULT_TIMEOUT_S) -> int:
        """Send a session command and wait for its RESULT code (matched by seq)."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        seq = self._host_seq + 1
        self._results[seq] = fut
        try:
            await self._send_session(msg)
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._results.pop(seq, None)

    async def _commands(self) -> None:
        state = self.state
        assert state is not None
        gateway = self.gateway
        try:
            code = await self.command({K_TYPE: messages.TIME, messages.TI_TIME: now_ms()})
            log.info("time set", extra={"fields": {"device": state.device, "result": code}})
        except TimeoutError:
            log.warning("no RESULT for TIME", extra={"fields": {"device": state.device}})
        while True:
            pending = await gateway.db(gateway.ledger.pending_commands, state.device)
            for cmd in pending:
                msg = self._command_message(cmd.kind, cmd.body)
                try:
                    code = await self.command(msg)
                except TimeoutError:
                    log.warning(
                        "no RESULT for command",
                        extra={"fields": {"device": state.device, "command": cmd.id}},
                    )
                    await asyncio.sleep(_COMMAND_RETRY_S)
                    break
                result_state = "done" if code == messages.R_OK else "failed"
                await asyncio.shield(gateway.submit(command_state=(cmd.id, result_state, code)))
                log.info(
                    "command result",
                    extra={
                        "fields": {
                            "device": state.device,
                            "command": cmd.id,
                            "kind": cmd.kind,
                            "code": code,
                        }
                    },
                )
            state.command_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_COMMAND_POLL_S):
                    await state.command_wake.wait()

    @staticmethod
    def _command_message(kind: str, body: dict[str, Any]) -> dict[int, Any]:
        if kind == "permit":
            return {
                K_TYPE: messages.PERMIT,
                messages.PE_ID: body["permit"],
                messages.PE_COUNT: body["count"],
                messages.PE_NOT_BEFORE: body["not_before_s"],
                messages.PE_NOT_AFTER: body["not_after_s"],
                messages.PE_OPERATOR: body.get("operator", 0),
            }
        if kind == "revoke":
            return {K_TYPE: messages.REVOKE, messages.RV_PERMIT: body["permit"]}
        raise ValueError(f"unknown command kind {kind!r}")
