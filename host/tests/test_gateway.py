"""The gateway end to end over a real pty and a real Mosquitto, with a simulated seal.

The simulated seal (sealink_sim.simdevice) speaks the real protocol through sealproto; it stands
in for the firmware where a test needs records the firmware never makes on purpose (bad MACs,
broken chains, replays). The firmware itself is covered by test_emulated.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Awaitable, Callable

import pytest
from conftest import DEVICE, GatewayFiles, PtyLink, run, running, until
from sealink.cli.events import export_rows
from sealink.config import PortConfig
from sealink.errors import LedgerError
from sealink.gateway.service import Gateway
from sealink.ledger.sqlite import Ledger
from sealink_sim.broker import Mosquitto
from sealink_sim.observer import Observer
from sealink_sim.ptylink import open_pty_link
from sealink_sim.simdevice import SimChip, SimDevice, make_event
from sealink_verify import verify_export
from sealproto import messages
from sealproto.messages import K_TYPE


def _serial_config(files: GatewayFiles, broker: Mosquitto, link: PtyLink):  # type: ignore[no-untyped-def]
    return files.config(broker.port, ports=(PortConfig(link.host_path),))


async def _welcomed(sim: SimDevice) -> None:
    await asyncio.wait_for(sim.welcomed.wait(), 10)


def test_events_reach_mqtt_countersigned_and_acked_after_commit(
    files: GatewayFiles, broker: Mosquitto, observer: Observer, pty_link: PtyLink
) -> None:
    key = files.device_keys[DEVICE]

    async def body() -> None:
        async with (
            running(_serial_config(files, broker, pty_link)) as gateway,
            SimDevice(DEVICE, key, pty_link.device_end) as sim,
        ):
            await _welcomed(sim)
            await sim.stamp(30)
            await sim.wait_acked(30)
            # An ack means stored: the ledger holds every acked event, byte for byte.
            stored = await gateway.db(lambda: list(gateway.ledger.events(DEVICE)))
            assert [e["event"] for e in stored] == sim.journal
            assert sim.commands and sim.commands[0][K_TYPE] == messages.TIME

    run(body())
    tally = observer.wait_for(DEVICE, 30, timeout=15)
    assert (tally.verified, tally.invalid, tally.chain_breaks, tally.lost) == (30, 0, 0, 0)
    assert observer.problems == []


def _bad_mac(sim: SimDevice) -> Awaitable[None]:
    return sim.send_payload(make_event(os.urandom(32), sim.next_counter, sim.last_hash))


async def _counter_rollback(sim: SimDevice) -> None:
    # counter 2 again, correctly MACed, but not the event 2 the gateway stored
    prev = __import__("hashlib").sha256(sim.journal[0]).digest()
    await sim.send_payload(make_event(sim.key, 2, prev, operator=99))


def _bad_signature(sim: SimDevice) -> Awaitable[None]:
    # The link key is right (a copy of the gateway's files, or of the seal's flash, holds it);
    # the chip is not the seal's.
    forger = SimChip.of(b"a chip that is not the seal's")
    return sim.send_payload(make_event(sim.key, sim.next_counter, sim.last_hash, chip=forger))


def _chain_break(sim: SimDevice) -> Awaitable[None]:
    return sim.send_payload(make_event(sim.key, sim.next_counter, b"\x42" * 32))


async def _replay(sim: SimDevice) -> None:
    status = {
        K_TYPE: messages.STATUS,
        messages.ST_BATTERY: 3300,
        messages.ST_BACKLOG: 0,
        messages.ST_FREE: 100,
        messages.ST_FLAGS: 0,
        messages.ST_PERMIT_LEFT: 0,
        messages.ST_NEXT: sim.next_counter,
    }
    await sim.send_session(dict(status), seq=500)
    await sim.send_session(dict(status), seq=500)


def _garbage(seed: int) -> Callable[[SimDevice], Awaitable[None]]:
    def send(sim: SimDevice) -> Awaitable[None]:
        rng = random.Random(seed)
        noise = bytes(rng.getrandbits(8) for _ in range(4000))
        return sim.send_raw(noise + b"\x00")

    return send


_QUARANTINING = {"bad_mac", "bad_signature", "counter_rollback", "chain_break"}


@pytest.mark.parametrize(
    "reason",
    ["bad_mac", "bad_signature", "counter_rollback", "chain_break", "replay", "garbage"],
)
def test_each_bad_record_is_quarantined_alarmed_and_never_published(
    reason: str,
    seed: int,
    files: GatewayFiles,
    broker: Mosquitto,
    observer: Observer,
    pty_link: PtyLink,
) -> None:
    inject = {
        "bad_mac": _bad_mac,
        "bad_signature": _bad_signature,
        "counter_rollback": _counter_rollback,
        "chain_break": _chain_break,
        "replay": _replay,
        "garbage": _garbage(seed),
    }[reason]
    expected = {"garbage": ("malformed_frame", "undecodable")}.get(reason, (reason,))
    key = files.device_keys[DEVICE]

    async def body() -> list[str]:
        async with (
            running(_serial_config(files, broker, pty_link)) as gateway,
            SimDevice(DEVICE, key, pty_link.device_end) as sim,
        ):
            await _welcomed(sim)
            await sim.stamp(3)
            await sim.wait_acked(3)
            await inject(sim)
            rows = await _quarantine_rows(gateway, expected)
            await sim.stamp(2)
            if reason in _QUARANTINING:
                # Sticky (SPEC §5.8): the genuine events that follow are kept as evidence and
                # not acked, until an operator releases the device.
                await _quarantine_rows(gateway, ("quarantined_event",))
                stored = await gateway.db(lambda: list(gateway.ledger.events(DEVICE)))
                assert (sim.acked, len(stored)) == (3, 3)
                await gateway.db(gateway.ledger.release, DEVICE, "qa", "cause understood")
            # The link still works, and the bad record was not acked or stored as valid.
            await sim.wait_acked(5)
            stored = await gateway.db(lambda: list(gateway.ledger.events(DEVICE)))
            assert [e["event"] for e in stored] == sim.journal
            return rows

    reasons = run(body())
    # A HELLO answered by a WELCOME and then repeated (the seal also answers the gateway's
    # SYNC at link open) is counted as unconfirmed_hello: normal, never alarmed.
    assert set(reasons) - {"quarantined_event", "unconfirmed_hello"} <= set(expected) and reasons
    tally = observer.wait_for(DEVICE, 5, timeout=15)
    observer.wait_until(lambda o: _alarms(o) >= 1, 15, "an alarm")
    assert (tally.verified, tally.invalid, tally.conflicts, tally.chain_breaks) == (5, 0, 0, 0)


def _alarms(observer: Observer) -> int:
    return sum(t.alarms for t in observer.devices.values())


async def _quarantine_rows(gateway: Gateway, reasons: tuple[str, ...]) -> list[str]:
    found: list[str] = []

    async def poll() -> bool:
        rows = await gateway.db(gateway.ledger.quarantined)
        found[:] = [r.reason for r in rows]
        return any(r in reasons for r in found)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not await poll():
        assert loop.time() < deadline, f"no quarantine row {reasons}; have {found}"
        await asyncio.sleep(0.02)
    return found


def test_unknown_device_is_quarantined_and_never_welcomed(
    files: GatewayFiles, broker: Mosquitto, observer: Observer, pty_link: PtyLink
) -> None:
    async def body() -> list[str]:
        async with (
            running(_serial_config(files, broker, pty_link)) as gateway,
            SimDevice("seal-stranger", os.urandom(32), pty_link.device_end) as sim,
        ):
            reasons = await _quarantine_rows(gateway, ("unknown_device",))
            await asyncio.to_thread(
                observer.wait_until, lambda o: o.device("gw-test").alarms >= 1, 15, "alarm"
            )
            assert not sim.welcomed.is_set()
            return reasons

    assert "unknown_device" in run(body())
    assert "seal-stranger" not in observer.devices or observer.device("seal-stranger").verified == 0


def test_a_rolled_back_hello_is_quarantined_once_the_seal_confirms_it(
    files: GatewayFiles, broker: Mosquitto, pty_link: PtyLink
) -> None:
    key = files.device_keys[DEVICE]

    async def body() -> None:
        async with (
            running(_serial_config(files, broker, pty_link)) as gateway,
            SimDevice(DEVICE, key, pty_link.device_end) as sim,
        ):
            await _welcomed(sim)
            await sim.stamp(4)
            await sim.wait_acked(4)
            # A device whose flash was wiped: it claims to start again at counter 1.
            await sim.send_hello({messages.HE_NEXT: 1})
            await _quarantine_rows(gateway, ("counter_rollback",))
            state = gateway.registry.get(DEVICE)
            assert state is not None and state.quarantine is not None
            assert state.quarantine.reason == "counter_rollback"
            # Its WELCOME said acked 0: the seal was told to compact nothing.
            assert sim.acked == 4

    run(body())


def test_broker_down_at_start_then_back_nothing_lost(
    files: GatewayFiles, broker: Mosquitto, observer: Observer, pty_link: PtyLink
) -> None:
    key = files.device_keys[DEVICE]
    broker.stop()

    async def body() -> None:
        async with (
            running(_serial_config(files, broker, pty_link)) as gateway,
            SimDevice(DEVICE, key, pty_link.device_end) as sim,
        ):
            await _welcomed(sim)
            await sim.stamp(20)
            # Acks depend on the ledger only, never on the broker.
            await sim.wait_acked(20)
            assert gateway.publisher.published == 0
            await asyncio.to_thread(broker.start)
            await until(lambda: gateway.publisher.published >= 20, 30, "20 PUBACKs")
            await until(lambda: not len(gateway.committer), 5, "publish marks committed")
            await asyncio.sleep(0)
            unpublished = await gateway.db(gateway.ledger.unpublished_count)
            assert unpublished == 0

    run(body())
    tally = observer.wait_for(DEVICE, 20, timeout=20)
    assert (tally.verified, tally.lost, tally.invalid) == (20, 0, 0)


def test_ledger_failure_means_no_ack_then_recovery_loses_nothing(
    files: GatewayFiles,
    broker: Mosquitto,
    observer: Observer,
    pty_link: PtyLink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Mocked because a full disk cannot be made safely here: commit raises what SQLite's
    # "database or disk is full" becomes in the ledger, for as long as `failing` is set.
    failing = {"on": True, "attempts": 0}
    real_commit = Ledger.commit

    def commit(self: Ledger, batch):  # type: ignore[no-untyped-def]
        if failing["on"] and batch.events:
            failing["attempts"] += 1
            raise LedgerError("ledger: commit failed: database or disk is full")
        return real_commit(self, batch)

    monkeypatch.setattr(Ledger, "commit", commit)
    key = files.device_keys[DEVICE]

    async def body() -> None:
        async with (
            running(_serial_config(files, broker, pty_link)),
            SimDevice(DEVICE, key, pty_link.device_end) as sim,
        ):
            await _welcomed(sim)
            await sim.stamp(5)
            await until(lambda: failing["attempts"] >= 3, 20, "3 failed commits")
            assert sim.acked == 0
            failing["on"] = False
            await sim.wait_acked(5, timeout=20)

    run(body())
    tally = observer.wait_for(DEVICE, 5, timeout=15)
    assert (tally.verified, tally.invalid) == (5, 0)
    observer.wait_until(lambda o: o.device("gw-test").alarms >= 1, 15, "ledger alarm")


def test_a_ledger_alarm_made_while_the_broker_is_away_arrives_when_it_is_back(
    files: GatewayFiles,
    broker: Mosquitto,
    observer: Observer,
    pty_link: PtyLink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Mocked as in the test above (a full disk cannot be made safely here). The ledger's own
    # alarms cannot wait in its outbox: the publisher holds them until the broker answers.
    def commit(self: Ledger, batch):  # type: ignore[no-untyped-def]
        raise LedgerError("ledger: commit failed: database or disk is full")

    monkeypatch.setattr(Ledger, "commit", commit)
    key = files.device_keys[DEVICE]
    broker.stop()

    async def body() -> None:
        async with (
            running(_serial_config(files, broker, pty_link)) as gateway,
            SimDevice(DEVICE, key, pty_link.device_end) as sim,
        ):
            await _welcomed(sim)
            await sim.stamp(1)
            await until(lambda: gateway.committer.failing is not None, 20, "a failed commit")
            assert not gateway.publisher.connected
            await asyncio.to_thread(broker.start)
            await gateway.publisher.wait_connected(30)
            await asyncio.to_thread(
                observer.wait_until,
                lambda o: o.device("gw-test").alarms >= 1,
                30,
                "the ledger alarm made while the broker was away",
            )
            assert sim.acked == 0

    run(body(), timeout=120)


def test_gateway_restart_resumes_from_the_ledger(
    files: GatewayFiles, broker: Mosquitto, observer: Observer
) -> None:
    from sealink_sim.pipe import pipe_pair

    key = files.device_keys[DEVICE]
    config = files.config(broker.port)

    async def body() -> None:
        journal: list[bytes] = []
        for round_ in range(2):
            async with running(config) as gateway:
                host, dev = pipe_pair(f"pipe{round_}")
                gateway.attach(host)
                sim = SimDevice(DEVICE, key, dev)
                sim.journal = list(journal)
                sim.acked = len(journal)
                async with sim:
                    await _welcomed(sim)
                    await sim.stamp(10)
                    await sim.wait_acked(10 * (round_ + 1))
                    journal = sim.journal

    run(body())
    tally = observer.wait_for(DEVICE, 20, timeout=15)
    assert (tally.verified, tally.lost, tally.chain_breaks) == (20, 0, 0)
    status = json.loads(json.dumps(tally.status)) if tally.status else {}
    assert status.get("device") == DEVICE


class _StreamTransport:
    """The device end of a TCP connection (a serial-over-TCP server, as ser2net offers)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.name = "tcp-device"
        self._reader, self._writer = reader, writer

    @property
    def mtu(self) -> int:
        return 4096

    async def connect(self) -> None:
        return None

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def receive(self) -> bytes:
        data = await self._reader.read(4096)
        if not data:
            from sealink.errors import TransportError

            raise TransportError("tcp closed")
        return data

    async def close(self) -> None:
        self._writer.close()


