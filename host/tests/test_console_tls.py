"""`sealink console` over HTTPS ([console] tls_cert_file, tls_key_file): a browser logs in and
gets its live stream over TLS, the certificate the console serves chains to the CA that made
it, the session cookie is Secure; a key readable by others, a key that is not the
certificate's, or half of the pair is refused with one error line.

The certificates are made as the Mosquitto TLS tests make theirs (pki_rig.make_pki).
Headless Chromium does not know that test CA: the browser's context ignores certificate
errors, and Python's ssl, given the CA, checks the chain and the name instead.
"""

from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import GatewayFiles, run, sealink
from console_rig import (
    CHROMIUM,
    WAIT_MS,
    ConsoleRig,
    _login,
    _prepare,
    _shot,
    _write_config,
    browser,
    started,
)
from pki_rig import Pki, make_pki
from sealink_sim.broker import Mosquitto

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (tools/setup-system.sh installs it)"
)


def _tls_lines(cert: Path, key: Path) -> str:
    return f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"'


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_console(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto, pki: Pki
) -> Iterator[ConsoleRig]:
    tls = _tls_lines(pki.server_cert, pki.server_key)
    with started(tmp_path, files, broker, "tls_console", extra=tls) as rig:
        yield rig


def _get(url: str, context: ssl.SSLContext | None) -> tuple[int, str]:
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return response.status, response.read().decode()


def test_an_operator_logs_in_over_https(tls_console: ConsoleRig, pki: Pki) -> None:
    assert tls_console.url.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(pki.ca))
    status, page = _get(f"{tls_console.url}/login", trusting)
    assert status == 200 and 'id="password"' in page
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(f"{tls_console.url}/login", ssl.create_default_context(cafile=str(pki.other_ca)))
    plain = tls_console.url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _get(f"{plain}/login", None)  # no plain HTTP on the TLS port

    async def body() -> None:
        async with browser() as chromium:
            context = await chromium.new_context(ignore_https_errors=True)
            page = await context.new_page()
            await _login(page, tls_console, "oscar")
            await page.wait_for_selector("#impressions", state="attached", timeout=WAIT_MS)
            await page.wait_for_selector(".live.on", timeout=WAIT_MS)  # the event stream
            await _shot(page, tls_console, "logged-in-over-https")
            [cookie] = [c for c in await context.cookies() if c["name"] == "sealink_console"]
            assert cookie["secure"] and cookie["httpOnly"], cookie

    run(body(), timeout=60)
    assert ("oscar", "login", "ok") in [
        (r["user"], r["action"], r["outcome"]) for r in tls_console.audit()
    ]


def test_a_bad_tls_pair_is_one_error_line(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto, pki: Pki
) -> None:
    _prepare(tmp_path, files, broker, False)

    def refused(extra: str) -> str:
        config = _write_config(tmp_path, files, broker, False, extra)
        done = sealink("console", "--config", str(config))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("sealink: error: "), done.stderr
        return lines[0]

    os.chmod(pki.server_key, 0o644)
    error = refused(_tls_lines(pki.server_cert, pki.server_key))
    assert "console.tls_key_file" in error and f"chmod 600 {pki.server_key}" in error
    os.chmod(pki.server_key, 0o600)
    error = refused(_tls_lines(pki.server_cert, pki.client_key))  # another certificate's key
    assert "console.tls_cert_file" in error and "not a PEM certificate and its" in error
    error = refused(f'tls_cert_file = "{pki.server_cert}"')
    assert "console.tls_key_file" in error and "go together" in error
