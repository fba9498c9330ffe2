"""The console's Records page on the fleet ledger (issue 14), all real parts: a gateway's ledger
of countersigned, chained records (evidence_rig) ingested by the fleet (FleetService) into a
real PostgreSQL, `sealink fleet serve` over HTTPS with a test CA (pki_rig), `sealink console`
in its own process pointed at it by [fleet], and Debian's headless Chromium through Playwright.

Search by seal, document, permit, organisation and time returns exactly the records stored;
paging through every record shows each once; a bundle downloads and the auditor's verifier
accepts it; a token the fleet refuses, a fleet that is down or a certificate not of the CA
are said plainly on the page; a redirect is not followed (the token stays with [fleet] url);
a token file others may read or plain HTTP to another host stop the console's config.

The bundle the fleet serves is one it keeps in PostgreSQL (`bundles`), made by `sealink
evidence bundle` from the same ledger: how the fleet fetches one from a gateway is
test_fleet_bundles' (a record it keeps none of, with no approver, is its 503 here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import GatewayFiles, run, sealink
from console_rig import CHROMIUM, WAIT_MS, ConsoleRig, _login, _shot, _write_config, browser
from console_rig import started as started_console
from evidence_rig import GATEWAY, SEAL_KEY
from evidence_rig import Rig as GatewayLedger
from fleet_rig import PREFIX, Api, Rig, _permit_result, _served, _tls_config
from pki_rig import Pki, make_pki
from playwright.async_api import Page
from sealink.console import load_console_config
from sealink.errors import ConfigError
from sealink.fleet import FleetService, Store, load_config
from sealink_sim.broker import Mosquitto
from sealink_sim.fleetrig import write_fleet_config
from sealink_sim.postgres import PostgresCluster
from sealink_verify.bundle import read_bundle, verify_bundle

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")

DOC_A, DOC_B = "a1" * 32, "b2" * 32  # permit 7 of seal-a is for DOC_A; permit 7 of seal-c, DOC_B
# seal -> its records, in order: (how many, under which permit)
STAMPS = {
    "seal-a": [(10, 0), (5, 7), (45, 0)],
    "seal-b": [(25, 0)],
    "seal-c": [(12, 7), (8, 0)],
}
KEPT = ("seal-a", 3)  # the record whose bundle the fleet keeps
PAGE = 50  # the Records page's rows a page (sealink.console.fleetapi.PAGE_LIMIT)


@dataclass
class Fleet:
    api: Api
    pki: Pki
    gateway_key: bytes  # the gateway's public key, raw
    records: list[tuple[str, int]]  # every (device, counter) the fleet holds, by key


def _stored(dsn: str) -> list[tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT device, counter FROM records ORDER BY device, counter")
        return [(str(d), int(c)) for d, c in rows]


def _ledger(root: Path) -> tuple[GatewayLedger, bytes]:
    """The gateway's ledger of STAMPS, checkpointed, and the bundle of KEPT it makes."""
    ledger = GatewayLedger(root)
    ledger.key.save(root / "gateway.key")
    for device, runs in STAMPS.items():
        for count, permit in runs:
            ledger.add(device, count, permit=permit)
    ledger.checkpoint()
    out = root / "kept.bundle.json"
    assert ledger.cli("evidence", "bundle", KEPT[0], str(KEPT[1]), "-o", str(out)) == 0
    return ledger, out.read_bytes()


