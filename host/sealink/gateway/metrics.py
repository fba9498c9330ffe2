"""The gateway's Prometheus metrics and its health, served over HTTP from its event loop.

    GET /metrics   Prometheus text format (OpenMetrics when the scraper asks for it)
    GET /healthz   JSON: 200 when healthy, 503 with the problems when not

Served by an asyncio server on the gateway's own loop rather than prometheus_client's
start_http_server (a thread of its own): every value is read on the loop that writes it, so the
hot path pays a plain dict increment and no lock, and one scrape sees one moment of the gateway.
prometheus_client still owns the names, the registry (one per gateway: tests and benchmarks run
several in one process) and the exposition formats.

Cardinality: records are counted per device (a gateway serves tens of enrolled seals, and only
enrolled ones reach a store), rejections per reason only (a forged HELLO may name any device).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import math
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from sealink.errors import ConfigError, LedgerError
from sealink.ledger import OutboxRow

if TYPE_CHECKING:
    from sealink.gateway.service import Gateway

__all__ = ["GatewayMetrics", "Histogram", "MetricsServer", "PublishLatency"]

log = logging.getLogger("sealink.gateway")

# Group commits take ~0.1 ms (one fsync) to seconds (a disk that retries).
_COMMIT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# A PUBACK takes milliseconds; a broker outage holds the outbox for minutes.
_PUBLISH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300)
# Offers whose rows still await their PUBACK: one a commit, so a long broker outage fills it;
# the rows of offers it forgot are published unobserved, never lost.
_OFFERS_KEPT = 4096
_REQUEST_TIMEOUT_S = 5.0
_REQUEST_HEADERS_MAX = 64


class Histogram:
    """A histogram observed in bulk: n rows that waited the same time are one observation of
    weight n (prometheus_client's Histogram observes one value at a time, under a lock)."""

    def __init__(self, buckets_s: Sequence[float]) -> None:
        self._bounds = tuple(buckets_s)
        self._counts = [0] * (len(self._bounds) + 1)  # the last: above every bound (+Inf)
        self._sum = 0.0

    def observe(self, value_s: float, n: int = 1) -> None:
        self._counts[bisect.bisect_left(self._bounds, value_s)] += n
        self._sum += value_s * n

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        bounds = (*map(floatToGoString, self._bounds), "+Inf")
        for bound, count in zip(bounds, self._counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self._sum)


class PublishLatency:
    """Commit-to-PUBACK time of outbox rows: each commit's rows are one offer, timed once."""

    def __init__(self, kept: int = _OFFERS_KEPT) -> None:
        self.histogram = Histogram(_PUBLISH_BUCKETS_S)
        self._offers: deque[tuple[int, int, float]] = deque(maxlen=kept)  # first, last id, when

    def offered(self, rows: list[OutboxRow], now_s: float) -> None:
        """Rows a commit just handed to the publisher: ids consecutive, ascending."""
        if rows:
            self._offers.append((rows[0].id, rows[-1].id, now_s))

    def published(self, ids: list[int], now_s: float) -> None:
        """Outbox rows whose PUBACK succeeded, in the order the broker acknowledged them."""
        offers = self._offers
        offered_at, n = 0.0, 0
        for row_id in ids:
            while offers and offers[0][1] < row_id:
                offers.popleft()
            if not offers or offers[0][0] > row_id:
                continue  # not offered by this run (a backlog from before its start), or forgotten
            if offers[0][2] != offered_at:
                if n:
                    self.histogram.observe(now_s - offered_at, n)
                offered_at, n = offers[0][2], 0
            n += 1
        if n:
            self.histogram.observe(now_s - offered_at, n)


class GatewayMetrics:
    """What the gateway counts as it goes, and what it is asked at each scrape. Use from the
    gateway's event loop only."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.records: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.commit_latency = Histogram(_COMMIT_BUCKETS_S)
        self.publish_latency = PublishLatency()
        self.outbox_backlog: int | None = None
        self.outbox_unreadable: str | None = None
        self.registry = CollectorRegistry()
        self.registry.register(self)

    # hooks on the gateway's paths ------------------------------------------------------------

    def stored(self, device: str) -> None:
        self.records[device] += 1

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def committed(self, latency_s: float) -> None:
        self.commit_latency.observe(latency_s)

    def offered(self, rows: list[OutboxRow]) -> None:
        self.publish_latency.offered(rows, time.monotonic())

    def published(self, ids: list[int]) -> None:
        self.publish_latency.published(ids, time.monotonic())

    # at a scrape -----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read what only the ledger knows (its thread is the only one that may ask it)."""
        gateway = self._gateway
        try:
            self.outbox_backlog = await gateway.db(gateway.ledger.unpublished_count)
        except (LedgerError, sqlite3.Error) as exc:
            self.outbox_backlog, self.outbox_unreadable = None, str(exc)
        else:
            self.outbox_unreadable = None

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition in the format `accept` asks for: (body, content type)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def quarantined_seals(self) -> int:
        return sum(1 for state in self._gateway.registry.devices() if state.quarantine is not None)

    def seals_in_session(self) -> int:
        return sum(1 for session in self._gateway.sessions if session.device is not None)

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's Collector: called by the registry, on the loop, at a scrape."""
        gateway = self._gateway
        publisher, committer = gateway.publisher, gateway.committer
        info = GaugeMetricFamily(
            "sealink_gateway_info", "The gateway and its signing key", labels=["gateway", "kid"]
        )
        info.add_metric([gateway.gateway_id, gateway.key.kid.hex()], 1)
        yield info
        records = CounterMetricFamily(
            "sealink_records",
            "Records accepted from seals: checked, countersigned, handed to the group commit",
            labels=["device"],
        )
        for device, n in sorted(self.records.items()):
            records.add_metric([device], n)
        yield records
        rejected = CounterMetricFamily(
            "sealink_rejected",
            "Frames and records refused, by reason (quarantined, alarmed or dropped)",
            labels=["reason"],
        )
        for reason, n in sorted(self.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield GaugeMetricFamily(
            "sealink_quarantined_seals",
            "Seals in quarantine: not acknowledged until an operator acts",
            value=self.quarantined_seals(),
        )
        backlog = self.outbox_backlog
        yield GaugeMetricFamily(
            "sealink_outbox_backlog",
            "Outbox rows committed and not yet acknowledged by the broker (NaN: unreadable)",
            value=math.nan if backlog is None else backlog,
        )
        yield self.commit_latency.family(
            "sealink_commit_latency_seconds",
            "From the first row of a group commit submitted to the commit on disk",
        )
        yield self.publish_latency.histogram.family(
            "sealink_publish_latency_seconds",
            "From an outbox row's commit to its successful PUBACK (rows committed by this run)",
        )
        yield CounterMetricFamily(
            "sealink_commits", "Group commits written to the ledger", value=committer.commits
        )
        yield GaugeMetricFamily(
            "sealink_ledger_failing",
            "1 while the ledger refuses commits (nothing is acknowledged meanwhile)",
            value=int(committer.failing is not None),
        )
        links = gateway.port_links
        yield GaugeMetricFamily(
            "sealink_ports_configured", "Ports in the configuration", value=len(links)
        )
        yield GaugeMetricFamily(
            "sealink_ports_up", "Configured ports whose link is up", value=sum(links.values())
        )
        port_up = GaugeMetricFamily(
            "sealink_port_up", "1 while the configured port's link is up", labels=["port"]
        )
        for url, up in sorted(links.items()):
            port_up.add_metric([url], int(up))
        yield port_up
        yield GaugeMetricFamily(
            "sealink_sessions", "Seals in session (HELLO accepted)", value=self.seals_in_session()
        )
        yield GaugeMetricFamily(
            "sealink_mqtt_connected",
            "1 while the broker link is up",
            value=int(publisher.connected),
        )
        yield GaugeMetricFamily(
            "sealink_mqtt_inflight", "Publishes awaiting their PUBACK", value=publisher.inflight
        )
        yield CounterMetricFamily(
            "sealink_published", "Outbox rows the broker acknowledged", value=publisher.published
        )
        yield CounterMetricFamily(
            "sealink_puback_refusals",
            "PUBACKs with a failure reason code (the row stays in the outbox)",
            value=publisher.failed_pubacks,
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the report). Unhealthy: the broker link is down, the ledger refuses
        commits or cannot be read, or every configured port is down (some down is reported,
        not failed: a BLE seal out of range is not the gateway's fault)."""
        gateway = self._gateway
        publisher, committer = gateway.publisher, gateway.committer
        links = gateway.port_links
        up = sum(links.values())
        problems = []
        if not publisher.connected:
            mqtt = gateway.config.mqtt
            problems.append(f"broker: not connected to {mqtt.host}:{mqtt.port}")
        if committer.failing is not None:
            problems.append(f"ledger: commits failing: {committer.failing}")
        if self.outbox_unreadable is not None:
            problems.append(f"ledger: cannot read the outbox: {self.outbox_unreadable}")
        if links and not up:
            problems.append(f"ports: none of the {len(links)} configured ports is up")
        report = {
            "status": "failing" if problems else "ok",
            "problems": problems,
            "gateway": gateway.gateway_id,
            "broker": {"connected": publisher.connected},
            "ledger": {"writable": committer.failing is None, "failing": committer.failing},
            "outbox_backlog": self.outbox_backlog,
            "ports": {
                "up": up,
                "configured": len(links),
                "down": sorted(url for url, link_up in links.items() if not link_up),
            },
            "sessions": self.seals_in_session(),
            "quarantined_seals": self.quarantined_seals(),
        }
        return not problems, report


class MetricsServer:
    """/metrics and /healthz over HTTP/1.1, one request a connection."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, host, port)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise ConfigError("metrics.listen", f"cannot listen on {host}:{port}: {why}") from None
        log.info("metrics endpoint listening", extra={"fields": {"address": self.address}})

    @property
    def address(self) -> str:
        """host:port actually bound (port 0 in the config picks one)."""
        assert self._server is not None, "not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Python 3.11's wait_closed does not wait for the connections: end them here, before
        # the gateway closes the ledger they may be reading.
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request = await _read_request(reader)
            if request is not None:
                status, content_type, body = await self._respond(*request)
                head_only = request[0] == "HEAD"
                writer.write(_response(status, content_type, b"" if head_only else body, body))
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the scraper went away or stalled: nothing to answer
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, method: str, path: str, accept: str) -> tuple[str, str, bytes]:
        metrics = self._metrics
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n"
        if path == "/metrics":
            await metrics.refresh()
            body, content_type = metrics.render(accept)
            return "200 OK", content_type, body
        if path == "/healthz":
            await metrics.refresh()
            healthy, report = metrics.health()
            status = "200 OK" if healthy else "503 Service Unavailable"
            return status, "application/json", json.dumps(report, indent=1).encode() + b"\n"
        return "404 Not Found", "text/plain", b"/metrics or /healthz\n"


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, str] | None:
    """(method, path, Accept header) of the request on this connection; None if it is not
    one (a port scan, a line past the reader's limit, too many headers)."""
    accept = ""
    try:
        async with asyncio.timeout(_REQUEST_TIMEOUT_S):
            parts = (await reader.readline()).decode("latin-1").split()
            for _ in range(_REQUEST_HEADERS_MAX):
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "accept":
                    accept = value.strip()
            else:
                return None
    except ValueError:
        return None
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    return parts[0], parts[1].partition("?")[0], accept


def _response(status: str, content_type: str, payload: bytes, body: bytes) -> bytes:
    """The response bytes; Content-Length is the body's even when HEAD sends none."""
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + payload
