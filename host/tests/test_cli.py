"""`sealink` commands: keys, devices, permits, events; --help everywhere; secrets stay 0600."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run
from cwt import COSE, COSEKey
from sealink.cli.main import build_parser, main
from sealink.config import load_config
from sealink.gateway.service import Gateway
from sealink_sim.broker import Mosquitto
from sealink_sim.pipe import pipe_pair
from sealink_sim.simdevice import SimDevice


def sealink(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sealink.cli", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "sealink.toml"
    path.write_text(
        '[gateway]\nid = "gw-cli"\nkey_file = "keys/gateway.key"\nledger = "ledger.sqlite"\n'
        '[mqtt]\nport = 1\nprefix = "cli"\n'
    )
    return path


def _device_key_file(tmp_path: Path, mode: int = 0o600) -> tuple[Path, bytes]:
    key = os.urandom(32)
    path = tmp_path / "device.key"
    path.write_text(key.hex() + "\n")
    os.chmod(path, mode)
    return path, key


def test_help_everywhere() -> None:
    parser = build_parser()
    commands = [
        [],
        ["run"],
        ["keys"],
        ["keys", "init"],
        ["keys", "show"],
        ["devices"],
        ["devices", "add"],
        ["devices", "list"],
        ["permits"],
        ["permits", "issue"],
        ["permits", "revoke"],
        ["permits", "list"],
        ["events"],
        ["events", "list"],
        ["events", "export"],
        ["demo"],
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
    again = sealink("keys", "init", "--config", str(conf))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_a_group_readable_gateway_key_is_refused(conf: Path) -> None:
    assert main(["keys", "init", "--config", str(conf)]) == 0
    key_file = conf.parent / "keys" / "gateway.key"
    os.chmod(key_file, 0o640)
    shown = sealink("keys", "show", "--config", str(conf))
    assert shown.returncode == 2 and "chmod 600" in shown.stderr


def test_devices_add_requires_a_0600_key_file(conf: Path, tmp_path: Path) -> None:
    loose, _ = _device_key_file(tmp_path, 0o644)
    refused = sealink("devices", "add", "--config", str(conf), "seal-1", "--key-file", str(loose))
    assert refused.returncode == 2 and "chmod 600" in refused.stderr
    os.chmod(loose, 0o600)
    assert main(["devices", "add", "--config", str(conf), "seal-1", "--key-file", str(loose)]) == 0
    listed = sealink("devices", "list", "--config", str(conf))
    assert json.loads(listed.stdout)["device"] == "seal-1"
    # The ledger holds device keys: it is private too.
    ledger = load_config(conf, check_key_file=False).ledger_path
    assert stat.S_IMODE(ledger.stat().st_mode) == 0o600


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
    verify = ["verify", str(out), "--public-key", str(pem), "--device-key", f"seal-1={key_path}"]
    assert main(verify) == 0