@pytest.fixture(scope="module")
def fleet(cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    (root / "gw").mkdir()
    ledger, bundle = _ledger(root / "gw")
    pem = root / f"{GATEWAY}.pem"
    pem.write_bytes(ledger.pem())
    dsn = cluster.database(f"t_{uuid.uuid4().hex[:12]}")
    config = write_fleet_config(
        root / "fleet.toml", database=dsn, instance="fleet-c", port=1, prefix=PREFIX,
        gateways={GATEWAY: pem},
    )  # fmt: skip
    assert sealink("fleet", "migrate", "--config", str(config)).returncode == 0
    store = Store(dsn)
    try:
        store.import_seal_keys([(device, SEAL_KEY) for device in STAMPS], source="test")
        for device, org in (("seal-a", "coop-a"), ("seal-c", "coop-c")):
            done = sealink("fleet", "devices", "set-org", device, org, "--config", str(config))
            assert done.returncode == 0, done.stderr
        rig = Rig(dsn, config, [], store, FleetService(load_config(config), store))
        events = [(f"{PREFIX}/{e['device']}/events", e["cose"]) for e in ledger.ledger.events()]
        assert rig.write(events).stored == sum(n for runs in STAMPS.values() for n, _ in runs)
        rig.write([
            _permit_result(ledger.key, GATEWAY, "seal-a", 7, DOC_A, "delivered"),
            _permit_result(ledger.key, GATEWAY, "seal-c", 7, DOC_B, "delivered"),
        ])  # fmt: skip
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "INSERT INTO bundles (device, counter, gateway, bundle, fetched_ms) "
                "VALUES (%s, %s, %s, %s, 0)",
                (*KEPT, GATEWAY, bundle),
            )
        pki = make_pki(root / "pki")
        https = _tls_config(
            rig, "https", tls_cert_file=pki.server_cert, tls_key_file=pki.server_key
        )
        trusting = ssl.create_default_context(cafile=str(pki.ca))
        with _served(dataclasses.replace(rig, config_path=https), trusting) as api:
            yield Fleet(api, pki, ledger.key.public_raw(), _stored(dsn))
    finally:
        store.close()
        ledger.ledger.close()


def _fleet_table(tmp_path: Path, url: str, token: str, ca: Path) -> str:
    token_file = tmp_path / "fleet.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    return f'[fleet]\nurl = "{url}"\ntoken_file = "{token_file}"\nca_file = "{ca}"\n'


@contextlib.contextmanager
def _console(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto, name: str, table: str
) -> Iterator[ConsoleRig]:
    with started_console(tmp_path, files, broker, name, tables=table) as rig:
        yield rig
    log = rig.config.with_name("console.log").read_text(errors="replace")
    token = (tmp_path / "fleet.token").read_text().strip()
    assert token not in log  # never logged


async def _rows(page: Page) -> list[tuple[str, int]]:
    rows = await page.eval_on_selector_all(
        "tr.record", "rows => rows.map(r => [r.dataset.device, Number(r.dataset.counter)])"
    )
    return [(str(d), int(c)) for d, c in rows]


async def _search(page: Page, **fields: str) -> list[tuple[str, int]]:
    """The Records form filled with `fields` (by input id suffix) and sent."""
    for name, value in fields.items():
        await page.fill(f"#records-{name}", value)
    async with page.expect_navigation(timeout=WAIT_MS):
        await page.click("#records-button")
    return await _rows(page)


async def _every_page(page: Page) -> tuple[list[tuple[str, int]], int]:
    """The rows of this page and of each one its "Next page" link leads to; how many pages."""
    seen, pages = await _rows(page), 1
    while await page.locator("#records-next").count():
        async with page.expect_navigation(timeout=WAIT_MS):
            await page.click("#records-next")
        seen += await _rows(page)
        pages += 1
    return seen, pages


async def _bundle(page: Page, counter: int, tmp_path: Path) -> Path:
    async with page.expect_download(timeout=WAIT_MS) as info:
        await page.click(f'tr.record[data-counter="{counter}"] .bundle-button')
    path = tmp_path / f"downloaded-{counter}.bundle.json"
    await (await info.value).save_as(path)
    return path


async def _found_by_each_filter(page: Page, console: ConsoleRig, fleet: Fleet) -> None:
    """Each filter alone finds exactly the records the test stored for it."""
    assert await _search(page, device="seal-b") == [("seal-b", c) for c in range(1, 26)]
    assert await page.locator("#records-next").count() == 0  # one page holds them
    await _shot(page, console, "01-by-seal")
    by_doc = await _search(page, device="", document=DOC_A.upper())
    assert by_doc == [("seal-a", c) for c in range(11, 16)]
    assert await _search(page, document=DOC_B) == [("seal-c", c) for c in range(1, 13)]
    under_7 = [*by_doc, *(("seal-c", c) for c in range(1, 13))]
    assert await _search(page, document="", permit="7") == under_7
    assert await _search(page, permit="", org="coop-c") == [("seal-c", c) for c in range(1, 21)]
    # Received at 22:13:20.001 + counter ms (evidence_rig): an hour before it holds none.
    assert await _search(page, org="", since="2023-11-14T21:13", until="2023-11-14T22:13") == []
    await _search(page, since="", until="", permit="seven")
    assert "permit: a whole number" in await page.inner_text("#error")
    await page.fill("#records-permit", "")
    markup = '"><b id="injected">coop</b>'  # echoed in the form, and passed to the fleet
    assert await _search(page, org=markup) == []
    assert await page.locator("#injected").count() == 0
    assert await page.input_value("#records-org") == markup
    await page.fill("#records-org", "")