def test_a_socket_url_port_works_like_a_serial_port(
    files: GatewayFiles, broker: Mosquitto, observer: Observer
) -> None:
    """pyserial's socket:// handler has no file descriptor: the threaded path of the transport."""
    key = files.device_keys[DEVICE]

    async def body() -> None:
        connected: asyncio.Queue[_StreamTransport] = asyncio.Queue()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await connected.put(_StreamTransport(reader, writer))

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = files.config(broker.port, ports=(PortConfig(f"socket://127.0.0.1:{port}"),))
        async with server, running(config):
            device_end = await asyncio.wait_for(connected.get(), 10)
            async with SimDevice(DEVICE, key, device_end) as sim:
                await _welcomed(sim)
                await sim.stamp(10)
                await sim.wait_acked(10)

    run(body())
    tally = observer.wait_for(DEVICE, 10, timeout=15)
    assert (tally.verified, tally.invalid, tally.lost) == (10, 0, 0)


def test_a_lost_frame_is_recovered_in_order_without_loss_or_duplicate(
    files: GatewayFiles, broker: Mosquitto, observer: Observer, pty_link: PtyLink
) -> None:
    key = files.device_keys[DEVICE]

    async def body() -> None:
        async with (
            running(_serial_config(files, broker, pty_link)) as gateway,
            SimDevice(DEVICE, key, pty_link.device_end) as sim,
        ):
            await _welcomed(sim)
            sim.record(6)
            # Frames 1, 2, 4, 5, 6 arrive; 3 was lost on the wire.
            for counter in (1, 2, 4, 5, 6):
                await sim.send_raw(sim.frame(counter))
            # The gateway stores 1..2, holds nothing beyond the gap, asks for a resend once;
            # go-back-N from the device fills it in order.
            await sim.wait_acked(6, timeout=10)
            stored = await gateway.db(lambda: list(gateway.ledger.events(DEVICE)))
            assert [e["counter"] for e in stored] == [1, 2, 3, 4, 5, 6]
            quarantined = await gateway.db(gateway.ledger.quarantined)
            assert quarantined == []

    run(body())
    tally = observer.wait_for(DEVICE, 6, timeout=15)
    assert (tally.verified, tally.duplicates, tally.conflicts, tally.lost) == (6, 0, 0, 0)


