"""`sealink operators set` and `sealink permits issue --operators` as a user runs them, in a
process of their own: a refusal is one `sealink: error:` line and exit 2, no traceback, the PIN
in no output (SPEC §5.7). What is queued is checked in host/tests/test_operators.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import provisioning_file, sealink
from sealink.cli.main import main
from sealink.commands import command_message
from sealink.config import load_config
from sealink.ledger import Ledger
from sealproto import messages as m


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "sealink.toml"
    path.write_text(
        '[gateway]\nid = "gw-ops"\nkey_file = "keys/gateway.key"\nledger = "ledger.sqlite"\n'
        '[mqtt]\nport = 1\nprefix = "ops"\n'
    )
    assert main(["ledger", "init", "--config", str(path)]) == 0
    key = tmp_path / "device.key"
    provisioning_file(key, "seal-1", 0o600)
    assert main(["devices", "add", "--config", str(path), "seal-1", "--key-file", str(key)]) == 0
    return path


def _queued(conf: Path) -> int:
    return len(Ledger(load_config(conf, check_key_file=False).ledger_path).commands("seal-1"))


def test_operators_set_from_the_command_line(conf: Path, tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("4711\n")
    pin.chmod(0o600)
    args = ["operators", "set", "--config", str(conf), "seal-1", "--id", "2"]
    done = sealink(*args, "--pin-file", str(pin))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pin"] is True
    assert "4711" not in done.stdout + done.stderr
    pin.chmod(0o644)
    refused = sealink(*args, "--pin-file", str(pin))
    assert refused.returncode == 2
    assert (
        refused.stderr.startswith("sealink: error: --pin-file ") and "chmod 600" in refused.stderr
    )
    assert _queued(conf) == 1
    helped = sealink("operators", "set", "--help")
    assert helped.returncode == 0 and "--card-uid" in helped.stdout


def test_permits_issue_names_operators_on_the_wire(conf: Path) -> None:
    issue = ["permits", "issue", "--config", str(conf), "seal-1", "--count", "3"]
    done = sealink(*issue, "--operators", "2,5")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["operators"] == [2, 5]
    plain = sealink(*issue)
    assert "operators" not in json.loads(plain.stdout)
    named, anyone = Ledger(load_config(conf, check_key_file=False).ledger_path).commands("seal-1")
    assert command_message(named.kind, named.body)[m.PE_OPERATORS] == struct.pack(">II", 2, 5)
    assert m.PE_OPERATORS not in command_message(anyone.kind, anyone.body), "as before"
    for bad, why in [
        ("0", "--operators ids must be 1..4294967295"),
        ("1,2,3,4,5", "--operators names 5; a permit names at most 4"),
        ("two", "operator ids, comma-separated"),
    ]:
        refused = sealink(*issue, "--operators", bad)
        assert refused.returncode == 2 and why in refused.stderr, (bad, refused.stderr)
    assert _queued(conf) == 2
