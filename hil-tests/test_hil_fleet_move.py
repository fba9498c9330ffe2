"""A seal moved to another gateway by the fleet (SPEC §11.6, "Enrolled by the fleet") on the
whole link: the real firmware on the board, two gateway processes, a real Mosquitto, a real
PostgreSQL and the fleet's ingest.

The fleet holds the enrolment authority the board's firmware trusts. Moving the seal places it
on the new gateway and enrols it there in one signed registry message: the new gateway hands
the seal the certificate at its next session (ENROL after TIME), and from then on the seal
frees its journal on the new gateway's acknowledgements, which before the move it would have
refused (UNVERIFIED_ACK), without a field engineer enrolling it by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sealink.fleet import FleetService, Store, load_config
from sealink_hil.gateway import HostProcess
from sealink_hil.linkfaults import D2H, H2D
from sealink_hil.rig import Rig
from sealink_hil.waits import until
from sealink_hil.wirelog import TX, WireLog
from sealink_sim.fleetrig import write_fleet_config
from sealink_sim.postgres import PostgresCluster

# Records stamped at the new gateway: more than two journal segments (8 records each) and a
# signature check (every 16), so that what the seal frees shows in its journal_free.
AT_NEW_GATEWAY = 20

pytestmark = pytest.mark.requires("gpio")


def _fleet(*args: str, config: Path) -> dict[str, object]:
    """`sealink fleet ARGS --config fleet.toml` as its operator runs it: its JSON output."""
    done = subprocess.run(
        [sys.executable, "-m", "sealink.cli", "fleet", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"sealink fleet {' '.join(args)}: {done.stderr}"
    return dict(json.loads(done.stdout)) if done.stdout.strip() else {}


def _free(wire: WireLog, since: int, what: str) -> int:
    return int(wire.wait_for("STATUS", D2H, TX, since, 60, what).get("free"))


def test_a_seal_the_fleet_moves_is_enrolled_with_its_new_gateway_and_frees_its_journal(
    rig: Rig, tmp_path: Path
) -> None:
    board, wire = rig.board, rig.port.wire
    if board.authority_key is None:
        pytest.skip("the board's firmware trusts no authority key this suite holds")
    device, old = board.device_id, rig.host
    with PostgresCluster() as cluster:
        dsn = cluster.database("fleet")
        new = HostProcess(
            tmp_path / "gw-new",
            broker_port=rig.broker.port,
            log_path=tmp_path / "gw-new.log",
            gateway_id="gw-new",
        )
        new.init_keys()
        pems = {}
        for gateway in (old, new):
            pems[gateway.gateway_id] = tmp_path / f"{gateway.gateway_id}.pem"
            pems[gateway.gateway_id].write_bytes(gateway.public_key_pem())
        ack_key = bytes.fromhex(json.loads(new.cli("keys", "show"))["ack_key"])
        config = write_fleet_config(
            tmp_path / "fleet.toml", database=dsn, instance="fleet-hil", port=rig.broker.port,
            prefix=old.prefix, gateways=pems, authority_key=board.authority_key,
            ack_keys={"gw-new": ack_key},
        )  # fmt: skip
        _fleet("migrate", config=config)
        fleet_key = bytes.fromhex(str(_fleet("keys", "init", config=config)["public_key"]))
        with Store(dsn, instance="fleet-hil") as store:
            store.import_seal_keys([(device, board.seal_key)], source="hil")
            service = FleetService(load_config(config), store).start()
            try:
                _move(rig, new, fleet_key, config, store)
            finally:
                service.stop()
    moved_at = int(board.counter)
    mark = wire.mark()
    try:
        new.start()
        hello = wire.wait_for("HELLO", D2H, TX, mark, 60, "the seal's HELLO to the new gateway")
        serial = int(new.devices()[0]["enrolment"])
        assert int(hello.get("enrolment")) < serial, "the seal was enrolled with it already"
        enrol = wire.wait_for("ENROL", H2D, TX, mark, 60, "the new gateway's ENROL")
        assert (int(enrol.get("serial")), enrol.get("gateway_key")) == (serial, ack_key)
        free = _free(wire, mark, "the seal's STATUS at the new gateway")
        for _ in range(AT_NEW_GATEWAY):
            rig.stamp()
        newest = int(board.counter)
        until(lambda: new.ledger_counter(device), lambda n: n >= newest, 60,
              f"the new gateway to store counter {newest}")  # fmt: skip
        # A new session's STATUS says what the seal still holds, and its HELLO what it is
        # enrolled with.
        new.stop()
        again = wire.mark()
        new.start()
        hello = wire.wait_for("HELLO", D2H, TX, again, 60, "the next session's HELLO")
        freed = _free(wire, again, "the next session's STATUS")
    finally:
        new.stop()
    # The WELCOME's signature comes before the ENROL and may be refused (the seal was still
    # enrolled with the old gateway); no acknowledgement of a record stamped here may be.
    unverified = [
        f for f in wire.frames("ALARM", D2H, TX, mark)
        if f.get("code") == "UNVERIFIED_ACK" and int(f.get("detail") or 0) > moved_at
    ]  # fmt: skip
    print(f"sealink HIL: journal free {free} before {AT_NEW_GATEWAY} records, {freed} after")
    assert int(hello.get("enrolment")) == serial, f"not enrolled by the fleet; {rig.where()}"
    assert not unverified, f"the seal refused the new gateway's acknowledgements; {rig.where()}"
    assert freed > free - AT_NEW_GATEWAY, f"the seal freed nothing; {rig.where()}"


def _move(rig: Rig, new: HostProcess, fleet_key: bytes, config: Path, store: Store) -> None:
    """Stamps at the old gateway until the fleet holds them, then the seal registered at the
    new gateway, moved there by the fleet, and the old gateway gone (the seal carried away).
    The new gateway takes the registry message before it serves the board, so that the
    seal's first session there already gets its certificate."""
    device = rig.board.device_id
    for _ in range(3):
        rig.stamp()
    rig.settle()
    newest = int(rig.board.counter)
    until(lambda: _held(store, device), lambda n: n >= newest, 60,
          f"the fleet to hold the seal's records 1..{newest}")  # fmt: skip
    new.follow_fleet(fleet_key)
    new.cli("devices", "add", device, "--key-file", str(_key_file(rig, new)), "--seal-key",
            rig.board.seal_key.hex())  # fmt: skip
    moved = _fleet("devices", "move", device, "--to", "gw-new", "--reason", "office moved",
                   config=config)  # fmt: skip
    assert moved["published"] is True and moved["counter"] == newest, moved
    rig.host.stop()
    new.start()  # no port yet: it only takes the registry
    try:
        until(lambda: new.devices()[0], lambda row: row["enrolment"] == moved["serial"]
              and row["stored"] >= newest, 60, "the new gateway to take the move")  # fmt: skip
    finally:
        new.stop()
    new.listen(rig.port.host_url)


def _held(store: Store, device: str) -> int:
    with store.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM records WHERE device = %s AND chain_ok", (device,)
        ).fetchone()
    return int(row[0]) if row else 0


def _key_file(rig: Rig, gateway: HostProcess) -> Path:
    key_file = gateway.workdir / f"{rig.board.device_id}.key"
    key_file.touch(mode=0o600)
    key_file.write_text(rig.board.device_key.hex())
    return key_file
