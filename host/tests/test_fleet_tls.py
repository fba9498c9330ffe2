"""`sealink fleet serve` over HTTPS ([serve] tls_cert_file, tls_key_file), real uvicorn on a
loopback port and a real PostgreSQL: a client that trusts the CA gets its pages, one that
trusts another CA is refused the handshake, plain HTTP gets no answer; a key others may read, a
missing key, half of the pair or a key of another certificate is one error line, no traceback.

The certificates are made as the Mosquitto TLS tests make theirs (test_mqtt_tls.make_pki).
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import sealink
from fleet_rig import _rig, _served, _tls_config
from pki_rig import Pki, make_pki
from sealink_sim.postgres import PostgresCluster


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def test_the_api_is_served_over_https_only(
    cluster: PostgresCluster,
    tmp_path: Path,
    pki: Pki,
) -> None:
    rig = _rig(cluster, tmp_path)
    config = _tls_config(rig, "https", tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    trusting = ssl.create_default_context(cafile=str(pki.ca))  # checks the chain and the name
    try:
        with _served(dataclasses.replace(rig, config_path=config), trusting) as api:
            assert api.url.startswith("https://127.0.0.1:")
            assert api.get("/v1/records", api.token) == (200, {"items": [], "next": None})
            assert api.get("/v1/records") == (401, {"error": "unauthorized"})
            other = ssl.create_default_context(cafile=str(pki.other_ca))
            with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
                urllib.request.urlopen(f"{api.url}/v1/records", timeout=10, context=other)
            plain = api.url.replace("https://", "http://")
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                urllib.request.urlopen(f"{plain}/v1/records", timeout=10)
    finally:
        rig.store.close()


def test_a_tls_pair_that_will_not_load_is_one_error_line(
    cluster: PostgresCluster,
    tmp_path: Path,
    pki: Pki,
) -> None:
    rig = _rig(cluster, tmp_path)
    rig.store.close()
    readable = tmp_path / "readable.key"
    readable.write_bytes(pki.server_key.read_bytes())
    os.chmod(readable, 0o644)
    cert = pki.server_cert
    for files, key, words in (
        ({"tls_cert_file": cert}, "serve.tls_key_file", "go together"),
        ({"tls_cert_file": cert, "tls_key_file": tmp_path / "none.key"},
         "serve.tls_key_file", "cannot read"),
        ({"tls_cert_file": cert, "tls_key_file": readable}, "serve.tls_key_file", "chmod 600"),
        ({"tls_cert_file": cert, "tls_key_file": pki.client_key}, "serve.tls_cert_file",
         "not a PEM certificate and its unencrypted private key"),  # another certificate's
    ):  # fmt: skip
        config = _tls_config(rig, "bad", **files)
        done = sealink("fleet", "serve", "--config", str(config), "--listen", "127.0.0.1:0")
        assert done.returncode != 0 and not done.stdout, (files, done.stdout)
        assert key in done.stderr and words in done.stderr, (files, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
