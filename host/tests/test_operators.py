"""`sealink operators set` and a permit's operators (SPEC §5.7): what is queued, what the wire
then carries, and that a bad PIN, card or id is refused with nothing queued. The command runs
in this process, as its own parser registers it (host/tests/test_operators_cli.py runs the
installed `sealink` in a process of its own). The seal's side runs in
firmware/tests/mpy/mp_ident.py and hil-tests/test_hil_operators.py."""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
from pathlib import Path

import pytest
from conftest import provisioning_file
from sealink.cli import operators
from sealink.cli.main import main
from sealink.commands import CommandFieldError, command_message, validate_command
from sealink.config import load_config
from sealink.errors import CommandError
from sealink.ledger import Command, Ledger
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


def _pin_file(tmp_path: Path, pin: str, mode: int = 0o600) -> Path:
    path = tmp_path / f"pin-{len(list(tmp_path.glob('pin-*')))}"
    path.write_text(pin + "\n")
    path.chmod(mode)
    return path


def _commands(conf: Path) -> list[Command]:
    return Ledger(load_config(conf, check_key_file=False).ledger_path).commands("seal-1")


def _run(conf: Path, *args: str) -> int:
    parser = argparse.ArgumentParser(prog="sealink")
    operators.register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["operators", "set", "--config", str(conf), "seal-1", *args])
    code: int = parsed.fn(parsed)
    return code


def _set(conf: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    capsys.readouterr()
    assert _run(conf, *args) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_operators_set_queues_salted_hashes_with_a_fresh_salt_each_time(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Eight digits: a 4-digit PIN turns up by chance in the ledger's hex (hashes, salts, keys)
    # about one run in 200, which made the plaintext check below fail with nothing leaked.
    pin = _pin_file(tmp_path, "47110815")
    shown = _set(conf, capsys, "--id", "2", "--pin-file", str(pin), "--card-uid", "04:a2:2b:91")
    assert shown == {"command": 1, "device": "seal-1", "operator": 2, "pin": True, "card": True}
    _set(conf, capsys, "--id", "2", "--pin-file", str(pin))
    first, second = _commands(conf)
    assert first.kind == second.kind == "operator"
    salt = bytes.fromhex(first.body["salt"])
    assert len(salt) == m.SALT_LEN
    assert first.body["pin"] == hashlib.sha256(salt + b"47110815").hexdigest()
    assert first.body["card"] == hashlib.sha256(salt + bytes.fromhex("04a22b91")).hexdigest()
    assert second.body["salt"] != first.body["salt"], "a fresh salt for every OPERATOR"
    assert second.body["card"] == ""
    wire = command_message(first.kind, first.body)
    assert wire == {
        m.K_TYPE: m.OPERATOR,
        m.OP_ID: 2,
        m.OP_SALT: salt,
        m.OP_PIN: bytes.fromhex(first.body["pin"]),
        m.OP_CARD: bytes.fromhex(first.body["card"]),
    }
    m.encode({**wire, m.K_SEQ: 1})
    ledger_bytes = load_config(conf, check_key_file=False).ledger_path.read_bytes()
    assert b"47110815" not in ledger_bytes, "only the hash is stored"
    removed = _set(conf, capsys, "--id", "2", "--remove")
    assert (removed["pin"], removed["card"]) == (False, False)
    gone = command_message("operator", _commands(conf)[-1].body)
    assert (gone[m.OP_PIN], gone[m.OP_CARD]) == (b"", b"")


def test_a_bad_pin_or_card_is_a_clear_error_and_nothing_is_queued(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["--id", "2", "--pin-file", str(_pin_file(tmp_path, "4711", 0o644))], "chmod 600"),
        (["--id", "2", "--pin-file", str(_pin_file(tmp_path, "47a1"))], "4 to 8 digits"),
        (["--id", "2", "--pin-file", str(_pin_file(tmp_path, "471"))], "4 to 8 digits"),
        (["--id", "2", "--pin-file", str(_pin_file(tmp_path, "123456789"))], "4 to 8 digits"),
        (["--id", "2", "--pin-file", str(tmp_path / "absent")], "--pin-file"),
        (["--id", "2", "--card-uid", "zz"], "is not hex"),
        (["--id", "2", "--card-uid", "0102030405"], "4, 7 or 10"),
        (["--id", "2"], "or --remove"),
        (["--id", "2", "--remove", "--card-uid", "01020304"], "or --remove"),
        (["--id", "0", "--card-uid", "01020304"], "--id 0 is out of range for the wire"),
        (["--id", "4294967296", "--card-uid", "01020304"], "--id 4294967296 is out of range"),
    ]
    for args, why in cases:
        with pytest.raises(CommandError) as refused:
            _run(conf, *args)
        assert why in str(refused.value), (args, refused.value)
        assert "4711" not in str(refused.value) + "".join(capsys.readouterr())
    assert _commands(conf) == []


def test_a_permit_naming_operators_is_key_6_on_the_wire() -> None:
    body = {"permit": 4, "count": 3, "not_before_s": 0, "not_after_s": 0, "operators": [2, 5]}
    wire = command_message("permit", body)
    assert wire[m.PE_OPERATORS] == struct.pack(">II", 2, 5)
    m.encode({**wire, m.K_SEQ: 1})
    del body["operators"]
    assert m.PE_OPERATORS not in command_message("permit", body), "a permit for anyone"
    for bad, why in [
        ([], "must be a list of operator ids"),
        ([0], "ids must be 1..4294967295"),
        ([2**32], "ids must be 1..4294967295"),
        ([1, 2, 3, 4, 5], "names 5; a permit names at most 4"),
        ([True], "must be a list of operator ids"),
        ("2", "must be a list of operator ids"),
    ]:
        with pytest.raises(CommandFieldError, match=why) as refused:
            validate_command("permit", {**body, "operators": bad})
        assert refused.value.field == "operators"