def test_a_seal_ahead_of_the_ledger_is_held_until_an_operator_adopts_the_gap(
    files: GatewayFiles, broker: Mosquitto, observer: Observer, pty_link: PtyLink
) -> None:
    """A seal that compacted events 1..6 with another gateway (or before this ledger was
    restored from an older copy): alarmed at once, nothing acked, until `adopt` records the
    gap as countersigned evidence; then its backlog flows and the export verifies with the
    gap declared."""
    key = files.device_keys[DEVICE]

    async def body() -> list[str]:
        async with running(_serial_config(files, broker, pty_link)) as gateway:
            sim = SimDevice(DEVICE, key, pty_link.device_end)
            sim.record(10)
            sim.acked = 6
            async with sim:
                await _welcomed(sim)
                await _quarantine_rows(gateway, ("ahead_of_ledger",))
                await _quarantine_rows(gateway, ("quarantined_event",))
                stored = await gateway.db(lambda: list(gateway.ledger.events(DEVICE)))
                assert stored == [] and sim.acked == 6
                ledger = files.ledger()
                try:
                    gap = ledger.adopt(
                        DEVICE,
                        "qa",
                        "seal moved from gw-old",
                        files.key.sign1,
                        gateway.topics.gaps(DEVICE),
                    )
                finally:
                    ledger.close()
                assert gap == (1, 6)
                await sim.wait_acked(10, timeout=20)
                exported = await gateway.db(lambda: list(gateway.ledger.events(DEVICE)))
                assert [e["counter"] for e in exported] == [7, 8, 9, 10]
            ledger = files.ledger()
            try:
                return [json.dumps(row) for row in export_rows(ledger, DEVICE, 0)]
            finally:
                ledger.close()

    export = run(body())
    seal_keys = {DEVICE: SimChip.of(key).public}
    (audit,) = verify_export(export, files.key.public_pem(), seal_keys, {DEVICE: key})
    assert audit.summary()["gaps"] == [[1, 6]] and audit.problems == []
    assert (audit.summary()["counters"], audit.events) == ([1, 10], 4)


