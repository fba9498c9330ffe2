"""`sealink` commands: keys, devices, permits, events; --help everywhere; secrets stay 0600."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import provisioning_file, run, sealink
from cwt import COSE, COSEKey
from sealink.cli.main import build_parser, main
from sealink.config import load_config
from sealink.crypto.signer import GatewayKey, countersign_payload
from sealink.gateway.service import Gateway
from sealink.ledger import AHEAD_OF_LEDGER, Batch, DeviceUpdate, EventRow, Ledger, QuarantineRow
from sealink_sim.broker import Mosquitto
from sealink_sim.pipe import pipe_pair
from sealink_sim.simdevice import SimDevice, make_event
from sealproto import auth


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "sealink.toml"
    path.write_text(
        '[gateway]\nid = "gw-cli"\nkey_file = "keys/gateway.key"\nledger = "ledger.sqlite"\n'
        '[mqtt]\nport = 1\nprefix = "cli"\n'
    )
    assert main(["ledger", "init", "--config", str(path)]) == 0
    return path


def _device_key_file(tmp_path: Path, mode: int = 0o600) -> tuple[Path, bytes]:
    """The host half of a provisioned seal: its link key and its chip's public key."""
    path = tmp_path / "device.key"
    return path, provisioning_file(path, "seal-1", mode)


def _seal_keys(conf: Path, tmp_path: Path) -> str:
    """`sealink devices list` as a --seal-keys file: the tests' stand-in for what the seals'
    provisioning issued (an auditor takes it from there, not from the operator)."""
    path = tmp_path / "seal-keys.jsonl"
    path.write_text(sealink("devices", "list", "--config", str(conf)).stdout)
    return str(path)


def test_help_everywhere() -> None:
    parser = build_parser()
    commands = [
        [],
        ["run"],
        ["keys"],
        ["keys", "init"],
        ["keys", "show"],
        ["ledger"],
        ["ledger", "init"],
        ["ledger", "backup"],
        ["ledger", "restore"],
        ["config"],
        ["config", "check"],
        ["alarms"],
        ["alarms", "list"],
        ["devices"],
        ["devices", "add"],
        ["devices", "list"],
        ["devices", "quarantine"],
        ["devices", "release"],
        ["devices", "adopt"],
        ["permits"],
        ["permits", "issue"],
        ["permits", "revoke"],
        ["permits", "list"],
        ["events"],
        ["events", "list"],
        ["events", "export"],
        ["demo"],
        ["verify"],
    ]
    for words in commands:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*words, "--help"])
        assert exit_.value.code == 0, words


