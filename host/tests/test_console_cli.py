"""`sealink console` on the command line: its files, accounts and audit trail, and every bad
input as one `sealink: error:` line with exit status 2 (no browser, no broker needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import sealink
from sealink.crypto.signer import GatewayKey


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "gw.pub.pem").write_bytes(GatewayKey.generate().public_pem())
    path = tmp_path / "console.toml"
    path.write_text(
        '[console]\nlisten = "127.0.0.1:0"\ndata_dir = "data"\nsecret_key_file = "secret"\n'
        '[[gateways]]\nid = "gw-1"\npublic_key = "gw.pub.pem"\n'
    )
    return path


def _password(tmp_path: Path, text: str = "a long enough password") -> str:
    path = tmp_path / "pw"
    path.write_text(text + "\n")
    return str(path)


def _error(*args: str) -> str:
    done = sealink("console", *args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("sealink: error: "), done.stderr
    return done.stderr


def test_init_users_and_the_audit_trail(config: Path, tmp_path: Path) -> None:
    c = ("--config", str(config))
    assert sealink("console", "init", *c).returncode == 0
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "data" / "console.sqlite").stat().st_mode & 0o077 == 0
    assert "exists already" in _error("init", *c)  # the secret is never replaced
    pw = _password(tmp_path)
    add = ("user", "add", "oscar", "--role", "operator", "--password-file", pw, *c)
    assert sealink("console", *add).returncode == 0
    assert "exists already" in _error(*add)
    assert sealink("console", "user", "disable", "oscar", *c).returncode == 0
    assert "no account" in _error("user", "disable", "nobody", *c)
    listed = sealink("console", "user", "list", *c).stdout.split("\t")
    assert listed[:3] == ["oscar", "operator", "disabled"], listed
    rows = [
        json.loads(line) for line in sealink("console", "audit", "--json", *c).stdout.splitlines()
    ]
    assert [(r["action"], r["target"]) for r in rows] == [
        ("user add", "oscar"),
        ("user disable", "oscar"),
    ]
    text = sealink("console", "audit", *c).stdout
    assert "user add\toscar\tok" in text
    # The hash is argon2id; the password is in no file the console wrote.
    db = (tmp_path / "data" / "console.sqlite").read_bytes()
    assert b"$argon2id$" in db and b"a long enough password" not in db


def test_bad_input_is_one_error_line(config: Path, tmp_path: Path) -> None:
    c = ("--config", str(config))
    assert "--config FILE" in _error("user", "list")
    assert "make it with `sealink console init`" in _error(*c)
    sealink("console", "init", *c)
    short = _password(tmp_path, "short")
    assert "at least 8" in _error("user", "add", "a", "--role", "viewer", "--password-file",
                                  short, *c)  # fmt: skip
    os.chmod(tmp_path / "secret", 0o644)
    assert "secret" in _error(*c)
    bad = tmp_path / "bad.toml"
    for text, named in (
        ("[console]\nlisten = 'nowhere'\n", "console.listen"),
        ("[console]\nlisten = '127.0.0.1:0'\nwhat = 1\n", "console.what"),
        (config.read_text().replace('"gw.pub.pem"', '"missing.pem"'), "gateways[0].public_key"),
        (config.read_text() + 'approver = "x"\n', "gateways[0]"),
        (config.read_text().replace("[[gateways]]", 'approver = "x"\n[[gateways]]'), "approver"),
    ):
        bad.write_text(text)
        assert named in _error("user", "list", "--config", str(bad)), text
