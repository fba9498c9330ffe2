"""One device link's I/O: bytes in and out of a transport, actions carried out.

The decisions are the link machine's (`machine.LinkMachine`, sans-IO). Two tasks drive it: the
reader feeds it whatever the transport returns, and the timer wakes it at its next deadline or
when the service has news (a commit, pending commands, a displacement). Both run on the event
loop's thread, so the machine is never entered twice at once.

Fairness: the reader yields to the loop after every chunk, and a link that produces nothing
but rejected input is read no faster than a serial line would deliver it (`limits.FloodMeter`),
so one port flooding bytes cannot hold the loop while another port's events wait
(`make bench`: the `flood` lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sealink.errors import TpmError, TransportError
from sealink.gateway.actions import (
    Action,
    Alarm,
    CommandDone,
    CompareStored,
    Displace,
    Hangup,
    Reject,
    Send,
    SessionOpen,
    Status,
    Store,
)
from sealink.gateway.fastpath import seal_signature
from sealink.gateway.limits import FloodMeter
from sealink.gateway.machine import LinkMachine
from sealink.ledger import Command
from sealink.transport import PicksPeer, Transport

__all__ = ["LinkHost", "Session"]

# Seal signatures are checked here, off the event loop (OpenSSL releases the GIL). Three
# threads on two cores: a finished verify waits to take the GIL back, and the third keeps one
# more in flight meanwhile, which `make bench` (ingest) measured faster than two.
_VERIFIERS = ThreadPoolExecutor(max_workers=3, thread_name_prefix="seal-verify")
# Acknowledgement signatures of a key in a TPM (LinkMachine.proof_due): one TPM, one at a time.
_SIGNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ack-sign")


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class LinkHost(Protocol):
    """What a session needs from the service that runs it."""

    def store(self, port: str, action: Store) -> None: ...
    def reject(self, port: str, action: Reject) -> None: ...
    def alarm(self, port: str, action: Alarm) -> None: ...
    def status(self, port: str, action: Status) -> None: ...
    def session_open(self, session: Session, action: SessionOpen) -> None: ...
    def displace(self, action: Displace) -> None: ...
    def command_done(self, action: CommandDone) -> None: ...
    async def stored_event(self, device: str, counter: int) -> bytes | None: ...


class Session:
    def __init__(self, host: LinkHost, transport: Transport, machine: LinkMachine) -> None:
        self.host = host
        self.transport = transport
        self.machine = machine
        self.port = transport.name
        self._wake = asyncio.Event()
        self._committed = False
        self._displaced = False
        self._commands: list[Command] | None = None
        # When the link last brought anything (monotonic ms), and whether the service has
        # published the seal offline for its silence since (SPEC §11.2: liveness).
        self.heard_ms = monotonic_ms()
        self.silent = False

    @property
    def device(self) -> str | None:
        return self.machine.device

    async def serve(self) -> None:
        """Run until the link fails, or the machine hangs it up (TransportError)."""
        await self._run(self.machine.start(monotonic_ms()))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._timer(), name=f"{self.port}:timer")
            await self._reader()

    def closed(self) -> None:
        self.machine.closed()

    # news from the service (run by the timer task) ---------------------------------------------

    def committed(self) -> None:
        self._committed = True
        self._wake.set()

    def offer_commands(self, commands: list[Command]) -> None:
        self._commands = commands
        self._wake.set()

    def displace(self) -> None:
        self._displaced = True
        self._wake.set()

    # tasks -----------------------------------------------------------------------------------

    async def _reader(self) -> None:
        machine, flood = self.machine, FloodMeter()
        while True:
            data = await self.transport.receive()
            self.heard_ms = monotonic_ms()
            frames = machine.frames(data, self.heard_ms)
            key = machine.state.seal_key if machine.state is not None else None
            if key is not None:
                pairs = [p for p in map(seal_signature, frames) if p is not None]
                if pairs:
                    await asyncio.get_running_loop().run_in_executor(
                        _VERIFIERS, key.prefetch, pairs
                    )
            actions = machine.feed_frames(frames, monotonic_ms())
            flood.observe(actions)
            await self._run(actions)
            # Let every other link and the committer run between two chunks of this one; a
            # link that sends nothing but rejected input is read no faster than a UART.
            await asyncio.sleep(flood.throttle_s(len(data)))

    async def _timer(self) -> None:
        machine = self.machine
        while True:
            deadline = machine.deadline_ms()
            if deadline is None:
                await self._wake.wait()
            else:
                delay_s = max(0, deadline - monotonic_ms()) / 1000
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await self._wake.wait()
            self._wake.clear()
            now = monotonic_ms()
            if self._displaced:
                self._displaced = False
                machine.displaced()
            if self._committed:
                self._committed = False
                await self._prove_ahead()
                await self._run(machine.committed(monotonic_ms()))
            commands, self._commands = self._commands, None
            if commands is not None:
                await self._run(machine.offer_commands(commands, now))
            await self._run(machine.tick(now))

    async def _prove_ahead(self) -> None:
        due = self.machine.proof_due()
        if due is None:
            return
        sign, counter = due
        try:
            proof = await asyncio.get_running_loop().run_in_executor(_SIGNER, sign)
        except TpmError:
            return  # the ACK then asks the TPM on the loop, and alarms if it fails again
        self.machine.proved(counter, proof)

    # carrying out actions --------------------------------------------------------------------

    async def _run(self, actions: list[Action]) -> None:
        host, port = self.host, self.port
        for action in actions:
            match action:
                case Send(data):
                    await self.transport.send(data)
                case Store():
                    host.store(port, action)
                case Reject():
                    host.reject(port, action)
                case Alarm():
                    host.alarm(port, action)
                case Status():
                    host.status(port, action)
                case SessionOpen():
                    host.session_open(self, action)
                case Displace():
                    host.displace(action)
                case CommandDone():
                    host.command_done(action)
                case Hangup(detail):
                    if isinstance(self.transport, PicksPeer):
                        await self.transport.refuse_peer()
                    raise TransportError(f"{port}: {detail}")
                case CompareStored(device, counter, payload):
                    stored = await host.stored_event(device, counter)
                    now = monotonic_ms()
                    await self._run(
                        self.machine.stored_bytes(device, counter, payload, stored, now)
                    )