def test_keys_init_writes_0600_and_show_exports_the_public_key(conf: Path) -> None:
    made = sealink("keys", "init", "--config", str(conf))
    assert made.returncode == 0, made.stderr
    key_file = conf.parent / "keys" / "gateway.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "PRIVATE" not in made.stdout + made.stderr
    shown = sealink("keys", "show", "--config", str(conf))
    info = json.loads(shown.stdout)
    assert len(bytes.fromhex(info["kid"])) == 8 and "PRIVATE" not in shown.stdout
    assert info["public_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    ack_file = conf.parent / "keys" / "gateway.ack.key"
    assert stat.S_IMODE(ack_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(info["ack_key"])) == 64
    again = sealink("keys", "init", "--config", str(conf))
    assert again.returncode == 2 and "already exist" in again.stderr
    ack_file.unlink()  # a gateway set up before acknowledgement keys: init adds the missing one
    upgraded = sealink("keys", "init", "--config", str(conf))
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(sealink("keys", "show", "--config", str(conf)).stdout)["kid"] == info["kid"]


def test_a_group_readable_gateway_key_is_refused(conf: Path) -> None:
    assert main(["keys", "init", "--config", str(conf)]) == 0
    key_file = conf.parent / "keys" / "gateway.key"
    os.chmod(key_file, 0o640)
    shown = sealink("keys", "show", "--config", str(conf))
    assert shown.returncode == 2 and "chmod 600" in shown.stderr


def test_devices_add_requires_a_0600_key_file(conf: Path, tmp_path: Path) -> None:
    loose, key = _device_key_file(tmp_path, 0o644)
    refused = sealink("devices", "add", "--config", str(conf), "seal-1", "--key-file", str(loose))
    assert refused.returncode == 2 and "chmod 600" in refused.stderr
    os.chmod(loose, 0o600)
    added = sealink("devices", "add", "--config", str(conf), "seal-1", "--key-file", str(loose))
    assert added.returncode == 0, added.stderr
    listed = sealink("devices", "list", "--config", str(conf))
    assert json.loads(listed.stdout)["device"] == "seal-1"
    assert json.loads(listed.stdout)["link_key"] is True
    assert key.hex() not in added.stdout + added.stderr + listed.stdout + listed.stderr
    # The link key is in the key store (0600), not in the ledger (private still: it holds
    # every record).
    config = load_config(conf, check_key_file=False)
    assert config.link_keys == conf.parent / "keys" / "link-keys"
    assert stat.S_IMODE(config.link_keys.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.ledger_path.stat().st_mode) == 0o600
    assert key not in config.ledger_path.read_bytes()


def test_permits_are_queued_sent_by_the_service_and_events_exported(
    conf: Path, tmp_path: Path, broker: Mosquitto
) -> None:
    conf.write_text(conf.read_text().replace("port = 1", f"port = {broker.port}"))
    assert main(["keys", "init", "--config", str(conf)]) == 0
    key_path, device_key = _device_key_file(tmp_path)
    assert (
        main(["devices", "add", "--config", str(conf), "seal-1", "--key-file", str(key_path)]) == 0
    )
    issued = sealink("permits", "issue", "--config", str(conf), "seal-1", "--count", "5")
    assert json.loads(issued.stdout)["permit"] == 1, issued.stderr
    config = load_config(conf)

    async def body() -> None:
        async with Gateway(config) as gateway:
            host, dev = pipe_pair("cli")
            gateway.attach(host)
            async with SimDevice("seal-1", device_key, dev) as sim:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 15
                while not any(c[0] == 8 and c[1] == 1 for c in sim.commands):  # PERMIT #1
                    assert loop.time() < deadline, f"permit never sent: {sim.commands}"
                    await asyncio.sleep(0.02)
                await sim.stamp(3)
                await sim.wait_acked(3)

    run(body())
    listed = [
        json.loads(line)
        for line in sealink("permits", "list", "--config", str(conf)).stdout.splitlines()
    ]
    assert listed[0]["state"] == "done" and listed[0]["result"] == 0
    out = tmp_path / "events.jsonl"
    assert main(["events", "export", "--config", str(conf), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["counter"] for r in rows] == [1, 2, 3]
    public = json.loads(sealink("keys", "show", "--config", str(conf)).stdout)
    key = COSEKey.from_pem(public["public_pem"].encode(), kid=bytes.fromhex(public["kid"]))
    for row in rows:
        payload = COSE.new().decode(base64.b64decode(row["cose"]), key)
        assert bytes.fromhex(row["event"]) in payload
    # The auditor's offline check agrees, device MACs included.
    pem = tmp_path / "gateway.pub.pem"
    pem.write_text(public["public_pem"])
    verify = [
        "verify",
        str(out),
        "--public-key",
        str(pem),
        "--seal-keys",
        _seal_keys(conf, tmp_path),
    ]
    assert main([*verify, "--device-key", f"seal-1={key_path}"]) == 0


# command validation, quarantine, adopt -------------------------------------------------------


def _registered(conf: Path, tmp_path: Path, device: str = "seal-1") -> bytes:
    key_path, device_key = _device_key_file(tmp_path)
    assert main(["devices", "add", "--config", str(conf), device, "--key-file", str(key_path)]) == 0
    return device_key


def _ledger(conf: Path) -> Ledger:
    return Ledger(load_config(conf, check_key_file=False).ledger_path)


def _queued(conf: Path) -> list[str]:
    return sealink("permits", "list", "--config", str(conf)).stdout.splitlines()


def test_an_out_of_range_permit_is_refused_and_nothing_is_queued(
    conf: Path, tmp_path: Path
) -> None:
    _registered(conf, tmp_path)
    issue = ["permits", "issue", "--config", str(conf), "seal-1", "--count", "5"]
    refused = sealink(*issue, "--permit", "4294967296")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("sealink: error: --permit 4294967296 ")
    assert "4294967296 is out of range for the wire" in refused.stderr
    for extra, option in [
        (["--count", "0"], "--count"),
        (["--operator", "-1"], "--operator"),
        (["--operator", "4294967296"], "--operator"),
        (["--not-before", "100", "--not-after", "99"], "--not-before"),
        (["--valid-for", "-5"], "--not-before"),
        (["--permit", "0"], "--permit"),
    ]:
        done = sealink(*issue, *extra)
        assert done.returncode == 2 and f"error: {option} " in done.stderr, (extra, done.stderr)
    revoke = sealink("permits", "revoke", "--config", str(conf), "seal-1", "4294967296")
    assert revoke.returncode == 2 and "out of range" in revoke.stderr
    assert _queued(conf) == []
    # Ids increase per device: an explicit id must be above every one queued.
    assert sealink(*issue, "--permit", "10").returncode == 0
    lower = sealink(*issue, "--permit", "9")
    assert lower.returncode == 2 and "not above 10" in lower.stderr
    assert json.loads(sealink(*issue).stdout)["permit"] == 11
    assert len(_queued(conf)) == 2


def test_quarantine_is_shown_held_and_released_with_an_audit_trail(
    conf: Path, tmp_path: Path
) -> None:
    _registered(conf, tmp_path)
    _registered(conf, tmp_path, "seal-2")
    ledger = _ledger(conf)
    frame = bytes(range(40))
    ledger.commit(
        Batch(
            devices=[DeviceUpdate("seal-1", quarantine=("chain_break", "EVENT #4: prev"))],
            quarantine=[QuarantineRow("seal-1", "/dev/pts/9", "chain_break", "EVENT #4", frame, 1)],
            rejections=[("/dev/pts/9", "seal-1", "chain_break", 3)],
        )
    )
    ledger.close()
    shown = sealink("devices", "quarantine", "--config", str(conf))
    assert shown.returncode == 0 and "seal-1" in shown.stdout and "chain_break" in shown.stdout
    assert "seal-2" not in shown.stdout
    [held] = [
        json.loads(x)
        for x in sealink("devices", "quarantine", "-c", str(conf), "--json").stdout.splitlines()
    ]
    assert (held["device"], held["reason"], held["detail"]) == (
        "seal-1",
        "chain_break",
        "EVENT #4: prev",
    )
    one = json.loads(sealink("devices", "quarantine", "-c", str(conf), "seal-1", "--json").stdout)
    assert one["quarantine"]["reason"] == "chain_break"
    assert one["rows"][0]["hex"] == frame[:16].hex() and one["rows"][0]["port"] == "/dev/pts/9"
    assert one["rejections"][0]["count"] == 3
    text = sealink("devices", "quarantine", "-c", str(conf), "seal-1").stdout
    assert frame[:16].hex() in text and "chain_break: 3" in text

    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"} | {"USER": "carol"}
    no_note = sealink("devices", "release", "-c", str(conf), "seal-1", env=env)
    assert no_note.returncode == 2 and "--note" in no_note.stderr
    released = sealink(
        "devices", "release", "-c", str(conf), "seal-1", "--note", "checked", env=env
    )
    assert released.returncode == 0, released.stderr
    assert json.loads(released.stdout)["released"]["reason"] == "chain_break"
    hold = ["devices", "quarantine", "-c", str(conf), "seal-2", "--hold", "--note", "audit"]
    held_now = sealink(*hold, "--operator", "dave")
    assert held_now.returncode == 0, held_now.stderr
    again = sealink("devices", "release", "-c", str(conf), "seal-1", "--note", "x", env=env)
    assert again.returncode == 2 and "not quarantined" in again.stderr
    ledger = _ledger(conf)
    actions = [(a.device, a.action, a.operator) for a in ledger.operator_actions(0)]
    ledger.close()
    assert actions == [
        ("seal-1", "quarantine", "gateway"),
        ("seal-1", "release", "carol"),
        ("seal-2", "quarantine", "dave"),
    ]
    # Each command above reopened the ledger: what is held stays held until released.
    listed = {
        d["device"]: d["quarantined"]
        for d in map(json.loads, sealink("devices", "list", "-c", str(conf)).stdout.splitlines())
    }
    assert listed == {"seal-1": False, "seal-2": True}


def _store_chain(
    ledger: Ledger, key: GatewayKey, device_key: bytes, counters: range, prev: bytes
) -> bytes:
    """Countersign and store events `counters` of seal-1 chained from `prev`; the last hash."""
    rows = []
    for counter in counters:
        event = make_event(device_key, counter, prev)
        prev = auth.record_hash(event)
        cose = key.sign1(countersign_payload("seal-1", counter, event, 1_700_000_000_000, "gw-cli"))
        rows.append(EventRow("seal-1", counter, event, prev, cose, 1_700_000_000_000))
    ledger.commit(Batch(events=rows))
    return prev


def test_adopt_signs_a_gap_that_export_and_verify_carry(conf: Path, tmp_path: Path) -> None:
    assert main(["keys", "init", "--config", str(conf)]) == 0
    device_key = _registered(conf, tmp_path)
    key = GatewayKey.load(load_config(conf).key_file)
    ledger = _ledger(conf)
    prev = _store_chain(ledger, key, device_key, range(1, 3), auth.GENESIS)
    # The seal's STATUS said it holds acks up to 5: events 3..5 were acked by a ledger now lost.
    update = DeviceUpdate("seal-1", quarantine=(AHEAD_OF_LEDGER, "acked 5 > 2"), ahead_acked=5)
    ledger.commit(Batch(devices=[update]))
    ledger.close()
    refused = sealink("devices", "release", "-c", str(conf), "seal-1", "--note", "go")
    assert refused.returncode == 2 and "adopt" in refused.stderr
    shown = sealink("devices", "quarantine", "-c", str(conf), "seal-1").stdout
    assert "adopt" in shown and "3..5" in shown
    adopt = ["devices", "adopt", "-c", str(conf), "seal-1", "--note", "ledger restored"]
    adopted = sealink(*adopt, "--operator", "erin")
    assert adopted.returncode == 0, adopted.stderr
    assert json.loads(adopted.stdout)["gap"] == [3, 5]
    ledger = _ledger(conf)
    record = ledger.device_record("seal-1")
    assert record is not None and record.quarantine is None and record.stored == 5
    lost = prev
    for _ in range(3):  # the seal's own chain ran on through the events the ledger lost
        lost = auth.record_hash(lost)
    _store_chain(ledger, key, device_key, range(6, 8), lost)
    [action] = [a for a in ledger.operator_actions(0) if a.action == "adopt"]
    assert action.operator == "erin"
    [outbox] = ledger.pending_outbox(0, 10)
    assert outbox.topic == "cli/seal-1/gaps" and outbox.counter is None
    ledger.close()

    out = tmp_path / "export.jsonl"
    assert main(["events", "export", "--config", str(conf), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("counter") or r["gap"]["first"] for r in rows] == [1, 2, 3, 6, 7]
    cose_key = COSEKey.from_pem(key.public_pem(), kid=key.kid)
    assert b"ledger restored" in COSE.new().decode(base64.b64decode(rows[2]["cose"]), cose_key)
    pem = tmp_path / "gateway.pub.pem"
    pem.write_bytes(key.public_pem())
    seal_keys = _seal_keys(conf, tmp_path)
    verify = sealink("verify", str(out), "--public-key", str(pem), "--seal-keys", seal_keys)
    assert verify.returncode == 3, verify.stderr
    assert json.loads(verify.stdout)["gaps"] == [[3, 5]]
    assert "warning" in verify.stderr and "erin" in verify.stderr
    # Without the gap line the same export is incomplete: a failure, not a warning.
    out.write_text(
        "".join(line + "\n" for line in out.read_text().splitlines() if '"gap"' not in line)
    )
    again = sealink("verify", str(out), "--public-key", str(pem), "--seal-keys", seal_keys)
    assert again.returncode == 1


def test_errors_are_one_line_never_a_traceback(conf: Path, tmp_path: Path) -> None:
    _registered(conf, tmp_path)
    unwritable = sealink("events", "export", "-c", str(conf), "--out", str(tmp_path / "no" / "x"))
    assert unwritable.returncode == 2 and unwritable.stderr.startswith("sealink: error: ")
    unknown = sealink("devices", "release", "-c", str(conf), "nobody", "--note", "x")
    assert unknown.returncode == 2 and "not registered" in unknown.stderr
    no_key = sealink("devices", "adopt", "-c", str(conf), "seal-1", "--note", "x")
    assert no_key.returncode == 2 and "gateway key" in no_key.stderr
    missing = sealink("devices", "list", "-c", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    hold = sealink("devices", "quarantine", "-c", str(conf), "--hold", "--note", "x")
    assert hold.returncode == 2 and "DEVICE" in hold.stderr
