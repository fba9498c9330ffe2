"""A simulated seal speaking the real protocol (sealproto) over any Transport.

Not the firmware: the firmware runs under MicroPython (sealink_sim.emulator). This peer exists for
what the firmware cannot do on purpose: drive the gateway with thousands of devices in one
process (benchmarks), and send hand-crafted bad records (tests of every rejection kind).
It follows SPEC §5: HELLO on SYNC, window of 8 events, cumulative ACK, go-back-N on timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sealink.gateway.fastpath import decode_ack, device_mac_ok
from sealink.transport.base import Transport
from sealproto import PROTOCOL_VERSION, auth, framing, messages
from sealproto.errors import DecodeError
from sealproto.messages import K_SEQ, K_TYPE
from sealproto.timers import SYNC_INTERVAL_MS

from sealink_sim.atecc import public_xy, raw_sign

__all__ = ["SimChip", "SimDevice", "make_event"]

WINDOW = 8
RTO_S = 0.5


# The order of P-256's base point (SEC 2 §2.4.2): a derived scalar is reduced below it.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class SimChip:
    """The security chip of a simulated seal: a P-256 key that only this object holds, signing
    seal digests as r || s (SPEC §4.1). The firmware's chip is modelled at the I2C command
    level in sealink_sim.atecc; this one is for the thousands of seals of a benchmark.

    `SimChip.of(device_key)` derives the key from the seal's link key, so a test registers
    both halves from one secret. An attacker in a test holds the link key but never this
    object: a test of forgery builds its own SimChip (another key), as a thief of the
    gateway's files or the seal's flash would have to."""

    def __init__(self, private: ec.EllipticCurvePrivateKey | None = None) -> None:
        self._key = private or ec.generate_private_key(ec.SECP256R1())
        self.public = public_xy(self._key)

    @classmethod
    def of(cls, device_key: bytes) -> SimChip:
        seed = hashlib.sha256(b"sealink sim chip/" + device_key).digest()
        scalar = int.from_bytes(seed, "big") % (_P256_ORDER - 1) + 1
        return cls(ec.derive_private_key(scalar, ec.SECP256R1()))

    def sign(self, digest: bytes) -> bytes:
        # RFC 6979: the same record is the same bytes on every run (a chip draws k at random;
        # the host and verifiers cannot tell, both verify alike).
        return raw_sign(self._key, digest, deterministic=True)


def make_event(
    key: bytes,
    counter: int,
    prev: bytes,
    *,
    chip: SimChip | None = None,
    boot_id: int = 1,
    kind: int = messages.KIND_IMPRESSION,
    permit: int = 0,
    operator: int = 0,
    time_s: int = 0,
    uptime_ms: int = 0,
) -> bytes:
    """The wire payload of one EVENT, signed by `chip` (SimChip.of(key) by default) and MACed
    with the link key."""
    msg: dict[int, Any] = {
        K_TYPE: messages.EVENT,
        messages.EV_COUNTER: counter,
        messages.EV_BOOT: boot_id,
        messages.EV_UPTIME: uptime_ms,
        messages.EV_TIME: time_s,
        messages.EV_KIND: kind,
        messages.EV_PERMIT: permit,
        messages.EV_OPERATOR: operator,
        messages.EV_PREV: prev,
    }
    msg[messages.EV_SIG] = (chip or SimChip.of(key)).sign(auth.seal_digest(msg))
    return messages.encode(auth.sign(msg, key))


class SimDevice:
    def __init__(
        self,
        device_id: str,
        key: bytes,
        transport: Transport,
        boot_id: int = 1,
        chip: SimChip | None = None,
    ):
        self.device_id = device_id
        self.key = key
        self.chip = chip or SimChip.of(key)
        self.transport = transport
        self.boot_id = boot_id
        self.journal: list[bytes] = []  # journal[i] is the payload of counter i + 1
        self.acked = 0
        # The serial of its enrolment certificate (HELLO key 7) and the `stored` signatures
        # the host sent, by counter (SPEC §5.11): the simulated seal does not check them.
        self.enrolment = 0
        self.proofs: dict[int, bytes] = {}
        self.welcomed = asyncio.Event()
        self.results: list[tuple[int, int]] = []  # (message type, its seq) answered
        self.commands: list[dict[int, Any]] = []
        self.errors: list[DecodeError] = []
        self._session_key = b""
        self._hello_at = -SYNC_INTERVAL_MS / 1000
        self._seq = 0
        self._host_seq = 0
        self._next_send = 1
        self._progress = asyncio.Event()
        self._acked_event = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._frames: dict[int, bytes] = {}

    @property
    def next_counter(self) -> int:
        return len(self.journal) + 1

    @property
    def last_hash(self) -> bytes:
        return hashlib.sha256(self.journal[-1]).digest() if self.journal else auth.GENESIS

    # lifecycle -------------------------------------------------------------------------------

    async def start(self) -> SimDevice:
        self._tasks = [
            asyncio.create_task(self._reader(), name=f"sim:{self.device_id}:reader"),
            asyncio.create_task(self._retransmitter(), name=f"sim:{self.device_id}:rto"),
        ]
        await self.send_hello()
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def reconnect(self, transport: Transport) -> None:
        """Carried to another link (a seal moved to another gateway): the same journal and
        counter, a new session over `transport`."""
        await self.stop()
        self.transport = transport
        await self.start()

    async def __aenter__(self) -> SimDevice:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # what a device does ----------------------------------------------------------------------

    def record(self, count: int = 1, **fields: Any) -> None:
        """Journal `count` events (not yet sent)."""
        for _ in range(count):
            self.journal.append(
                make_event(
                    self.key,
                    self.next_counter,
                    self.last_hash,
                    chip=self.chip,
                    boot_id=self.boot_id,
                    **fields,
                )
            )

    async def send_backlog(self) -> None:
        """Send what the journal holds and the window allows (as after a reconnect)."""
        # Fresh sends restart the retransmission timer: it runs from the oldest unacked send,
        # not from the last ack before the backlog was recorded.
        self._progress.set()
        await self._pump()

    async def stamp(self, count: int = 1, **fields: Any) -> None:
        self.record(count, **fields)
        await self._pump()

    async def send_hello(self, override: dict[int, Any] | None = None) -> None:
        self._nonce = os.urandom(messages.NONCE_LEN)
        msg = {
            K_TYPE: messages.HELLO,
            messages.HE_VERSION: PROTOCOL_VERSION,
            messages.HE_DEVICE: self.device_id,
            messages.HE_NONCE: self._nonce,
            messages.HE_BOOT: self.boot_id,
            messages.HE_NEXT: self.next_counter,
            messages.HE_FIRMWARE: "simdevice",
            messages.HE_ENROLMENT: self.enrolment,
        }
        msg.update(override or {})
        self.welcomed.clear()
        self._hello_at = time.monotonic()
        await self.send_payload(messages.encode(auth.sign(msg, self.key)))

    async def send_status(self, **fields: int) -> None:
        """STATUS (SPEC §4, type 7) as this device's journal stands; `fields` override."""
        body = {
            messages.ST_BATTERY: 3900,
            messages.ST_BACKLOG: len(self.journal) - self.acked,
            messages.ST_FREE: 100,
            messages.ST_FLAGS: 0,
            messages.ST_PERMIT_LEFT: 0,
            messages.ST_NEXT: self.next_counter,
        }
        for name, value in fields.items():
            body[getattr(messages, name)] = value
        await self.send_session({K_TYPE: messages.STATUS, **body})

    async def send_payload(self, payload: bytes) -> None:
        await self.transport.send(framing.encode_frame(payload))

    async def send_raw(self, data: bytes) -> None:
        await self.transport.send(data)

    async def send_session(self, msg: dict[int, Any], seq: int | None = None) -> None:
        if seq is None:
            self._seq += 1
            seq = self._seq
        msg[K_SEQ] = seq
        await self.send_payload(messages.encode(auth.sign(msg, self._session_key)))

    async def wait_acked(self, counter: int, timeout: float = 10.0) -> None:
        async def until() -> None:
            async with self._acked_event:
                await self._acked_event.wait_for(lambda: self.acked >= counter)

        async with asyncio.timeout(timeout):
            await until()

    # protocol machinery ----------------------------------------------------------------------

    async def _pump(self) -> None:
        if not self.welcomed.is_set():
            return
        frames = []
        while self._next_send <= len(self.journal) and self._next_send <= self.acked + WINDOW:
            frames.append(self.frame(self._next_send))
            self._next_send += 1
        if frames:
            # one write for the whole window, as a UART driver's buffer would carry it
            await self.transport.send(b"".join(frames))

    def frame(self, counter: int) -> bytes:
        # Frames are cached: a benchmark measures the gateway, not this peer's COBS encoder.
        frame = self._frames.get(counter)
        if frame is None:
            frame = self._frames[counter] = framing.encode_frame(self.journal[counter - 1])
        return frame

    def prepare_frames(self) -> None:
        for counter in range(1, len(self.journal) + 1):
            self.frame(counter)

    async def _retransmitter(self) -> None:
        while True:
            self._progress.clear()
            try:
                async with asyncio.timeout(RTO_S):
                    await self._progress.wait()
            except TimeoutError:
                if self.welcomed.is_set() and self.acked < len(self.journal):
                    self._next_send = self.acked + 1
                    await self._pump()

    async def _reader(self) -> None:
        decoder = framing.FrameDecoder()
        while True:
            data = await self.transport.receive()
            for item in decoder.feed(data):
                if isinstance(item, DecodeError):
                    self.errors.append(item)
                    continue
                try:
                    # ACKs are most of what a device reads: checked at C speed (same result)
                    ack = decode_ack(item)
                    if ack is not None and self._session_key:
                        if device_mac_ok(item, self._session_key) and ack[K_SEQ] > self._host_seq:
                            self._host_seq = ack[K_SEQ]
                            await self._on_ack_message(ack)
                        continue
                    await self._on_message(messages.decode(item))
                except DecodeError as exc:
                    # e.g. a WELCOME answering an older HELLO (keyed to its nonce): ignore
                    self.errors.append(exc)

    async def _on_message(self, msg: dict[int, Any]) -> None:
        kind = msg[K_TYPE]
        if kind == messages.SYNC:
            # SPEC §5.2: a SYNC soon after a HELLO is ignored, so that the gateway's SYNC at
            # link open and the seal's own HELLO at start do not make two handshakes.
            if time.monotonic() - self._hello_at >= SYNC_INTERVAL_MS / 1000:
                await self.send_hello()
            return
        if kind == messages.WELCOME:
            key = auth.session_key(self.key, self._nonce, msg[messages.WE_NONCE])
            auth.verify(msg, key)
            self._session_key, self._seq, self._host_seq = key, 0, msg[K_SEQ]
            self._keep_proof(msg[messages.WE_ACKED], msg[messages.WE_STORED])
            await self._on_ack(msg[messages.WE_ACKED])
            self._next_send = self.acked + 1
            # SPEC §5.2: STATUS first; it also confirms the handshake to the host.
            await self.send_status()
            self.welcomed.set()
            await self._pump()
            return
        if not self._session_key:
            return
        auth.verify(msg, self._session_key)
        if msg[K_SEQ] <= self._host_seq:
            return
        self._host_seq = msg[K_SEQ]
        if kind == messages.ACK:
            await self._on_ack_message(msg)
        elif kind in (messages.PERMIT, messages.REVOKE, messages.TIME, messages.ENROL):
            self.commands.append(msg)
            if kind == messages.ENROL:
                self.enrolment = msg[messages.EN_SERIAL]
            await self.send_session(
                {
                    K_TYPE: messages.RESULT,
                    messages.RE_SEQ: msg[K_SEQ],
                    messages.RE_CODE: messages.R_OK,
                }
            )

    def _keep_proof(self, counter: int, proof: bytes) -> None:
        if proof:
            self.proofs[counter] = proof

    async def _on_ack_message(self, msg: dict[int, Any]) -> None:
        counter = msg[messages.AK_COUNTER]
        self._keep_proof(counter, msg[messages.AK_STORED])
        if counter == self.acked and self.acked < len(self.journal):
            self._next_send = self.acked + 1  # fast retransmit
        await self._on_ack(counter)
        await self._pump()

    async def _on_ack(self, counter: int) -> None:
        if counter > self.acked:
            self.acked = counter
            self._progress.set()
        async with self._acked_event:
            self._acked_event.notify_all()
