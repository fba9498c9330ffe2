"""The gateway's /metrics and /healthz, scraped over real HTTP from a running gateway.

A simulated seal on a pty, a real Mosquitto that the test stops and starts again, the real
ledger; the scrape is parsed with prometheus_client's own text parser.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Any

import pytest
from conftest import DEVICE, GatewayFiles, PtyLink, run, running, sealink
from prometheus_client.parser import text_string_to_metric_families
from sealink.config import MetricsConfig, PortConfig, parse_config
from sealink.errors import ConfigError, LedgerError
from sealink.gateway.metrics import Histogram, PublishLatency
from sealink.gateway.service import Gateway
from sealink.ledger.sqlite import Ledger, OutboxRow
from sealink_sim.broker import Mosquitto
from sealink_sim.simdevice import SimChip, SimDevice, make_event

# urllib would honour a proxy from the environment: the endpoint is on loopback.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _get(address: str, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of GET (or `method`) http://address/path."""
    request = urllib.request.Request(f"http://{address}{path}", method=method)
    try:
        with _HTTP.open(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def _scrape(address: str) -> Samples:
    status, content_type, text = await asyncio.to_thread(_get, address, "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _health_until(address: str, status: int, what: str) -> dict[str, Any]:
    """/healthz's report once it answers `status` (polled: its state lives in the gateway)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        got, content_type, body = await asyncio.to_thread(_get, address, "/healthz")
        if got == status:
            assert content_type == "application/json"
            report: dict[str, Any] = json.loads(body)
            return report
        assert loop.time() < deadline, f"/healthz never answered {status} ({what}): {body}"
        await asyncio.sleep(0.05)


async def _until(predicate: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not await predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_metrics_count_what_the_seal_sent_and_health_follows_the_broker(
    files: GatewayFiles, broker: Mosquitto, pty_link: PtyLink
) -> None:
    key = files.device_keys[DEVICE]
    config = replace(
        files.config(broker.port, ports=(PortConfig(pty_link.host_path),)),
        metrics=MetricsConfig(listen=("127.0.0.1", 0)),
    )

    async def body() -> None:
        async with (
            running(config) as gateway,
            SimDevice(DEVICE, key, pty_link.device_end) as sim,
        ):
            address = gateway.metrics_address
            assert address is not None and not address.endswith(":0")
            await asyncio.wait_for(sim.welcomed.wait(), 10)
            await sim.stamp(7)
            await sim.wait_acked(7)
            report = await _health_until(address, 200, "broker connected")
            assert report["status"] == "ok" and report["problems"] == []
            assert report["ports"] == {"up": 1, "configured": 1, "down": []}
            assert (report["sessions"], report["ledger"]["writable"]) == (1, True)

            async def all_published() -> bool:
                samples = await _scrape(address)
                return _value(samples, "sealink_outbox_backlog") == 0

            await _until(all_published, "the outbox to drain")
            samples = await _scrape(address)
            assert _value(samples, "sealink_records_total", device=DEVICE) == 7
            assert _value(samples, "sealink_commit_latency_seconds_count") >= 1
            # Seven events, each its own outbox row, each PUBACKed after its commit.
            assert _value(samples, "sealink_publish_latency_seconds_count") >= 7
            assert _value(samples, "sealink_published_total") >= 7
            assert _value(samples, "sealink_rejected_total", reason="bad_signature") == 0
            assert _value(samples, "sealink_quarantined_seals") == 0
            assert _value(samples, "sealink_ports_up") == _value(
                samples, "sealink_ports_configured"
            )
            assert _value(samples, "sealink_port_up", port=pty_link.host_path) == 1
            assert _value(samples, "sealink_sessions") == 1
            assert _value(samples, "sealink_mqtt_connected") == 1

            # A record whose seal signature is not the seal's chip: rejected and quarantined.
            forger = SimChip.of(b"a chip that is not the seal's")
            await sim.send_payload(
                make_event(sim.key, sim.next_counter, sim.last_hash, chip=forger)
            )

            async def rejected() -> bool:
                samples = await _scrape(address)
                return _value(samples, "sealink_quarantined_seals") == 1

            await _until(rejected, "the seal to be quarantined")
            samples = await _scrape(address)
            assert _value(samples, "sealink_rejected_total", reason="bad_signature") == 1
            assert _value(samples, "sealink_records_total", device=DEVICE) == 7
            assert (await _health_until(address, 200, "quarantine"))["quarantined_seals"] == 1

            await asyncio.to_thread(broker.stop)
            report = await _health_until(address, 503, "the broker stopped")
            assert report["status"] == "failing" and report["broker"]["connected"] is False
            assert [p for p in report["problems"] if p.startswith("broker:")], report
            assert _value(await _scrape(address), "sealink_mqtt_connected") == 0
            # Stored and acked while the broker is away (the seal is released first: a
            # quarantined seal's records are kept, not acked); they wait in the outbox.
            await gateway.db(gateway.ledger.release, DEVICE, "qa", "cause understood")
            await sim.stamp(3)
            await sim.wait_acked(10)
            samples = await _scrape(address)
            assert _value(samples, "sealink_records_total", device=DEVICE) == 10
            assert _value(samples, "sealink_outbox_backlog") >= 3
            status, _, text = await asyncio.to_thread(_get, address, "/nowhere")
            assert status == 404, text
            status, _, text = await asyncio.to_thread(_get, address, "/metrics", "POST")
            assert status == 405, text

            await asyncio.to_thread(broker.start)
            await _health_until(address, 200, "the broker back")
            await _until(all_published, "the backlog to drain")

    run(body())


def test_health_fails_while_the_ledger_refuses_commits(
    files: GatewayFiles,
    broker: Mosquitto,
    pty_link: PtyLink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Mocked, as in test_gateway.py, because a full disk cannot be made safely here: commit
    # raises what SQLite's "database or disk is full" becomes in the ledger while `failing`.
    failing = True
    real_commit = Ledger.commit

    def commit(self: Ledger, batch: Any) -> None:
        if failing and batch.events:
            raise LedgerError("ledger: commit failed: database or disk is full")
        real_commit(self, batch)

    monkeypatch.setattr(Ledger, "commit", commit)
    key = files.device_keys[DEVICE]
    config = replace(
        files.config(broker.port, ports=(PortConfig(pty_link.host_path),)),
        metrics=MetricsConfig(listen=("127.0.0.1", 0)),
    )

    async def body() -> None:
        nonlocal failing
        async with (
            running(config) as gateway,
            SimDevice(DEVICE, key, pty_link.device_end) as sim,
        ):
            address = gateway.metrics_address
            assert address is not None
            await asyncio.wait_for(sim.welcomed.wait(), 10)
            # Healthy first: a 503 of a broker link still coming up is not the one wanted.
            await _health_until(address, 200, "the broker connected")
            await sim.stamp(2)
            report = await _health_until(address, 503, "the ledger failing")
            assert report["ledger"] == {
                "writable": False,
                "failing": "ledger: commit failed: database or disk is full",
            }
            assert any(p.startswith("ledger: commits failing:") for p in report["problems"])
            assert _value(await _scrape(address), "sealink_ledger_failing") == 1
            failing = False
            await sim.wait_acked(2, timeout=20)
            report = await _health_until(address, 200, "the ledger recovered")
            assert report["ledger"] == {"writable": True, "failing": None}
            assert _value(await _scrape(address), "sealink_ledger_failing") == 0

    run(body())


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_metrics_listen_is_host_and_port(listen: str, expected: tuple[str, int]) -> None:
    config = parse_config(_config_with(listen), check_key_file=False)
    assert config.metrics.listen == expected


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("9464", "host:port"),
        ("127.0.0.1:", "host:port"),
        ("127.0.0.1:65536", "host:port"),
        ("::1:9464", "brackets"),
        (":9464", "host name or address"),
        (9464, "must be a string"),
    ],
)
def test_a_bad_metrics_listen_is_refused_by_name(listen: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as raised:
        parse_config(_config_with(listen), check_key_file=False)
    assert raised.value.key == "metrics.listen"


def test_metrics_are_off_unless_configured() -> None:
    data = _config_with("127.0.0.1:1")
    del data["metrics"]
    assert parse_config(data, check_key_file=False).metrics.listen is None


def test_a_metrics_address_in_use_stops_the_start_with_a_config_error(
    files: GatewayFiles, broker: Mosquitto
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = replace(
            files.config(broker.port), metrics=MetricsConfig(listen=("127.0.0.1", port))
        )

        async def body() -> None:
            with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1") as raised:
                async with Gateway(config):
                    pass
            assert raised.value.key == "metrics.listen"

        run(body())
    # Nothing of that start holds the ledger: the next start works.
    run(_start_and_stop(files.config(broker.port)))


def test_sealink_run_names_a_metrics_address_in_use_in_one_line(
    files: GatewayFiles, broker: Mosquitto
) -> None:
    config = files.root / "sealink.toml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(
            f"""
[gateway]
id = "gw-metrics"
key_file = "{files.key_file}"
ledger = "{files.ledger_path}"
link_keys = "{files.link_keys}"

[mqtt]
port = {broker.port}

[metrics]
listen = "127.0.0.1:{port}"
"""
        )
        done = sealink("run", "--config", str(config))
    assert done.returncode == 2, done.stderr
    expected = f"sealink: error: config: metrics.listen: cannot listen on 127.0.0.1:{port}: "
    assert expected in done.stderr, done.stderr


async def _start_and_stop(config: Any) -> None:
    async with Gateway(config) as gateway:
        assert gateway.metrics_address is None


def _config_with(listen: Any) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-1", "key_file": "/nonexistent/gw.key", "ledger": "/tmp/l.sqlite"},
        "metrics": {"listen": listen},
    }


def _histogram(histogram: Histogram) -> dict[str, float]:
    """A histogram's samples as the exposition gives them: le buckets, _count, _sum."""
    family = histogram.family("t_seconds", "test")
    return {
        sample.labels.get("le", sample.name.removeprefix("t_seconds")): sample.value
        for sample in family.samples
    }


def _rows(*ids: int) -> list[OutboxRow]:
    return [OutboxRow(i, "t", b"", None, None) for i in ids]


def test_publish_latency_times_each_row_from_its_own_commit() -> None:
    latency = PublishLatency()
    latency.offered(_rows(1, 2, 3), now_s=10.0)
    latency.offered(_rows(4, 5), now_s=11.0)
    # A row from before this start (id 0) is not timed; 1..3 waited 1.5 s, 4 waited 0.5 s.
    latency.published([0, 1, 2, 3, 4], now_s=11.5)
    latency.published([5], now_s=13.0)
    samples = _histogram(latency.histogram)
    assert (samples["_count"], samples["_sum"]) == (5, 3 * 1.5 + 0.5 + 2.0)
    assert (samples["0.5"], samples["1.0"], samples["5.0"], samples["+Inf"]) == (1, 1, 5, 5)


def test_publish_latency_forgets_the_oldest_offers_and_never_times_a_row_twice() -> None:
    latency = PublishLatency(kept=2)
    for first in (1, 3, 5):
        latency.offered(_rows(first, first + 1), now_s=float(first))
    latency.published([1, 2, 3, 4, 5, 6], now_s=10.0)  # 1, 2: their offer was forgotten
    latency.published([3, 4], now_s=20.0)  # again after a reconnect: timed once already
    samples = _histogram(latency.histogram)
    assert (samples["_count"], samples["_sum"]) == (4, 2 * 7.0 + 2 * 5.0)