def test_a_replayed_hello_on_another_port_neither_moves_nor_quarantines_the_seal(
    files: GatewayFiles, broker: Mosquitto, pty_link: PtyLink
) -> None:
    key = files.device_keys[DEVICE]

    async def body() -> None:
        with open_pty_link() as attacker:
            config = files.config(
                broker.port, ports=(PortConfig(pty_link.host_path), PortConfig(attacker.host_path))
            )
            async with (
                running(config) as gateway,
                SimDevice(DEVICE, key, pty_link.device_end) as sim,
            ):
                await _welcomed(sim)
                await sim.stamp(3)
                await sim.wait_acked(3)
                # The HELLO the seal sent when it had nothing journaled, replayed later from a
                # recording, on the same port and on another one.
                recorded = SimDevice(DEVICE, key, attacker.device_end)
                await recorded.send_hello()
                await recorded.send_hello()
                recorded.transport = pty_link.device_end
                await recorded.send_hello()
                await until(
                    lambda: sum(1 for s in gateway.sessions if s.machine._pending) >= 2,
                    10,
                    "the replays answered",
                )
                state = gateway.registry.get(DEVICE)
                assert state is not None and state.quarantine is None
                (genuine,) = [s.port for s in gateway.sessions if s.device == DEVICE]
                assert state.owner == genuine and pty_link.host_path in genuine
                await sim.stamp(2)
                await sim.wait_acked(5)

    run(body())


