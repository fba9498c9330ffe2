"""The seals' link keys in their own 0600 key store (SPEC §15 T6), never in the ledger.

The store itself (round trip, modes, a crash between write and rename, concurrent writers),
the ledger's migration from schema 4 (keys moved first, no key bytes left in the file or its
WAL, nothing lost when the store cannot be written), the CLI, and the gateway refusing a seal
whose key the store lacks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    DEVICE,
    GatewayFiles,
    PtyLink,
    provisioning_file,
    run,
    running,
    sealink,
    until,
)
from sealink.config import PortConfig
from sealink.crypto.keystore import LinkKeyStore
from sealink.errors import DeviceError, KeyFileError, LedgerError
from sealink.ledger import Ledger
from sealink.ledger.schema import SCHEMA_VERSION
from sealink_sim.broker import Mosquitto
from sealink_sim.simdevice import SimChip, SimDevice

# multiprocessing children: forked, so they need nothing importable beyond this module's state
_FORK = multiprocessing.get_context("fork")


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


# the store -------------------------------------------------------------------------------------


def test_keys_round_trip_in_a_file_created_0600(tmp_path: Path) -> None:
    store = LinkKeyStore(tmp_path / "etc" / "link-keys")
    assert dict(store.load()) == {}  # no file yet: no seal registered
    old_umask = os.umask(0)  # the mode must not depend on the caller's umask
    try:
        store.put("seal-1", bytes(range(32)))
        store.put("seal-2", b"\x07" * 32)
    finally:
        os.umask(old_umask)
    store.put("seal-1", b"\x01" * 32)  # replaced, seal-2 kept
    assert dict(LinkKeyStore(store.path).load()) == {"seal-1": b"\x01" * 32, "seal-2": b"\x07" * 32}
    assert store.get("seal-3") is None
    assert _private(store.path)
    assert _private(store.path.with_name("link-keys.lock"))
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["link-keys", "link-keys.lock"]
    # Nothing that may be printed carries a key.
    shown = repr(store) + repr(store.load())
    assert (b"\x07" * 32).hex() not in shown and "07070707" not in shown


def test_a_store_others_may_read_is_refused_with_the_chmod_hint(tmp_path: Path) -> None:
    store = LinkKeyStore(tmp_path / "link-keys")
    store.put("seal-1", bytes(32))
    os.chmod(store.path, 0o644)
    with pytest.raises(KeyFileError, match=r"mode 0644 lets others read it; run: chmod 600"):
        store.load()
    with pytest.raises(KeyFileError, match="chmod 600"):
        store.put("seal-2", bytes(32))  # not written to either
    os.chmod(store.path, 0o600)
    assert list(store.load()) == ["seal-1"]


@pytest.mark.parametrize(
    "text",
    [
        b"not json",
        b'{"keys": {"seal-1": "00"}, "version": 1}',
        b'{"keys": {"seal-1": 7}, "version": 1}',
        b'{"keys": [], "version": 1}',
        b'{"keys": {}, "version": 2}',
    ],
)
def test_a_malformed_store_is_refused_without_showing_its_content(
    tmp_path: Path, text: bytes
) -> None:
    path = tmp_path / "link-keys"
    path.write_bytes(text)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError) as err:
        LinkKeyStore(path).load()
    assert str(path) in str(err.value) and '"00"' not in str(err.value)


def _put_then_die_before_the_rename(path: Path) -> None:
    def killed(*_: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)  # a power cut between fsync and rename

    os.replace = killed
    LinkKeyStore(path).put("seal-new", b"\x02" * 32)


def test_a_writer_killed_before_its_rename_leaves_the_old_keys(tmp_path: Path) -> None:
    store = LinkKeyStore(tmp_path / "link-keys")
    store.put("seal-1", b"\x01" * 32)
    before = store.path.read_bytes()
    child = _FORK.Process(target=_put_then_die_before_the_rename, args=(store.path,))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert store.path.with_name("link-keys.tmp").exists()  # it got as far as the new file
    assert store.path.read_bytes() == before
    assert dict(store.load()) == {"seal-1": b"\x01" * 32}
    store.put("seal-2", b"\x03" * 32)  # the next writer is not stuck on the leftover
    assert set(store.load()) == {"seal-1", "seal-2"}
    assert not store.path.with_name("link-keys.tmp").exists()


_WRITERS = 6
_PUTS = 15


def _put_many(path: Path, writer: int, start: Any) -> None:
    store = LinkKeyStore(path)
    start.wait(30)
    for i in range(_PUTS):
        store.put(f"seal-{writer}-{i}", bytes([writer, i]) * 16)


def test_concurrent_writers_keep_every_key(tmp_path: Path) -> None:
    """Two `sealink devices add` at once: each reads, adds its key and renames; without the
    lock the later rename drops the earlier key."""
    path = tmp_path / "link-keys"
    start = _FORK.Barrier(_WRITERS)
    writers = [_FORK.Process(target=_put_many, args=(path, w, start)) for w in range(_WRITERS)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0] * _WRITERS
    keys = LinkKeyStore(path).load()
    expected = {f"seal-{w}-{i}": bytes([w, i]) * 16 for w in range(_WRITERS) for i in range(_PUTS)}
    assert dict(keys) == expected


# the ledger ------------------------------------------------------------------------------------


def test_add_device_writes_the_key_store_and_never_the_ledger(tmp_path: Path) -> None:
    store = LinkKeyStore(tmp_path / "link-keys")
    ledger = Ledger(tmp_path / "ledger.sqlite", store, create=True)
    key = os.urandom(32)
    try:
        ledger.add_device("seal-1", key, SimChip.of(key).public)
        with pytest.raises(DeviceError, match="already registered"):
            ledger.add_device("seal-1", os.urandom(32), None)
        assert store.get("seal-1") == key  # the refused registration did not touch the store
        columns = {r[1] for r in ledger._db.execute("PRAGMA table_info(devices)")}
        assert "key" not in columns
    finally:
        ledger.close()
    assert key not in _raw(tmp_path / "ledger.sqlite")
    with pytest.raises(DeviceError, match="no key store"):
        Ledger(tmp_path / "ledger.sqlite").add_device("seal-2", key, None)


def test_a_key_store_that_cannot_be_written_registers_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    ledger = Ledger(tmp_path / "ledger.sqlite", LinkKeyStore(blocker / "link-keys"), create=True)
    try:
        with pytest.raises(DeviceError, match="not registered: link key store"):
            ledger.add_device("seal-1", os.urandom(32), None)
        assert ledger.device_ids() == []
    finally:
        ledger.close()


def _v4_ledger(path: Path, keys: dict[str, bytes], replaced: bytes) -> None:
    """A ledger as schema 4 left it, in WAL mode, its last writes still in the WAL: the keys in
    devices.key, one of them registered again over `replaced` (old bytes in a free cell)."""
    Ledger(path, create=True).close()  # every other table as they are
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("DROP TABLE devices")
    db.execute(
        """CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        key BLOB NOT NULL,
        registered_ms INTEGER NOT NULL,
        boot_id INTEGER NOT NULL DEFAULT 0,
        quarantine_reason TEXT,
        quarantine_detail TEXT,
        quarantine_ms INTEGER,
        ahead_acked INTEGER,
        seal_key BLOB
    )"""
    )
    db.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    first = next(iter(keys))
    db.execute(
        "INSERT INTO devices (id, key, registered_ms, boot_id) VALUES (?, ?, 1, 0)",
        (first, replaced),
    )
    db.execute("UPDATE devices SET key = ?, boot_id = 3 WHERE id = ?", (keys[first], first))
    for device, key in list(keys.items())[1:]:
        db.execute(
            "INSERT INTO devices (id, key, registered_ms, seal_key) VALUES (?, ?, 2, ?)",
            (device, key, SimChip.of(key).public),
        )
    # A copy of the WAL as it stands: closing the last connection checkpoints and deletes it.
    wal = path.with_name(path.name + "-wal").read_bytes()
    db.close()
    path.with_name(path.name + "-wal").write_bytes(wal)
    os.chmod(path.with_name(path.name + "-wal"), 0o600)


def _raw(path: Path) -> bytes:
    """The ledger's bytes on disk: the file and its WAL, as a backup would copy them."""
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_migrating_v4_moves_every_key_and_leaves_no_key_bytes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    keys = {f"seal-{i}": os.urandom(32) for i in range(5)}
    replaced = os.urandom(32)
    _v4_ledger(path, keys, replaced)
    before = _raw(path)
    assert all(k in before for k in [*keys.values(), replaced])  # the scan can see them

    store = LinkKeyStore(tmp_path / "etc" / "link-keys")
    ledger = Ledger(path, store)
    try:
        assert sorted(ledger.device_ids()) == sorted(keys)
        record = ledger.device_record("seal-0")
        assert record is not None and record.boot_id == 3  # the rest of the row is kept
    finally:
        ledger.close()
    assert dict(store.load()) == keys and _private(store.path)
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        assert "key" not in {r[1] for r in db.execute("PRAGMA table_info(devices)")}
    finally:
        db.close()
    after = _raw(path)
    every = [*keys.items(), ("replaced", replaced)]
    left = [d for d, k in every if k in after or k.hex().encode() in after]
    assert not left, f"key bytes of {left} remain in the ledger or its WAL"