async def _every_record_once(page: Page, console: ConsoleRig, fleet: Fleet) -> None:
    """Paged through, every record comes once: by key, and by time when time alone filters."""
    await _search(page)
    seen, pages = await _every_page(page)
    assert seen == fleet.records  # in (device, counter) order: none twice, none missed
    assert pages == -(-len(fleet.records) // PAGE) > 1
    await _shot(page, console, "02-last-page")
    await _search(page, since="2023-11-14T22:13", until="2023-11-14T22:14")
    seen, pages = await _every_page(page)
    assert seen == sorted(fleet.records, key=lambda r: (r[1], r[0]))  # (received_ms, device)
    assert pages == -(-len(fleet.records) // PAGE)
    await page.fill("#records-since", "")
    await page.fill("#records-until", "")


async def _bundles(page: Page, console: ConsoleRig, fleet: Fleet, tmp_path: Path) -> None:
    """The kept bundle downloads and verifies; one the fleet cannot give is said so."""
    await _search(page, device=KEPT[0])
    bundle = await _bundle(page, KEPT[1], tmp_path)
    # Under the keys the test pinned, not the bundle's own.
    report = verify_bundle(read_bundle(bundle.read_text()), fleet.gateway_key, SEAL_KEY)
    assert report.status == "verified", report.problems
    await page.click('tr.record[data-counter="4"] .bundle-button')
    error = await page.wait_for_selector("#error", timeout=WAIT_MS)
    text = await error.inner_text()
    assert "answered 503" in text and "not configured" in text, text
    await _shot(page, console, "03-bundle-not-kept")


def test_records_found_by_each_filter_paged_each_once_and_a_bundle_that_verifies(
    fleet: Fleet, tmp_path: Path, files: GatewayFiles, broker: Mosquitto
) -> None:
    table = _fleet_table(tmp_path, fleet.api.url, fleet.api.token, fleet.pki.ca)
    with _console(tmp_path, files, broker, "records", table) as console:

        async def body() -> None:
            async with browser() as chromium:
                page = await chromium.new_page(accept_downloads=True)
                await _login(page, console, "oscar")
                await page.click("#nav-records")
                await page.wait_for_selector("#records-search", timeout=WAIT_MS)
                await _found_by_each_filter(page, console, fleet)
                await _every_record_once(page, console, fleet)
                await _bundles(page, console, fleet, tmp_path)

        run(body(), timeout=120)
        audit = {(r["user"], r["action"], r["target"], r["outcome"]) for r in console.audit()}
    assert ("oscar", "bundle", f"{KEPT[0]}#{KEPT[1]}@fleet", "ok") in audit, audit
    assert ("oscar", "bundle", f"{KEPT[0]}#4@fleet", "failed") in audit, audit


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("token", "refused the console's token"),
        ("down", "is unreachable"),
        ("other-ca", "no trusted TLS connection"),
    ],
)
def test_a_fleet_that_refuses_the_token_is_down_or_untrusted_is_said_plainly(
    fleet: Fleet,
    tmp_path: Path,
    files: GatewayFiles,
    broker: Mosquitto,
    case: str,
    words: str,
) -> None:
    url, token, ca = fleet.api.url, fleet.api.token, fleet.pki.ca
    # A port bound for the test and never listened on: a connection to it is refused.
    with socket.socket() as down:
        down.bind(("127.0.0.1", 0))
        if case == "token":
            token = "not-a-token-the-fleet-gave"
        elif case == "down":
            url = f"https://127.0.0.1:{down.getsockname()[1]}"
        else:
            ca = fleet.pki.other_ca
        table = _fleet_table(tmp_path, url, token, ca)
        with _console(tmp_path, files, broker, f"fleet-{case}", table) as console:
            _said_on_the_page(console, case, words, url)