def test_a_seal_registered_while_the_gateway_runs_is_served(
    files: GatewayFiles, broker: Mosquitto, pty_link: PtyLink
) -> None:
    """`sealink devices add` writes from its own process; the running service notices the
    registration within a poll and answers the new seal's HELLO."""
    late = "seal-t-late"

    async def body() -> None:
        async with running(_serial_config(files, broker, pty_link)) as gateway:
            assert gateway.registry.get(late) is None
            key = files.add_device(late)
            await until(lambda: gateway.registry.get(late) is not None, 10, "the registration")
            async with SimDevice(late, key, pty_link.device_end) as sim:
                await _welcomed(sim)
                await sim.stamp(2)
                await sim.wait_acked(2)

    run(body())


class _BrokenTransport:
    """A transport with a bug: its connect raises what no transport should (not a
    TransportError). Stands in for a third-party stack's unexpected exception."""

    name = "broken"
    mtu = 64

    def __init__(self) -> None:
        self.attempts = 0

    async def connect(self) -> None:
        self.attempts += 1
        raise RuntimeError("a bug in a transport")

    async def send(self, data: bytes) -> None:
        raise AssertionError("never connected")

    async def receive(self) -> bytes:
        raise AssertionError("never connected")

    async def close(self) -> None:
        pass


def test_a_transport_that_fails_unexpectedly_stops_neither_the_gateway_nor_its_other_ports(
    files: GatewayFiles,
    broker: Mosquitto,
    observer: Observer,
    pty_link: PtyLink,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sealink.gateway import service

    broken = _BrokenTransport()
    real = service.open_transport

    def opening(kind: str, url: str, **options: object) -> object:
        return broken if url == "socket://broken.invalid:1" else real(kind, url, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(service, "open_transport", opening)
    config = files.config(
        broker.port,
        ports=(PortConfig("socket://broken.invalid:1"), PortConfig(pty_link.host_path)),
    )
    key = files.device_keys[DEVICE]

    async def body() -> None:
        async with running(config), SimDevice(DEVICE, key, pty_link.device_end) as sim:
            await _welcomed(sim)
            await sim.stamp(5)
            await sim.wait_acked(5)
            await until(lambda: broken.attempts >= 2, 10, "a second attempt on the broken port")

    run(body())
    assert observer.wait_for(DEVICE, 5, timeout=15).verified == 5
    failed = [r for r in caplog.records if r.getMessage() == "port open failed" and r.exc_info]
    assert failed, "the unexpected exception is logged with its traceback"