def test_a_v4_ledger_whose_keys_cannot_be_moved_is_left_intact(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    keys = {"seal-0": os.urandom(32), "seal-1": os.urandom(32)}
    _v4_ledger(path, keys, os.urandom(32))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    loose = LinkKeyStore(tmp_path / "loose")
    loose.put("other", bytes(32))
    os.chmod(loose.path, 0o644)
    for store, why in (
        (LinkKeyStore(blocker / "link-keys"), "cannot lock"),
        (loose, "chmod 600"),
        (None, "no key store"),
    ):
        with pytest.raises(LedgerError) as err:
            Ledger(path, store)
        message = str(err.value)
        assert "cannot migrate to schema 5, left as it was" in message and why in message
        assert not any(k.hex() in message for k in keys.values())
        db = sqlite3.connect(path)
        try:
            assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("4",)
            rows = dict(db.execute("SELECT id, key FROM devices").fetchall())
        finally:
            db.close()
        assert rows == keys
    os.chmod(loose.path, 0o600)  # the loose store was refused, never rewritten
    assert dict(loose.load()) == {"other": bytes(32)}


# the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "sealink.toml"
    path.write_text(
        '[gateway]\nid = "gw-keys"\nkey_file = "etc/gateway.key"\nlink_keys = "etc/link-keys"\n'
        'ledger = "var/ledger.sqlite"\n'
    )
    return path


def test_the_cli_migrates_a_v4_ledger_and_marks_a_seal_without_key(
    conf: Path, tmp_path: Path
) -> None:
    path = tmp_path / "var" / "ledger.sqlite"
    path.parent.mkdir()
    keys = {"seal-0": os.urandom(32), "seal-1": os.urandom(32)}
    _v4_ledger(path, keys, os.urandom(32))
    listed = sealink("devices", "list", "-c", str(conf))
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["device"], r["link_key"]) for r in rows] == [("seal-0", True), ("seal-1", True)]
    assert dict(LinkKeyStore(tmp_path / "etc" / "link-keys").load()) == keys
    # A key store restored without one seal's key: listed, marked, and the fix named.
    store = tmp_path / "etc" / "link-keys"
    doc = json.loads(store.read_text())
    del doc["keys"]["seal-1"]
    store.write_text(json.dumps(doc))
    listed = sealink("devices", "list", "-c", str(conf))
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["device"], r["link_key"]) for r in rows] == [("seal-0", True), ("seal-1", False)]
    assert f"seal-1: no link key in {store}" in listed.stderr and "--replace" in listed.stderr
    output = listed.stdout + listed.stderr
    assert not any(k.hex() in output for k in keys.values())


