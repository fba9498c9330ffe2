"""Enrolment (SPEC §5.11) on the gateway side: the authority's CLI, certificates, the ledger's
copy of them, and `sealink devices enrol`'s refusals. The seal's side (its chip checks both
signatures) is in firmware/tests/mpy/mp_enrol.py and the hil-tests."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from conftest import provisioning_file, sealink
from sealink.crypto.enrolment import Certificate, certify
from sealink.crypto.keystore import LinkKeyStore
from sealink.crypto.p256 import P256Key
from sealink.crypto.sealkey import SealKey
from sealink.errors import DeviceError, KeyFileError
from sealink.ledger.sqlite import Ledger
from sealink_sim.simdevice import SimChip
from sealproto import auth, cbor, messages
from sealproto.errors import DecodeError


@pytest.fixture
def gateway(tmp_path: Path) -> Path:
    """A gateway's config with its keys made and one seal registered."""
    conf = tmp_path / "sealink.toml"
    conf.write_text(
        '[gateway]\nid = "gw-enrol"\nkey_file = "keys/gateway.key"\nledger = "ledger.sqlite"\n'
        '[mqtt]\nport = 1\nprefix = "enrol"\n'
    )
    assert sealink("keys", "init", "--config", str(conf)).returncode == 0
    assert sealink("ledger", "init", "--config", str(conf)).returncode == 0
    key_file = tmp_path / "seal-1.json"
    provisioning_file(key_file, "seal-1")
    added = sealink("devices", "add", "--config", str(conf), "seal-1", "--key-file", str(key_file))
    assert added.returncode == 0, added.stderr
    return conf


def _ack_key(conf: Path) -> str:
    shown = sealink("keys", "show", "--config", str(conf))
    return str(json.loads(shown.stdout)["ack_key"])


def _enrolment(conf: Path) -> object:
    listed = sealink("devices", "list", "--config", str(conf))
    return json.loads(listed.stdout.splitlines()[0])["enrolment"]


def test_the_authority_certifies_and_the_gateway_keeps_the_certificate(
    gateway: Path, tmp_path: Path
) -> None:
    key = tmp_path / "authority.key"
    made = sealink("authority", "init", "--key", str(key))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    authority = bytes.fromhex(made.stdout.strip())
    cert_file = tmp_path / "seal-1.cert"
    args = ("--key", str(key), "--device", "seal-1", "--serial", "7", "--out", str(cert_file))
    certified = sealink("authority", "certify", *args, "--gateway-key", _ack_key(gateway))
    assert certified.returncode == 0, certified.stderr
    cert = Certificate.load(cert_file)
    assert cert.signed_by(authority) and not cert.signed_by(bytes.fromhex(_ack_key(gateway)))
    kept = sealink("devices", "enrol", "--config", str(gateway), "seal-1", str(cert_file))
    assert kept.returncode == 0, kept.stderr
    assert _enrolment(gateway) == 7
    # A revocation of a later serial replaces it; the earlier certificate cannot come back.
    revoked = tmp_path / "revoked.cert"
    args = ("--key", str(key), "--device", "seal-1", "--serial", "8", "--out", str(revoked))
    assert sealink("authority", "revoke", *args).returncode == 0
    assert (
        sealink("devices", "enrol", "--config", str(gateway), "seal-1", str(revoked)).returncode
        == 0
    )
    assert _enrolment(gateway) == 8
    back = sealink("devices", "enrol", "--config", str(gateway), "seal-1", str(cert_file))
    assert back.returncode == 2 and "later serial" in back.stderr


def test_enrol_refuses_a_certificate_for_another_seal_or_another_gateway(
    gateway: Path, tmp_path: Path
) -> None:
    authority = P256Key.generate()
    other = tmp_path / "other.cert"
    other.write_text(certify(authority, "seal-2", bytes.fromhex(_ack_key(gateway))).to_json())
    refused = sealink("devices", "enrol", "--config", str(gateway), "seal-1", str(other))
    assert refused.returncode == 2 and "enrols seal-2, not seal-1" in refused.stderr
    elsewhere = tmp_path / "elsewhere.cert"
    elsewhere.write_text(certify(authority, "seal-1", P256Key.generate().public).to_json())
    refused = sealink("devices", "enrol", "--config", str(gateway), "seal-1", str(elsewhere))
    assert refused.returncode == 2 and "another gateway's key" in refused.stderr
    broken = tmp_path / "broken.cert"
    broken.write_text('{"device": "seal-1", "serial": 0}')
    refused = sealink("devices", "enrol", "--config", str(gateway), "seal-1", str(broken))
    assert refused.returncode == 2 and "not an enrolment certificate" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _enrolment(gateway) is None


def test_a_certificate_file_is_checked_field_by_field() -> None:
    authority = P256Key.generate()
    good = certify(authority, "seal-1", P256Key.generate().public, serial=3)
    assert Certificate.from_json(good.to_json(), "x") == good
    for broken in (
        {**json.loads(good.to_json()), "gateway_key": "04"},
        {**json.loads(good.to_json()), "serial": 2**32},
        {**json.loads(good.to_json()), "device": "seal 1"},
        {**json.loads(good.to_json()), "signature": "00" * 63},
    ):
        with pytest.raises(KeyFileError):
            Certificate.from_json(json.dumps(broken), "x")
    with pytest.raises(ValueError):
        certify(authority, "seal-1", bytes(64))  # not a point on P-256


def test_the_stored_statement_is_what_the_gateway_signs() -> None:
    key = P256Key.generate()
    head = os.urandom(32)
    sig = key.sign(auth.stored_digest("seal-1", 9, head))
    assert SealKey(key.public).verify(auth.stored_digest("seal-1", 9, head), sig)
    assert not SealKey(key.public).verify(auth.stored_digest("seal-1", 10, head), sig)
    assert not SealKey(key.public).verify(auth.stored_digest("seal-2", 9, head), sig)
    statement = {0: messages.STORED, 1: "seal-1", 2: 9, 3: head}
    with pytest.raises(DecodeError):
        messages.decode(cbor.dumps(statement))


def test_a_schema_5_ledger_gains_the_enrolment_column(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    keys = LinkKeyStore(tmp_path / "link-keys")
    ledger = Ledger(path, keys, create=True)
    ledger.add_device("seal-1", os.urandom(32), SimChip().public)
    ledger.close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE devices DROP COLUMN enrolment")
        db.execute("UPDATE meta SET value = '5' WHERE key = 'schema'")
    db.close()
    ledger = Ledger(path, keys)
    record = ledger.device_record("seal-1")
    assert record is not None and record.enrolment is None
    cert = certify(P256Key.generate(), "seal-1", P256Key.generate().public, serial=4)
    ledger.enrol("seal-1", cert.to_json(), cert.serial)
    record = ledger.device_record("seal-1")
    assert record is not None and Certificate.from_json(record.enrolment or "", "x") == cert
    with pytest.raises(DeviceError):
        ledger.enrol("seal-9", cert.to_json(), cert.serial)
    ledger.close()
