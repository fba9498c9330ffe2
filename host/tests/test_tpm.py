"""The acknowledgement key inside a TPM 2.0 (`[gateway] ack_key_tpm`, SPEC §15), against swtpm:
a real TPM 2.0 (libtpms) with seeds of its own, so a second one is a second machine's TPM.
The gateway started with it, signing ACKs an emulated seal verifies, is in
hil-tests/test_hil_insider.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import provisioning_file, sealink
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from sealink.config import load_config
from sealink.crypto.ackkey import open_ack_key
from sealink.crypto.enrolment import stored_signature
from sealink.crypto.p256 import P256Key
from sealink.crypto.sealkey import SealKey
from sealink.errors import ConfigError, TpmError
from sealink.gateway.service import Gateway
from sealink_sim.swtpm import SwTpm, SwTpmError
from sealproto import auth


def _swtpm(state_dir: Path) -> SwTpm:
    """A started swtpm; a machine without it, or without tpm2-pytss, fails (never skips)."""
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"tpm2-pytss is not installed ({exc}): run `make setup`")
    try:
        return SwTpm(state_dir).start()
    except SwTpmError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def tpm(tmp_path: Path) -> Iterator[SwTpm]:
    started = _swtpm(tmp_path / "tpm")
    try:
        yield started
    finally:
        started.stop()


def _config(folder: Path, tcti: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "sealink.toml"
    tpm = f'ack_key_tpm = "{tcti}"\n' if tcti else ""
    conf.write_text(
        '[gateway]\nid = "gw-tpm"\nkey_file = "keys/gateway.key"\nledger = "ledger.sqlite"\n'
        f'{tpm}[mqtt]\nport = 1\nprefix = "tpm"\n'
    )
    return conf


def _ack_file(conf: Path) -> Path:
    return conf.parent / "keys" / "gateway.ack.key"


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_keys_init_makes_the_ack_key_in_the_tpm_and_it_signs_what_a_seal_accepts(
    tpm: SwTpm, tmp_path: Path
) -> None:
    conf = _config(tmp_path / "gw", tpm.tcti)
    made = sealink("keys", "init", "--config", str(conf))
    assert made.returncode == 0, made.stderr
    assert f"inside the TPM at {tpm.tcti}" in made.stderr
    blob = _ack_file(conf)
    assert blob.stat().st_mode & 0o777 == 0o600
    text = blob.read_bytes()
    assert text.startswith(b"-----BEGIN TSS2 PRIVATE KEY-----")
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(text, password=None)  # no private key in the clear
    shown = json.loads(sealink("keys", "show", "--config", str(conf)).stdout)
    assert shown["ack_key_held"] == (
        f"inside the TPM at {tpm.tcti}; {blob} holds only the TPM-wrapped blob"
    )
    public = bytes.fromhex(shown["ack_key"])

    head = os.urandom(32)
    config = load_config(conf)
    # Loaded and unloaded again and again: swtpm has no resource manager, so a key left
    # loaded each time would fill its three object slots.
    for _ in range(5):
        with open_ack_key(blob, config.ack_key_tpm) as key:
            assert key.public == public
            sig = stored_signature(key, "seal-1", 9, head)
    digest = auth.stored_digest("seal-1", 9, head)
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + public)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    prehashed = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
    point.verify(utils.encode_dss_signature(r, s), digest, prehashed)
    # The seal's check of a STORED signature: P-256 over the digest, r || s, X || Y.
    assert SealKey(public).verify(digest, sig)
    assert not SealKey(public).verify(auth.stored_digest("seal-1", 10, head), sig)

    again = sealink("keys", "init", "--config", str(conf))
    assert again.returncode == 2 and "not overwriting" in again.stderr
    assert blob.read_bytes() == text
    forced = sealink("keys", "init", "--config", str(conf), "--force")
    assert forced.returncode == 0, forced.stderr
    renewed = json.loads(sealink("keys", "show", "--config", str(conf)).stdout)["ack_key"]
    assert bytes.fromhex(renewed) != public


def test_the_key_file_copied_to_another_machines_tpm_signs_nothing(
    tpm: SwTpm, tmp_path: Path
) -> None:
    real = _config(tmp_path / "real", tpm.tcti)
    assert sealink("keys", "init", "--config", str(real)).returncode == 0
    other_tpm = _swtpm(tmp_path / "other-tpm")
    try:
        copy = tmp_path / "copy"
        shutil.copytree(real.parent, copy)
        conf = _config(copy, other_tpm.tcti)
        shown = sealink("keys", "show", "--config", str(conf))
        assert shown.returncode == 2
        assert f"the TPM {other_tpm.tcti} did not make it" in shown.stderr
        assert "copied from another gateway signs nothing here" in shown.stderr
        # The gateway service refuses to start on it rather than send ACKs no seal takes.
        with pytest.raises(TpmError, match="did not make it"):
            Gateway(load_config(conf))
    finally:
        other_tpm.stop()
    # The real TPM still signs with it.
    assert sealink("keys", "show", "--config", str(real)).returncode == 0


def test_a_tpm_that_does_not_answer_is_one_clear_line_and_writes_nothing(tmp_path: Path) -> None:
    nobody = f"swtpm:host=127.0.0.1,port={_unused_port()}"
    conf = _config(tmp_path / "gw", nobody)
    made = sealink("keys", "init", "--config", str(conf))
    assert made.returncode == 2
    assert made.stderr.startswith(f"sealink: error: TPM {nobody}: cannot reach it")
    assert len(made.stderr.splitlines()) == 1, made.stderr  # the TSS's own log stays quiet
    assert not _ack_file(conf).exists() and not (conf.parent / "keys" / "gateway.key").exists()
    unknown = sealink("keys", "init", "--config", str(conf), "--ack-key-tpm", "nosuch:x")
    assert unknown.returncode == 2 and "TPM nosuch:x: cannot reach it" in unknown.stderr
    bad = _config(tmp_path / "bad", "not a tcti")
    refused = sealink("keys", "init", "--config", str(bad))
    assert refused.returncode == 2 and "gateway.ack_key_tpm: must be a TCTI" in refused.stderr
    with pytest.raises(ConfigError):
        load_config(bad, check_key_file=False)


def test_the_wrong_kind_of_key_file_is_named_for_what_it_is(tpm: SwTpm, tmp_path: Path) -> None:
    # A PEM key from before the TPM, with ack_key_tpm set since.
    conf = _config(tmp_path / "pem", None)
    assert sealink("keys", "init", "--config", str(conf)).returncode == 0
    conf = _config(tmp_path / "pem", tpm.tcti)
    shown = sealink("keys", "show", "--config", str(conf))
    assert shown.returncode == 2 and "a private key in the clear" in shown.stderr
    assert "move the file aside, run `sealink keys init`" in shown.stderr
    # Which moves the key into the TPM and keeps the countersigning key verifiers pin.
    kid = json.loads(
        sealink("keys", "show", "--key-file", str(conf.parent / "keys/gateway.key")).stdout
    )["kid"]
    _ack_file(conf).rename(_ack_file(conf).with_suffix(".old"))
    assert sealink("keys", "init", "--config", str(conf)).returncode == 0
    moved = json.loads(sealink("keys", "show", "--config", str(conf)).stdout)
    assert moved["kid"] == kid and moved["ack_key_held"].startswith("inside the TPM")
    # A TPM's blob, with ack_key_tpm left out of the config.
    conf = _config(tmp_path / "blob", tpm.tcti)
    assert sealink("keys", "init", "--config", str(conf)).returncode == 0
    conf = _config(tmp_path / "blob", None)
    shown = sealink("keys", "show", "--config", str(conf))
    assert shown.returncode == 2 and "set [gateway] ack_key_tpm" in shown.stderr
    # Neither.
    _ack_file(conf).write_text("-----BEGIN TSS2 PRIVATE KEY-----\nbm90IGEga2V5\n")
    conf = _config(tmp_path / "blob", tpm.tcti)
    shown = sealink("keys", "show", "--config", str(conf))
    assert shown.returncode == 2 and "not a TPM-wrapped key" in shown.stderr


def test_the_authority_certifies_the_key_in_the_tpm_and_the_gateway_takes_only_that(
    tpm: SwTpm, tmp_path: Path
) -> None:
    conf = _config(tmp_path / "gw", tpm.tcti)
    assert sealink("keys", "init", "--config", str(conf)).returncode == 0
    assert sealink("ledger", "init", "--config", str(conf)).returncode == 0
    seal = tmp_path / "seal-1.json"
    provisioning_file(seal, "seal-1")
    added = sealink("devices", "add", "--config", str(conf), "seal-1", "--key-file", str(seal))
    assert added.returncode == 0, added.stderr
    ack_key = json.loads(sealink("keys", "show", "--config", str(conf)).stdout)["ack_key"]
    authority = tmp_path / "authority.key"
    assert sealink("authority", "init", "--key", str(authority)).returncode == 0
    ours, theirs = tmp_path / "ours.cert", tmp_path / "theirs.cert"
    for out, key in ((ours, ack_key), (theirs, P256Key.generate().public.hex())):
        args = ("--key", str(authority), "--device", "seal-1", "--out", str(out))
        certified = sealink("authority", "certify", *args, "--gateway-key", key)
        assert certified.returncode == 0, certified.stderr
    refused = sealink("devices", "enrol", "--config", str(conf), "seal-1", str(theirs))
    assert refused.returncode == 2 and "another gateway's key" in refused.stderr
    kept = sealink("devices", "enrol", "--config", str(conf), "seal-1", str(ours))
    assert kept.returncode == 0, kept.stderr


def test_without_tpm2_pytss_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tpm2_pytss", None)
    with (
        pytest.raises(TpmError, match=r"pip install 'sealink\[tpm\]'"),
        open_ack_key(tmp_path / "absent", "device:/dev/tpmrm0"),
    ):
        pass