def test_cli_errors_about_the_key_store_are_one_line(conf: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "seal-1.json"
    key = provisioning_file(key_file, "seal-1")
    assert sealink("ledger", "init", "-c", str(conf)).returncode == 0
    add = ("devices", "add", "-c", str(conf), "seal-1", "--key-file", str(key_file))
    assert sealink(*add).returncode == 0
    store = tmp_path / "etc" / "link-keys"
    os.chmod(store, 0o644)
    for args in (("devices", "list", "-c", str(conf)), (*add, "--replace")):
        done = sealink(*args)
        assert done.returncode == 2 and done.stderr.startswith("sealink: error: ")
        assert done.stderr.count("\n") == 1 and f"chmod 600 {store}" in done.stderr
        assert key.hex() not in done.stderr
    os.chmod(store, 0o600)
    path = tmp_path / "var" / "ledger.sqlite"
    _v4_ledger(tmp_path / "old.sqlite", {"seal-9": key}, os.urandom(32))
    for suffix in ("", "-wal"):
        (tmp_path / f"old.sqlite{suffix}").replace(path.with_name(f"ledger.sqlite{suffix}"))
    os.chmod(store, 0o644)
    done = sealink("devices", "list", "-c", str(conf))
    assert done.returncode == 2 and "cannot migrate to schema 5, left as it was" in done.stderr
    assert done.stderr.count("\n") == 1 and key.hex() not in done.stderr


# the gateway -----------------------------------------------------------------------------------


def _drop_key(files: GatewayFiles, device: str) -> None:
    """The key store as a restore without this seal's key would leave it."""
    doc = json.loads(files.link_keys.read_text())
    del doc["keys"][device]
    files.link_keys.write_text(json.dumps(doc))


def test_the_gateway_refuses_the_hello_of_a_seal_whose_key_is_missing(
    files: GatewayFiles, broker: Mosquitto, pty_link: PtyLink, caplog: pytest.LogCaptureFixture
) -> None:
    key = files.device_keys[DEVICE]
    _drop_key(files, DEVICE)
    config = files.config(broker.port, ports=(PortConfig(pty_link.host_path),))
    caplog.set_level(logging.INFO, logger="sealink")

    async def body() -> None:
        async with running(config) as gateway:
            assert gateway.registry.get(DEVICE) is None
            async with SimDevice(DEVICE, key, pty_link.device_end) as sim:
                await until(
                    lambda: any(r.getMessage() == "rejected" for r in caplog.records),
                    10,
                    "the HELLO refused",
                )
                assert not sim.welcomed.is_set()
                # Registered again (the key store first): the running gateway serves it.
                ledger = files.ledger()
                try:
                    ledger.add_device(DEVICE, key, SimChip.of(key).public, replace=True)
                finally:
                    ledger.close()
                await until(lambda: gateway.registry.get(DEVICE) is not None, 10, "the reload")
                await asyncio.wait_for(sim.welcomed.wait(), 10)
                await sim.stamp(1)
                await sim.wait_acked(1)

    run(body())
    lines = {r.getMessage(): getattr(r, "fields", {}) for r in caplog.records}
    missing = lines["registered device has no link key; its HELLOs are refused"]
    assert missing["device"] == DEVICE and missing["link_keys"] == str(files.link_keys)
    refused = lines["rejected"]
    assert refused["reason"] == "unknown_device"
    assert DEVICE in refused["detail"] and str(files.link_keys) in refused["detail"]
    assert not any(r.exc_info for r in caplog.records)  # a log line, no traceback
    assert key.hex() not in caplog.text


def test_a_gateway_with_a_key_store_others_may_read_does_not_start(
    files: GatewayFiles, broker: Mosquitto
) -> None:
    os.chmod(files.link_keys, 0o644)

    async def body() -> None:
        with pytest.raises(KeyFileError, match="chmod 600"):
            async with running(files.config(broker.port)):
                pass

    run(body())