def _said_on_the_page(console: ConsoleRig, case: str, words: str, url: str) -> None:
    async def body() -> None:
        async with browser() as chromium:
            page = await chromium.new_page()
            await _login(page, console, "vera")
            response = await page.goto(f"{console.url}/records?device=seal-a")
            assert response is not None and response.status == 502
            text = await page.inner_text("#error")
            assert words in text and url in text, text
            assert await _rows(page) == []
            await _shot(page, console, f"01-{case}")

    run(body(), timeout=60)


class _Listener(http.server.BaseHTTPRequestHandler):
    """Answers every GET with `answer` (a status and its headers), noting who asked with what
    Authorization header."""

    answer: tuple[int, dict[str, str]] = (204, {})
    asked: list[tuple[str, str | None]]

    def do_GET(self) -> None:
        self.asked.append((self.path, self.headers.get("authorization")))
        status, headers = self.answer
        self.send_response(status)
        for name, value in {**headers, "content-length": "0"}.items():
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _listening(answer: tuple[int, dict[str, str]]) -> Iterator[tuple[str, list[Any]]]:
    asked: list[tuple[str, str | None]] = []
    handler = type("Handler", (_Listener,), {"answer": answer, "asked": asked})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_redirect_is_not_followed_so_the_token_goes_nowhere_else(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto
) -> None:
    # Stand-ins for a fleet that redirects (a real one never does: a misconfigured proxy in
    # front of it could) and for where it points: plain HTTP servers on loopback.
    ca = make_pki(tmp_path / "pki").ca
    with (
        _listening((204, {})) as (elsewhere, asked_elsewhere),
        _listening((302, {"location": f"{elsewhere}/v1/records"})) as (url, asked),
    ):
        table = _fleet_table(tmp_path, url, "t0ken-for-the-fleet", ca)
        with _console(tmp_path, files, broker, "fleet-redirect", table) as console:
            _said_on_the_page(console, "redirect", "answered 302", url)
    assert [(path.split("?")[0], auth) for path, auth in asked] == [
        ("/v1/records", "Bearer t0ken-for-the-fleet")
    ]
    assert asked_elsewhere == []


def test_without_a_fleet_the_records_page_is_not_offered(console: ConsoleRig) -> None:
    async def body() -> None:
        async with browser() as chromium:
            page = await chromium.new_page()
            await _login(page, console, "vera")
            await page.wait_for_selector("#impressions", state="attached", timeout=WAIT_MS)
            assert await page.locator("#nav-records").count() == 0
            await page.goto(f"{console.url}/records?device=seal-a")
            assert "not connected to a fleet ledger" in await page.inner_text("#no-fleet")

    run(body(), timeout=60)


def test_a_readable_token_file_or_plain_http_to_another_host_is_a_config_error(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto
) -> None:
    ca = make_pki(tmp_path / "pki").ca
    good = _fleet_table(tmp_path, "https://fleet.example:8470", "t0ken", ca)
    config = _write_config(tmp_path, files, broker, False, tables=good)
    loaded = load_console_config(config).fleet
    assert loaded is not None and loaded.token == "t0ken" and "t0ken" not in repr(loaded)
    for table, key, words in (
        (good, "fleet.token_file", "chmod 600"),  # the same file, made readable below
        (good.replace("https://fleet.example", "http://fleet.example"), "fleet.url", "loopback"),
        (good.replace("https://", "https://ops:secret@"), "fleet.url", "no user"),
        (good.replace("https://fleet.example:8470", "http://127.0.0.1:8470"), None, None),
        (good.replace(str(ca), str(files.key_file)), "fleet.ca_file", "not PEM CA"),
        (good + "timeout_s = 0\n", "fleet.timeout_s", "above 0"),
    ):
        config = _write_config(tmp_path, files, broker, False, tables=table)
        token_file = tmp_path / "fleet.token"
        token_file.chmod(0o644 if key == "fleet.token_file" else 0o600)
        if key is None:
            assert load_console_config(config).fleet is not None  # plain HTTP on loopback
            continue
        with pytest.raises(ConfigError, match=words) as raised:
            load_console_config(config)
        assert raised.value.key == key, raised.value
        done = sealink("console", "--config", str(config))
        assert done.returncode != 0 and key in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "t0ken" not in done.stderr and "secret" not in done.stderr
