"""The ledger as an operator handles it (issue 13): only `ledger init` creates one, one gateway
per ledger, errors on a full disk that name it, backup and restore (and a restored ledger
behind its seal), the outbox's published payloads dropped, files a root CLI leaves beside the
ledger owned as the ledger is. Real files, a real tmpfs, a real broker, a simulated seal."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import DEVICE, GatewayFiles, provisioning_file, run, running, sealink
from sealink.cli.events import export_rows
from sealink.crypto.keystore import LinkKeyStore
from sealink.errors import LedgerError
from sealink.gateway.service import Gateway
from sealink.ledger import Batch, EventRow, Ledger
from sealink.ledger.keyhistory import service_lock
from sealink.ledger.schema import SCHEMA_VERSION
from sealink_sim.broker import Mosquitto
from sealink_sim.pipe import pipe_pair
from sealink_sim.simdevice import SimChip, SimDevice
from sealink_verify import verify_export


def _toml(path: Path, files: GatewayFiles, port: int = 1, ledger: Path | None = None) -> Path:
    path.write_text(
        f'[gateway]\nid = "gw-test"\nkey_file = "{files.key_file}"\n'
        f'ledger = "{ledger or files.ledger_path}"\nlink_keys = "{files.link_keys}"\n'
        f'[mqtt]\nport = {port}\nprefix = "sealink-test"\n'
    )
    return path


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("sealink: error: ") and done.stderr.count("\n") == 1
    return done.stderr


# --version, init, a missing ledger --------------------------------------------------------------


def test_version_is_the_installed_package_version() -> None:
    done = sealink("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"sealink {version('sealink')}"


def test_only_ledger_init_creates_a_ledger(tmp_path: Path, files: GatewayFiles) -> None:
    typo = tmp_path / "var" / "lib" / "sealnik" / "ledger.sqlite"
    conf = _toml(tmp_path / "typo.toml", files, ledger=typo)
    key_file = tmp_path / "seal-2.json"
    provisioning_file(key_file, "seal-2")
    for words in (
        ("devices", "list"),
        ("devices", "add", "seal-2", "--key-file", str(key_file)),
        ("permits", "issue", "seal-2", "--count", "1"),
        ("events", "list"),
        ("ledger", "backup", "--to", str(tmp_path / "b.sqlite")),
    ):
        error = _one_line_error(sealink(*words, "--config", str(conf)))
        assert f"ledger {typo} does not exist" in error and "sealink ledger init" in error
    assert not (tmp_path / "var").exists()  # no folders made on the way

    config = files.config(1)
    config = type(config)(**{**config.__dict__, "ledger_path": typo})

    async def start() -> None:
        async with Gateway(config):
            raise AssertionError("a gateway started on a ledger that does not exist")

    with pytest.raises(LedgerError, match="sealink ledger init"):
        run(start())
    assert not (tmp_path / "var").exists()

    made = sealink("ledger", "init", "--config", str(conf))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(typo.stat().st_mode) == 0o600
    assert stat.S_IMODE(typo.parent.stat().st_mode) == 0o700
    assert "exists already" in _one_line_error(sealink("ledger", "init", "--config", str(conf)))
    listed = sealink("devices", "list", "--config", str(conf))
    assert listed.returncode == 0 and listed.stdout == ""


def test_a_file_that_is_no_ledger_is_refused_and_left_alone(
    tmp_path: Path, files: GatewayFiles
) -> None:
    other = tmp_path / "notes.sqlite"
    with contextlib.closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.commit()
    conf = _toml(tmp_path / "other.toml", files, ledger=other)
    error = _one_line_error(sealink("devices", "list", "--config", str(conf)))
    assert "not a sealink ledger" in error
    with contextlib.closing(sqlite3.connect(other)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"notes"}


# one gateway per ledger ---------------------------------------------------------------------------


def test_a_second_gateway_on_one_ledger_fails_at_once_and_the_cli_still_writes(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto
) -> None:
    conf = _toml(tmp_path / "sealink.toml", files, broker.port)
    key_file = tmp_path / "seal-2.json"
    provisioning_file(key_file, "seal-2")

    async def body() -> None:
        async with running(files.config(broker.port)):
            second = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "sealink.cli", "run", "--config", str(conf)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert second.returncode == 2, second.stderr
            assert f"ledger {files.ledger_path} is in use by another gateway" in second.stderr
            assert f"(pid {os.getpid()})" in second.stderr and "Traceback" not in second.stderr
            # The CLI's writers take no gateway lock: WAL and SQLite's write lock keep them
            # apart from the running service.
            for words in (
                ("devices", "add", "seal-2", "--key-file", str(key_file)),
                ("permits", "issue", DEVICE, "--count", "2"),
            ):
                done = await asyncio.to_thread(sealink, *words, "--config", str(conf))
                assert done.returncode == 0, done.stderr
            restore = await asyncio.to_thread(
                sealink, "ledger", "restore", "--from", str(files.ledger_path), "-c", str(conf)
            )
            assert "in use by another gateway" in _one_line_error(restore)

    run(body())
    ledger = files.ledger()
    try:
        assert ledger.device_ids() == sorted([DEVICE, "seal-2"])
        assert [c.kind for c in ledger.commands(DEVICE)] == ["permit"]
    finally:
        ledger.close()


# a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 65536
        while size:  # unbuffered: each refusal is seen at once, down to the last byte
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                size //= 2
    finally:
        os.close(fd)
    return filler


def test_on_a_full_disk_every_writer_names_the_full_disk(
    small_disk: Path, files: GatewayFiles, tmp_path: Path
) -> None:
    ledger_path = small_disk / "ledger.sqlite"
    Ledger(ledger_path, LinkKeyStore(files.link_keys), create=True).close()
    conf = _toml(tmp_path / "sealink.toml", files, ledger=ledger_path)
    key_file = tmp_path / "seal-1.json"
    provisioning_file(key_file, "seal-1")
    assert (
        sealink("devices", "add", "seal-1", "--key-file", str(key_file), "-c", str(conf)).returncode
        == 0
    )
    # As while the gateway runs: its connection holds the ledger (and its -shm) open.
    ledger = Ledger(ledger_path, LinkKeyStore(files.link_keys))
    batch = Batch(
        events=[
            EventRow("seal-1", n, os.urandom(512), os.urandom(32), os.urandom(96), n)
            for n in range(1, 2001)
        ]
    )
    try:
        filler = _fill(small_disk)
        writers = (
            ("permits", "issue", "seal-1", "--count", "1"),
            ("devices", "quarantine", "seal-1", "--hold", "--note", "disk test"),
        )
        for words in writers:
            error = _one_line_error(sealink(*words, "-c", str(conf)))
            assert "is full" in error and "no transaction is active" not in error, error
        # The gateway's group commit: refused whole, the cause named (its committer then
        # acks nothing and retries: test_gateway.py's ledger-failure test).
        with pytest.raises(LedgerError) as err:
            ledger.commit(batch)
        assert "is full" in str(err.value) and "no transaction is active" not in str(err.value)
        assert list(ledger.events("seal-1")) == []  # nothing half-stored
    finally:
        ledger.close()
    # With no connection open, opening needs room for the -shm: refused, and said why.
    for words in writers:
        assert "is full" in _one_line_error(sealink(*words, "-c", str(conf)))
    filler.unlink()
    ledger = Ledger(ledger_path, LinkKeyStore(files.link_keys))
    try:
        ledger.commit(batch)  # the same batch once there is room: all of it
        assert len(list(ledger.events("seal-1"))) == 2000
        assert ledger.commands("seal-1") == []
    finally:
        ledger.close()


# outbox retention -------------------------------------------------------------------------------


def _event(counter: int) -> EventRow:
    data = os.urandom(40)
    return EventRow(DEVICE, counter, data, os.urandom(32), b"cose-%d" % counter, counter)


def test_a_published_events_payload_is_dropped_and_the_record_stays(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite", create=True)
    try:
        events = [_event(n) for n in (1, 2, 3)]
        outbox = [("p/events", e.cose, DEVICE, e.counter) for e in events]
        outbox.append(("p/alarms", b"signed alarm", DEVICE, None))
        ledger.commit(Batch(events=events, outbox=outbox))
        ledger.commit(Batch(published=[1, 2, 4]))
        with contextlib.closing(sqlite3.connect(ledger.path)) as db:
            rows = db.execute("SELECT id, payload, published_ms FROM outbox ORDER BY id").fetchall()
        assert [(r[0], r[1]) for r in rows] == [
            (1, None),
            (2, None),
            (3, b"cose-3"),  # not yet published: kept to be sent
            (4, b"signed alarm"),  # published, but the outbox is an alarm's only copy
        ]
        assert [r[2] is not None for r in rows] == [True, True, False, True]
        assert [e["cose"] for e in ledger.events(DEVICE)] == [e.cose for e in events]
        assert [r.id for r in ledger.pending_outbox(0, 10)] == [3]
    finally:
        ledger.close()


def test_a_schema_8_ledger_migrates_and_drops_what_was_published(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, create=True)
    events = [_event(n) for n in (1, 2)]
    ledger.commit(
        Batch(
            events=events,
            outbox=[
                *[("p/events", e.cose, DEVICE, e.counter) for e in events],
                ("p/alarms", b"alarm", None, None),
            ],
        )
    )
    ledger.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        # The outbox as schema 8 made it: payload NOT NULL; row 1 and the alarm published.
        db.executescript(
            """
            BEGIN;
            CREATE TABLE outbox_v8 (id INTEGER PRIMARY KEY, topic TEXT NOT NULL,
                payload BLOB NOT NULL, device TEXT, counter INTEGER,
                created_ms INTEGER NOT NULL, published_ms INTEGER);
            INSERT INTO outbox_v8 SELECT * FROM outbox;
            DROP TABLE outbox;
            ALTER TABLE outbox_v8 RENAME TO outbox;
            UPDATE outbox SET published_ms = 5 WHERE id IN (1, 3);
            UPDATE meta SET value = '8' WHERE key = 'schema';
            COMMIT;
            """
        )
    Ledger(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        rows = db.execute("SELECT id, payload FROM outbox ORDER BY id").fetchall()
        notnull = {r[1]: r[3] for r in db.execute("PRAGMA table_info(outbox)")}
        pending = db.execute("SELECT id FROM outbox WHERE published_ms IS NULL").fetchall()
    assert rows == [(1, None), (2, events[1].cose), (3, b"alarm")]
    assert notnull["payload"] == 0 and pending == [(2,)]


# backup and restore ------------------------------------------------------------------------------


def test_backup_while_the_gateway_runs_restore_keeps_the_old_file_and_a_seal_ahead_is_adopted(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto
) -> None:
    """The recovery of README "Backup and recovery": a backup taken at counter 5, the ledger
    lost after 10, the backup restored. The seal holds acks up to 10 and 3 records unacked:
    the gateway quarantines it (ahead_of_ledger), stores nothing, acks nothing; `devices adopt`
    records 6..10 as a signed gap; the 3 flow; the export verifies with the gap declared."""
    conf = _toml(tmp_path / "sealink.toml", files, broker.port)
    config = files.config(broker.port)
    key = files.device_keys[DEVICE]
    backup = tmp_path / "backups" / "ledger-1.sqlite"
    backup.parent.mkdir()
    journal: list[bytes] = []  # the seal's, across both runs

    async def first_run() -> None:
        nonlocal journal
        async with running(config) as gateway:
            host, dev = pipe_pair("before")
            gateway.attach(host)
            async with SimDevice(DEVICE, key, dev) as sim:
                await asyncio.wait_for(sim.welcomed.wait(), 10)
                await sim.stamp(5)
                await sim.wait_acked(5)
                done = await asyncio.to_thread(
                    sealink, "ledger", "backup", "--to", str(backup), "-c", str(conf)
                )
                assert done.returncode == 0, done.stderr
                assert json.loads(done.stdout)["integrity"] == "ok"
                await sim.stamp(5)
                await sim.wait_acked(10)
                journal = list(sim.journal)

    run(first_run())
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert not Path(f"{backup}-wal").exists()
    raw = backup.read_bytes()
    assert key not in raw and key.hex().encode() not in raw  # link keys stay in the key store
    with contextlib.closing(sqlite3.connect(backup)) as db:
        assert db.execute("SELECT MAX(counter) FROM events").fetchone() == (5,)

    restored = sealink("ledger", "restore", "--from", str(backup), "-c", str(conf))
    assert restored.returncode == 0, restored.stderr
    aside = Path(json.loads(restored.stdout)["replaced"])
    with contextlib.closing(sqlite3.connect(aside)) as db:
        assert db.execute("SELECT MAX(counter) FROM events").fetchone() == (10,)

    async def second_run() -> list[str]:
        async with running(config) as gateway:
            host, dev = pipe_pair("after")
            gateway.attach(host)
            sim = SimDevice(DEVICE, key, dev)
            sim.journal, sim.acked = list(journal), 10
            sim.record(3)  # made while no gateway ran: unacked
            async with sim:
                await asyncio.wait_for(sim.welcomed.wait(), 10)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 15
                while not any(
                    d["device"] == DEVICE and d["quarantine"]
                    for d in await gateway.db(gateway.ledger.devices)
                ):
                    assert loop.time() < deadline, "the seal ahead was never quarantined"
                    await asyncio.sleep(0.05)
                shown = await asyncio.to_thread(
                    sealink, "devices", "quarantine", DEVICE, "--json", "-c", str(conf)
                )
                report = json.loads(shown.stdout)
                assert report["quarantine"]["reason"] == "ahead_of_ledger"
                assert (report["stored"], report["ahead_acked"]) == (5, 10)
                assert sim.acked == 10  # nothing acked meanwhile
                adopt = await asyncio.to_thread(
                    sealink, "devices", "adopt", DEVICE, "--note", "restored", "-c", str(conf)
                )
                assert adopt.returncode == 0, adopt.stderr
                assert json.loads(adopt.stdout)["gap"] == [6, 10]
                await sim.wait_acked(13, timeout=20)
            ledger = files.ledger()
            try:
                return [json.dumps(row) for row in export_rows(ledger, DEVICE, 0)]
            finally:
                ledger.close()

    export = run(second_run())
    (audit,) = verify_export(
        export, files.key.public_pem(), {DEVICE: SimChip.of(key).public}, {DEVICE: key}
    )
    assert audit.problems == [] and audit.summary()["gaps"] == [[6, 10]]
    assert audit.summary()["counters"] == [1, 13]


def test_restore_refuses_a_copy_that_is_not_a_whole_ledger(
    tmp_path: Path, files: GatewayFiles
) -> None:
    conf = _toml(tmp_path / "sealink.toml", files)
    torn = tmp_path / "torn.sqlite"
    torn.write_bytes(files.ledger_path.read_bytes()[:1000] + b"\xff" * 3096)
    error = _one_line_error(sealink("ledger", "restore", "--from", str(torn), "-c", str(conf)))
    assert str(torn) in error
    assert files.ledger().device_ids() == [DEVICE]  # the ledger untouched


# root's files beside the service user's ledger ----------------------------------------------------


def test_files_a_root_cli_makes_beside_the_ledger_take_the_ledgers_owner(
    tmp_path: Path, files: GatewayFiles
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: only root can make files another user owns")
    service_uid, service_gid = 4242, 4343
    for path in (files.root, files.ledger_path, files.link_keys):
        os.chown(path, service_uid, service_gid)
    conf = _toml(tmp_path / "sealink.toml", files)
    key_file = tmp_path / "seal-2.json"
    provisioning_file(key_file, "seal-2")
    added = sealink("devices", "add", "seal-2", "--key-file", str(key_file), "-c", str(conf))
    assert added.returncode == 0, added.stderr
    # And while a root process holds the ledger open: its -wal and -shm.
    ledger = files.ledger()
    try:
        beside = [
            files.ledger_path,
            Path(f"{files.ledger_path}-wal"),
            Path(f"{files.ledger_path}-shm"),
            files.link_keys,
            Path(f"{files.link_keys}.lock"),
        ]
        owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in beside}
    finally:
        ledger.close()
    assert set(owners.values()) == {(service_uid, service_gid)}, owners
    with service_lock(files.ledger_path, exclusive=False):
        lock = Path(f"{files.ledger_path}.lock")
        assert (lock.stat().st_uid, lock.stat().st_gid) == (service_uid, service_gid)
