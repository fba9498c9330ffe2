"""The host side of one device link (protocol/SPEC.md §5), sans-IO: feed bytes, get actions.

    machine = LinkMachine(port, registry); machine.start(now_ms)
    machine.feed(data, now_ms)       # bytes from the transport
    machine.committed(now_ms)        # the group commit stored events: maybe an ACK
    machine.tick(now_ms)             # at deadline_ms(): SYNC backoff, command resends

Every decision of §5 is made here; the session object only moves bytes and carries out the
actions (`actions.py`). Order of checks per frame: CRC (framing), strict decode, type and
direction, the MAC (device key for HELLO/EVENT, session key then seq for the rest), then for an
EVENT counter continuity, duplicates and the chain. A link made for one device (a ble:// port,
SPEC §6) refuses a HELLO of any other before checking it, and hangs up.

Freshness: a HELLO proves nothing about liveness (anyone can replay a recorded one), so it
only opens a *pending* handshake answered by WELCOME. The session becomes live, moves to this
link and has its rollback checks applied when the device's first session message verifies
under the new session key: only the holder of the device key can make that key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from sealproto import auth, errors, framing, messages
from sealproto.errors import DecodeError
from sealproto.messages import K_SEQ, K_TYPE
from sealproto.timers import DUP_ACK_HOLDOFF_MS

from sealink.crypto.ackkey import AckKey
from sealink.crypto.enrolment import stored_signature
from sealink.errors import TpmError
from sealink.gateway import checks
from sealink.gateway.actions import (
    Action,
    Alarm,
    CompareStored,
    Displace,
    Hangup,
    Reject,
    Send,
    SessionOpen,
    Status,
    Store,
)
from sealink.gateway.commanding import CommandQueue
from sealink.gateway.fastpath import (
    FrameDecoder,
    decode_event,
    device_mac_ok,
    encode_frame,
    encode_session,
)
from sealink.gateway.handshake import Handshake, NoAnswer, answer_hello, stored_proof
from sealink.gateway.limits import RejectLimiter, Rejector, SeenOnce, SyncPacer
from sealink.gateway.registry import DeviceRegistry, DeviceState
from sealink.ledger import Command
from sealink.ledger import now_ms as wall_clock_ms

__all__ = ["LinkMachine"]

# The leading 0x00 flushes whatever partial frame the device holds (SPEC §2).
_SYNC_WIRE = b"\x00" + framing.encode_frame(messages.encode({K_TYPE: messages.SYNC}))
_EVIDENCE_SEEN_MAX = 4096


class LinkMachine:
    def __init__(
        self,
        port: str,
        registry: DeviceRegistry,
        *,
        wall_ms: Callable[[], int] = wall_clock_ms,
        nonce: Callable[[int], bytes] = os.urandom,
        limiter: RejectLimiter | None = None,
        ack_key: AckKey | None = None,
        device: str | None = None,
    ) -> None:
        # Timers and rate limits run on the caller's monotonic `now_ms`; `wall_ms` is only
        # what the device's clock is set to (WELCOME, TIME), so a host clock jump moves no timer.
        self._wall_ms = wall_ms
        self.port = port
        # The one device this link may carry (a ble://<device id> port's); None: any.
        self._for_device = device
        self._registry = registry
        self._nonce = nonce
        # Signs that records are stored, so the seal may free them (SPEC §5.11); None: the seal
        # keeps everything (its journal fills and its lock shuts).
        self._ack_key = ack_key
        self._stored_proof = (0, b"")
        # The serial of the certificate the seal holds, or is being handed, this session.
        self._enrolment = 0
        self._rejector = Rejector(registry, limiter or RejectLimiter())
        self._decoder = FrameDecoder()
        self._out: list[Action] = []
        self._pending: Handshake | None = None
        self.state: DeviceState | None = None
        self._key = b""
        self._host_seq = self._device_seq = 0
        self._hello_boot = 0
        self._acked_sent = -1
        self._gap_flag = False
        self._dup_ack_ms: int | None = None
        self._sync = SyncPacer()
        # (counter, hash) of quarantined events kept: a resent backlog adds counts, not rows
        self._evidence = SeenOnce(_EVIDENCE_SEEN_MAX)
        self.commands = CommandQueue()

    @property
    def device(self) -> str | None:
        return self.state.device if self.state is not None else None

    # inputs ----------------------------------------------------------------------------------

    def start(self, now_ms: int) -> list[Action]:
        """The link just opened: flush the device's receiver and ask for a HELLO (SPEC §5.9)."""
        self._send_sync(now_ms)
        return self._take()

    def feed(self, data: bytes, now_ms: int) -> list[Action]:
        return self.feed_frames(self.frames(data, now_ms), now_ms)

    def frames(self, data: bytes, now_ms: int) -> list[bytes]:
        """`data`'s frames (malformed ones rejected) for feed_frames; SealKey checks ahead."""
        payloads = []
        for item in self._decoder.feed(data):
            if isinstance(item, DecodeError):
                self._reject("malformed_frame", checks.describe(item), None, None, now_ms)
            else:
                payloads.append(item)
        return payloads

    def feed_frames(self, payloads: list[bytes], now_ms: int) -> list[Action]:
        for payload in payloads:
            self._on_payload(payload, now_ms)
        return self._take()

    def committed(self, now_ms: int) -> list[Action]:
        self._maybe_ack(now_ms)
        return self._take()

    def proof_due(self) -> tuple[Callable[[], bytes], int] | None:
        """With a key slow to sign (a TPM), the signature the ACK after a commit needs, as
        (work for a worker thread, counter): the session hands the result to `proved` before
        `committed`, so the event loop never waits on the key. None: nothing to sign ahead."""
        state, key = self.state, self._ack_key
        if state is None or key is None or not key.signs_slowly or not self._key:
            return None
        counter, head = state.stored, state.stored_hash
        if (
            state.quarantine is not None
            or head is None
            or counter <= self._acked_sent
            or self._stored_proof[0] == counter
        ):
            return None
        device = state.device
        return (lambda: stored_signature(key, device, counter, head)), counter

    def proved(self, counter: int, proof: bytes) -> None:
        """The signature `proof_due` asked for; the next ACK of `counter` carries it."""
        self._stored_proof = (counter, proof)

    def tick(self, now_ms: int) -> list[Action]:
        if self.state is None and self._sync.periodic(now_ms):
            self._out.append(Send(_SYNC_WIRE))
        self._pump_commands(now_ms)
        return self._take()

    def deadline_ms(self) -> int | None:
        """When `tick` has something to do next (None: only an input can change anything)."""
        if self.state is None:
            return self._sync.due_ms
        return self.commands.deadline_ms() if self._key else None

    def offer_commands(self, commands: list[Command], now_ms: int) -> list[Action]:
        state = self.state
        if state is None:
            return []
        enrol = self._newer_enrolment(state)
        if enrol is not None:
            self.commands.enrol(enrol)
        self.commands.offer(commands, hold_permits=state.quarantine is not None)
        self._pump_commands(now_ms)
        return self._take()

    def displaced(self) -> None:
        """The session was confirmed on another link: no ACKs, no commands here until HELLO."""
        self.state = None
        self._key = b""

    def closed(self) -> None:
        if self.state is not None:
            self._registry.disown(self.state, self.port)
        self.state = None
        self._pending = None

    def stored_bytes(
        self, device: str, counter: int, payload: bytes, stored: bytes | None, now_ms: int
    ) -> list[Action]:
        """Answer to CompareStored: a retransmission of stored event `counter`, or a fork."""
        state = self.state
        if state is None or state.device != device:
            return []
        if stored == payload:
            self._duplicate(counter, now_ms)
        elif stored is None:
            # Inside a gap an operator adopted: the seal still had the record the ledger lost.
            self._reject("in_adopted_gap", f"EVENT {counter}", device, payload, now_ms)
        else:
            detail = f"EVENT {counter} differs from the stored event {counter}"
            self._quarantine(state, "counter_rollback", detail, payload, now_ms)
        return self._take()

    # dispatch --------------------------------------------------------------------------------

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _on_payload(self, payload: bytes, now_ms: int) -> None:
        msg = decode_event(payload)
        if msg is None:
            try:
                msg = messages.decode(payload)
            except DecodeError as exc:
                self._reject("undecodable", checks.describe(exc), self.device, payload, now_ms)
                return
        kind = msg[K_TYPE]
        if kind == messages.EVENT:
            self._on_event(msg, payload, now_ms)
        elif kind == messages.HELLO:
            self._on_hello(msg, payload, now_ms)
        elif kind in (messages.ALARM, messages.STATUS, messages.RESULT):
            self._on_session_msg(msg, payload, now_ms)
        else:
            detail = f"{messages.type_name(kind)} is not a device-to-host message"
            self._reject("unexpected", detail, self.device, payload, now_ms)

    # handshake (SPEC §5.2) -------------------------------------------------------------------

    def _on_hello(self, msg: dict[int, Any], payload: bytes, now_ms: int) -> None:
        device = msg[messages.HE_DEVICE]
        if self._for_device is not None and device != self._for_device:
            # A search by advertised name found another seal (one copying the name, or a
            # shortened name that begins several ids), registered or not, MAC valid or not: no
            # WELCOME, and the link goes, so that the port looks for its own seal (SPEC §6).
            detail = f"HELLO of {device!r} on the link for {self._for_device!r}"
            self._reject("wrong_device", detail, None, payload, now_ms)
            self._out.append(Hangup(detail))
            return
        nonce = self._nonce(messages.NONCE_LEN)
        answer = answer_hello(self._registry, msg, payload, nonce, self._wall_ms(), self._prove)
        if isinstance(answer, NoAnswer):
            self._reject(answer.reason, answer.detail, None, payload, now_ms)
            return
        if self._pending is not None:
            # A lost WELCOME, or a replay by someone without the key: counted like any
            # rejection, so a flood of replayed HELLOs makes the link noisy (FloodMeter).
            detail = f"HELLO of {self._pending.state.device} replaced, never confirmed"
            self._reject("unconfirmed_hello", detail, None, self._pending.hello, now_ms)
        self._pending = answer
        self._out.append(Send(answer.welcome))

    def _confirm(self, hs: Handshake, now_ms: int) -> None:
        state = hs.state
        self._pending = None
        previous = self._registry.claim(state, self.port)
        if previous is not None:
            self._out.append(Displace(state.device, previous))
        self.state = state
        self._key = hs.key
        self._host_seq, self._device_seq = 1, 0
        self._hello_boot = hs.boot_id
        self._acked_sent = hs.acked
        self._stored_proof = (0, b"")
        self._gap_flag = False
        self._dup_ack_ms = None
        self._evidence.clear()
        self._sync.session_opened()
        self._out.append(
            SessionOpen(state.device, hs.boot_id, hs.next_counter, hs.acked, hs.firmware)
        )
        detail = checks.rollback(state, hs.next_counter, hs.boot_id)
        if detail is not None:
            self._quarantine(state, "counter_rollback", detail, None, now_ms)
        else:
            self._registry.see_boot(state, hs.boot_id)
            if state.quarantine is not None:
                q = state.quarantine
                detail = f"{q.reason}: {q.detail}"
                self._out.append(
                    Alarm(state.device, "quarantined", detail, {"since_ms": q.since_ms})
                )
        self._enrolment = hs.enrolment
        self.commands.start(self._wall_ms(), self._newer_enrolment(state))

    def _newer_enrolment(self, state: DeviceState) -> dict[int, Any] | None:
        """The ENROL of a certificate above the serial the seal holds (HELLO key 7), once a
        session: at its start, or when one is kept during it (a move by the fleet, §11.6)."""
        cert = state.enrolment
        if cert is None or cert.serial <= self._enrolment:
            return None
        self._enrolment = cert.serial
        return cert.message()

    # events (SPEC §5.4) ----------------------------------------------------------------------

    def _on_event(self, msg: dict[int, Any], payload: bytes, now_ms: int) -> None:
        state = self.state
        counter = msg[messages.EV_COUNTER]
        if state is None or not self._key:
            self._no_session(f"EVENT {counter}", payload, now_ms)
            return
        if not device_mac_ok(payload, state.key):
            detail = f"EVENT {counter}: MAC does not verify"
            self._quarantine(state, "bad_mac", detail, payload, now_ms)
            return
        if state.quarantine is not None:
            self._keep_evidence(state, counter, payload, now_ms)
            return
        if counter <= state.accepted:
            recent = state.recent.get(counter)
            if recent is not None and recent[0] == payload:
                self._duplicate(counter, now_ms)
            elif recent is None and counter <= state.stored:
                self._out.append(CompareStored(state.device, counter, payload))
            else:
                detail = f"EVENT {counter} differs from the accepted event {counter}"
                self._quarantine(state, "counter_rollback", detail, payload, now_ms)
            return
        if counter > state.accepted + 1:
            # A frame was lost on the way: ask for a resend once (a non-advancing ACK) and let
            # the device go back to it.
            if not self._gap_flag:
                self._gap_flag = True
                self._send_ack(state.stored)
            return
        fault = checks.event_fault(state, msg, payload, self._hello_boot)
        if fault is not None:
            self._quarantine(state, fault[0], fault[1], payload, now_ms)
            return
        digest = auth.record_hash(payload)
        self._registry.accept(state, counter, payload, digest, msg[messages.EV_BOOT])
        self._gap_flag = False
        self._out.append(Store(state.device, counter, payload, digest))
        alarm = checks.record_alarm(msg)
        if alarm is not None:
            self._out.append(Alarm(state.device, "", "", alarm))

    def _duplicate(self, counter: int, now_ms: int) -> None:
        state = self.state
        if state is None or counter > state.stored or state.quarantine is not None:
            return  # in the commit now: its ACK follows the commit
        last = self._dup_ack_ms
        if last is not None and now_ms - last < DUP_ACK_HOLDOFF_MS:
            return
        self._dup_ack_ms = now_ms
        self._send_ack(state.stored)

    def _keep_evidence(self, state: DeviceState, counter: int, payload: bytes, now_ms: int) -> None:
        if not self._evidence.first((counter, auth.record_hash(payload))):
            return
        reason = state.quarantine.reason if state.quarantine is not None else "?"
        detail = f"EVENT {counter} of a quarantined device ({reason})"
        self._reject("quarantined_event", detail, state.device, payload, now_ms)

    # acknowledgements ------------------------------------------------------------------------

    def _maybe_ack(self, now_ms: int) -> None:
        state = self.state
        if state is None or not self._key or state.quarantine is not None:
            return
        if state.stored > self._acked_sent:
            self._send_ack(state.stored)

    def _prove(self, state: DeviceState, counter: int) -> bytes:
        try:
            return stored_proof(self._ack_key, state, counter)
        except TpmError as exc:
            # Unsigned, the ACK or WELCOME still moves the seal's window and frees nothing
            # (§5.11); the next one asks the TPM again. Alarms coalesce per link and reason.
            self._out.append(Alarm(state.device, "ack_key_fault", str(exc)))
            return b""

    def _send_ack(self, counter: int) -> None:
        state = self.state
        if state is None or state.quarantine is not None:
            return
        self._acked_sent = max(self._acked_sent, counter)
        if self._stored_proof[0] != counter:
            # A repeated ACK (a gap, a duplicate) carries the signature made for it once.
            proof = self._prove(state, counter)
            self._stored_proof = (counter if proof else 0, proof)
        proof = self._stored_proof[1]
        self._send_session(
            {K_TYPE: messages.ACK, messages.AK_COUNTER: counter, messages.AK_STORED: proof}
        )

    def _send_session(self, msg: dict[int, Any]) -> int:
        self._host_seq += 1
        msg[K_SEQ] = self._host_seq
        self._out.append(Send(encode_frame(encode_session(msg, self._key))))
        return self._host_seq

    # session messages from the device --------------------------------------------------------

    def _on_session_msg(self, msg: dict[int, Any], payload: bytes, now_ms: int) -> None:
        name = messages.type_name(msg[K_TYPE])
        hs = self._pending
        if hs is not None and hs.confirmed_by(msg):
            self._confirm(hs, now_ms)
        if self.state is None or not self._key:
            self._no_session(name, payload, now_ms)
            return
        try:
            self._device_seq = auth.accept(msg, self._key, self._device_seq)
        except DecodeError as exc:
            if exc.reason == errors.REPLAY:
                self._reject("replay", checks.describe(exc), self.device, payload, now_ms)
            else:
                # Expected around a re-handshake (a message of the old session): counted only.
                self._out.append(
                    Reject("session_mac", checks.describe(exc), self.device, None, False, None)
                )
            return
        kind = msg[K_TYPE]
        if kind == messages.RESULT:
            self._out += self.commands.on_result(self.device, msg, now_ms, self._send_session)
        elif kind == messages.STATUS:
            self._on_status(msg, now_ms)
        else:
            self._out.append(Alarm(self.device, "", "", checks.device_alarm(msg)))

    def _on_status(self, msg: dict[int, Any], now_ms: int) -> None:
        state = self.state
        assert state is not None
        ahead = checks.seal_ahead(state, msg)
        if ahead is not None:
            self._quarantine(state, "ahead_of_ledger", ahead[1], None, now_ms, ahead_acked=ahead[0])
        self._out.append(Status(state.device, checks.status_fields(state, msg)))

    def _pump_commands(self, now_ms: int) -> None:
        if self.state is not None and self._key:
            self._out += self.commands.pump(self.device, now_ms, self._send_session)

    # rejections ------------------------------------------------------------------------------

    def _no_session(self, what: str, payload: bytes, now_ms: int) -> None:
        # Valid-looking but outside a session (the gateway restarted mid-stream): not evidence
        # of anything wrong; the device says HELLO again on the SYNC.
        if self._sync.may_answer(now_ms):
            self._send_sync(now_ms)
        self._reject("no_session", f"{what} before a handshake on this link", None, None, now_ms)

    def _send_sync(self, now_ms: int) -> None:
        self._sync.sent(now_ms)
        self._out.append(Send(_SYNC_WIRE))

    def _reject(
        self, reason: str, detail: str, device: str | None, data: bytes | None, now_ms: int
    ) -> None:
        self._out.append(self._rejector.reject(reason, detail, device, data, now_ms))

    def _quarantine(
        self,
        state: DeviceState,
        reason: str,
        detail: str,
        data: bytes | None,
        now_ms: int,
        *,
        ahead_acked: int | None = None,
    ) -> None:
        """Sticky: no ACK for this device until an operator releases it (SPEC §5.8)."""
        self._out.append(
            self._rejector.quarantine(state, reason, detail, data, now_ms, ahead_acked)
        )
