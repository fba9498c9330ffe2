"""The gateway and the fleet on a locked-down broker: a real Mosquitto with a TLS listener that
requires client certificates, logins from a password file, and the ACL the project ships
(tools/mosquitto/acl, generated from tools/mosquitto/roster.example.toml). Certificates are made
with `cryptography` (pki_rig). Nothing is mocked.

The gateway is gw-1 of the shipped roster, serving seal-0001 (its own) and, in one test,
seal-0003 (gw-2's). Every failure to connect must be named in one log line and lose nothing:
the records stay in the ledger's outbox and are published once the settings are right.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import GatewayFiles, PtyLink, logged, run, sealink, until
from paho.mqtt.enums import CallbackAPIVersion
from pki_rig import Pki, make_pki
from sealink.config import Config, MqttConfig, PortConfig, parse_mqtt
from sealink.fleet import FleetService, Store, load_config
from sealink.gateway.service import Gateway
from sealink_hil.waits import until as until_true
from sealink_sim.broker import BrokerTls, Mosquitto
from sealink_sim.fleetrig import SimGateway, SimSeal
from sealink_sim.postgres import PostgresCluster
from sealink_sim.simdevice import SimDevice

REPO = Path(__file__).parents[2]
TOOLS = REPO / "tools" / "mosquitto"
SHIPPED_ACL = TOOLS / "acl"
ROSTER = TOOLS / "roster.example.toml"
PASSWORDS = {
    "gw-1": "gw-1 secret",
    "gw-2": "gw-2 secret",
    "consumer-dashboard": "dashboard secret",
    "approver-alice": "alice secret",
    "fleet": "fleet secret",
}
OWN_SEAL = "seal-0001"
GW2_SEAL = "seal-0003"  # gw-2's in the roster


# certificates --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def site_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Mosquitto]:
    """TLS with client certificates required, logins only, the shipped ACL."""
    tls = BrokerTls(pki.ca, pki.server_cert, pki.server_key, require_certificate=True)
    workdir = tmp_path_factory.mktemp("site-broker")
    with Mosquitto(workdir, tls=tls, users=PASSWORDS, acl_file=SHIPPED_ACL) as broker:
        yield broker


# clients -------------------------------------------------------------------------------------


def _mqtt(broker: Mosquitto, pki: Pki, tmp: Path, user: str, **overrides: Any) -> MqttConfig:
    """[mqtt] as a site writes it, through the config loader (files checked, password read)."""
    password_file = tmp / f"{user}.password"
    password_file.write_text(overrides.pop("password", PASSWORDS[user]) + "\n")
    os.chmod(password_file, 0o600)
    table: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "prefix": "sealink",
        "tls": True,
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
        "username": user,
        "password_file": str(password_file),
        "reconnect_max_s": 0.5,
    }
    table.update(overrides)
    return parse_mqtt({k: v for k, v in table.items() if v is not None})


class Consumer:
    """A plain paho MQTT 5 client over TLS with a login, as a site's own systems would be."""

    def __init__(self, broker: Mosquitto, pki: Pki, user: str, subscribe: str | None = None):
        self.messages: list[mqtt.MQTTMessage] = []
        self.pubacks: dict[int, int] = {}
        self.changed = threading.Condition()
        self._subscribe = subscribe
        self._broker = broker
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{user}-{os.urandom(4).hex()}",
            protocol=mqtt.MQTTv5,
        )
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        self.client.tls_set_context(context)
        self.client.username_pw_set(user, PASSWORDS[user])
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.wait(lambda: self.client.is_connected() and self._subscribed, "connected")

    _subscribed = False

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self._subscribe is not None:
            client.subscribe(self._subscribe, qos=1)
        with self.changed:
            self._subscribed = True
            self.changed.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.messages.append(msg)
            self.changed.notify_all()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        with self.changed:
            self.pubacks[mid] = reason.value
            self.changed.notify_all()

    def wait(self, predicate: Any, what: str, timeout: float = 10.0) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; broker log:\n"
                    + self._broker.log_tail(30)
                )

    def topics(self) -> list[str]:
        with self.changed:
            return [m.topic for m in self.messages]

    def puback(self, topic: str, payload: bytes = b"x") -> int:
        """Publish QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        self.wait(lambda: info.mid in self.pubacks, f"the PUBACK of {topic}")
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def consumer(site_broker: Mosquitto, pki: Pki) -> Iterator[Consumer]:
    c = Consumer(site_broker, pki, "consumer-dashboard", subscribe="sealink/#")
    yield c
    c.close()


def _config(files: GatewayFiles, mqtt_config: MqttConfig, link: PtyLink | None) -> Config:
    ports = (PortConfig(link.host_path),) if link is not None else ()
    return replace(files.config(mqtt_config.port, ports=ports), gateway_id="gw-1", mqtt=mqtt_config)


async def _unpublished(gateway: Gateway, expected: int, timeout: float = 15) -> None:
    """Wait until the ledger's outbox holds `expected` unpublished rows (marking follows the
    PUBACK through the group committer)."""
    async with asyncio.timeout(timeout):
        while await gateway.db(gateway.ledger.unpublished_count) != expected:
            await asyncio.sleep(0.05)


async def _stamp(files: GatewayFiles, link: PtyLink, device: str, count: int) -> None:
    async with SimDevice(device, files.device_keys[device], link.device_end) as sim:
        await asyncio.wait_for(sim.welcomed.wait(), 10)
        await sim.stamp(count)
        await sim.wait_acked(count)


# tests ---------------------------------------------------------------------------------------


def test_the_shipped_acl_is_the_generators_output_of_the_shipped_roster() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "tools.mosquitto.acl", str(ROSTER)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    )
    assert generated.stdout == SHIPPED_ACL.read_text()


def test_the_gateway_publishes_over_tls_with_its_login(
    files: GatewayFiles,
    pty_link: PtyLink,
    site_broker: Mosquitto,
    pki: Pki,
    consumer: Consumer,
    tmp_path: Path,
) -> None:
    files.add_device(OWN_SEAL)
    config = _config(files, _mqtt(site_broker, pki, tmp_path, "gw-1"), pty_link)

    async def body() -> None:
        async with Gateway(config) as gateway:
            await _stamp(files, pty_link, OWN_SEAL, 5)
            await until(lambda: gateway.publisher.published >= 5, 15, "5 PUBACKs")
            await _unpublished(gateway, 0)

    run(body())
    events = f"sealink/{OWN_SEAL}/events"
    consumer.wait(lambda: consumer.topics().count(events) >= 5, "5 events at the consumer")
    assert "sealink/gateway/gw-1/status" in consumer.topics()


@pytest.mark.parametrize(
    ("wrong", "expected"),
    [
        (
            lambda pki: {"ca_file": str(pki.other_ca)},
            ("why=TLS: certificate verify failed: ",),
        ),
        (
            lambda pki: {"server_name": "broker.invalid"},
            ("why=TLS: certificate verify failed: Hostname mismatch",),
        ),
        (
            lambda pki: {"cert_file": None, "key_file": None},
            # TLS 1.3: the broker's alert comes after the handshake. Read, it says "tlsv13
            # alert certificate required"; a write that meets the closed connection first
            # sees only its end, and the gateway says what that most likely means.
            ("why=TLS: ", "certificate"),
        ),
        (
            lambda pki: {"password": "not the password"},
            ("why=broker refused the login: not authorized",),
        ),
    ],
    ids=["wrong-ca", "wrong-server-name", "no-client-certificate", "bad-password"],
)
def test_a_refused_connection_is_named_and_loses_nothing(
    files: GatewayFiles,
    pty_link: PtyLink,
    site_broker: Mosquitto,
    pki: Pki,
    consumer: Consumer,
    tmp_path: Path,
    gateway_log: list[str],
    capfd: pytest.CaptureFixture[str],
    wrong: Callable[[Pki], dict[str, Any]],
    expected: tuple[str, ...],
) -> None:
    files.add_device(OWN_SEAL)
    bad = _config(files, _mqtt(site_broker, pki, tmp_path, "gw-1", **wrong(pki)), pty_link)
    good = _config(files, _mqtt(site_broker, pki, tmp_path, "gw-1"), None)

    async def body() -> None:
        async with Gateway(bad) as gateway:
            await _stamp(files, pty_link, OWN_SEAL, 3)
            # one line for each attempt, retried with the backoff (reconnect_max_s 0.5)
            publisher = "sealink.publisher: mqtt connect failed"
            await logged(capfd, gateway_log, publisher, *expected, times=2)
            # the witness desk's connection is set up in the same place, and says the same
            await logged(capfd, gateway_log, "sealink.mqtt: mqtt unavailable", *expected)
            assert await gateway.db(gateway.ledger.unpublished_count) >= 3
            assert gateway.publisher.published == 0
        async with Gateway(good) as gateway:  # the settings fixed: the outbox drains
            await until(lambda: gateway.publisher.published >= 3, 15, "3 PUBACKs")
            await _unpublished(gateway, 0)

    run(body())
    events = f"sealink/{OWN_SEAL}/events"
    consumer.wait(lambda: consumer.topics().count(events) >= 3, "the 3 events at the consumer")
    assert not any(PASSWORDS["gw-1"] in line for line in gateway_log)


def test_the_gateway_logs_what_the_acl_refuses_and_keeps_the_rows(
    files: GatewayFiles,
    pty_link: PtyLink,
    site_broker: Mosquitto,
    pki: Pki,
    consumer: Consumer,
    tmp_path: Path,
    gateway_log: list[str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    """gw-1 registered gw-2's seal: Mosquitto PUBACKs its events with 0x87 (MQTT 5, QoS 1)
    and closes the connection; the gateway logs it, keeps those rows, reconnects, retries them
    ever less often, and its own seal's records still go through."""
    files.add_device(GW2_SEAL)
    files.add_device(OWN_SEAL)
    config = _config(files, _mqtt(site_broker, pki, tmp_path, "gw-1"), pty_link)

    async def body() -> None:
        async with Gateway(config) as gateway:
            await _stamp(files, pty_link, GW2_SEAL, 2)
            refused = "puback refused, the row stays in the outbox"
            line = await logged(capfd, gateway_log, refused)
            assert f"topic=sealink/{GW2_SEAL}/events" in line and "reason=Not authorized" in line
            # Mosquitto then closes the connection: the log says why
            closed = "closed by the broker after it refused a publish (Not authorized)"
            await logged(capfd, gateway_log, "mqtt disconnected", closed)
            # the seal's retained status is refused too, and not sent again at each reconnect
            status = f"publish refused topic=sealink/{GW2_SEAL}/status retained_dropped=True"
            await logged(capfd, gateway_log, status)
            await _stamp(files, pty_link, OWN_SEAL, 3)
            own = f"sealink/{OWN_SEAL}/events"
            await asyncio.to_thread(
                consumer.wait, lambda: consumer.topics().count(own) >= 3, "gw-1's own events", 20
            )
            unpublished = await gateway.db(gateway.ledger.unpublished_count)
            assert unpublished >= 2 and gateway.publisher.failed_pubacks >= 1
            # each refusal is logged at most once a minute, however often it is retried
            assert sum(refused in x for x in gateway_log) == 1

    run(body())
    assert f"sealink/{GW2_SEAL}/events" not in consumer.topics()


def _attempt(broker: Mosquitto, pki: Pki, user: str, topic: str, qos: int = 1) -> int | None:
    """One publish by `user` on a connection of its own; its PUBACK reason code (None at QoS 0).
    Mosquitto 2.0 answers a refused QoS 1 publish with PUBACK 0x87 and then closes the
    connection, so each attempt gets a fresh one."""
    client = Consumer(broker, pki, user)
    try:
        if qos == 0:
            client.client.publish(topic, b"forged", qos=0)
            return None
        return client.puback(topic)
    finally:
        client.close()


NOT_AUTHORIZED = 0x87


def test_the_shipped_acl_confines_each_role(
    site_broker: Mosquitto, pki: Pki, consumer: Consumer
) -> None:
    def attempt(user: str, topic: str, qos: int = 1) -> int | None:
        return _attempt(site_broker, pki, user, topic, qos)

    # a gateway writes its own topics, not another gateway's, nor for another's seal
    assert attempt("gw-1", "sealink/gateway/gw-1/alarms") == 0
    for topic in (
        "sealink/gateway/gw-2/status",
        f"sealink/{GW2_SEAL}/events",
        "sealink/cmd/gw-1/request",
        "sealink/cmd/gw-2/result/approver-alice",
    ):
        assert attempt("gw-1", topic) == NOT_AUTHORIZED, topic
    # QoS 0 has no PUBACK: Mosquitto drops it without a word; the marker sent after it arrives
    attempt("gw-1", "sealink/gateway/gw-2/alarms", qos=0)
    assert attempt("gw-1", "sealink/gateway/gw-1/checkpoint") == 0
    consumer.wait(lambda: "sealink/gateway/gw-1/checkpoint" in consumer.topics(), "the marker")
    # a consumer writes nothing, not even a topic named after itself
    for topic in (
        f"sealink/{OWN_SEAL}/events",
        "sealink/cmd/gw-1/request",
        "sealink/gateway/consumer-dashboard/status",
    ):
        assert attempt("consumer-dashboard", topic) == NOT_AUTHORIZED, topic
    # only an approver writes a request (0x10: accepted, no one else subscribed to it), and
    # only the gateway its results (SPEC §11.5)
    assert attempt("approver-alice", "sealink/cmd/gw-1/x") == NOT_AUTHORIZED
    assert attempt("approver-alice", "sealink/cmd/gw-1/result/approver-alice") == NOT_AUTHORIZED
    assert attempt("gw-1", "sealink/cmd/gw-1/result/approver-alice") in (0, 0x10)
    assert attempt("approver-alice", "sealink/cmd/gw-1/request") in (0, 0x10)
    consumer.wait(lambda: "sealink/cmd/gw-1/request" in consumer.topics(), "the approver's request")
    topics = consumer.topics()
    assert topics.count("sealink/cmd/gw-1/request") == 1
    assert topics.count("sealink/cmd/gw-1/result/approver-alice") == 1
    for refused in (
        "sealink/gateway/gw-2/status",
        "sealink/gateway/gw-2/alarms",
        f"sealink/{GW2_SEAL}/events",
    ):
        assert refused not in topics
    assert "sealink/gateway/gw-1/alarms" in topics


def _fleet_toml(tmp: Path, dsn: str, broker: Mosquitto, pki: Pki, gateway: SimGateway,
                password: str = PASSWORDS["fleet"]) -> Path:  # fmt: skip
    """fleet.toml as a site writes it for the locked-down broker: [mqtt] as the gateway's."""
    (tmp / "fleet.password").write_text(password + "\n")
    os.chmod(tmp / "fleet.password", 0o600)
    path = tmp / "fleet.toml"
    path.write_text(
        f'[fleet]\ndatabase = "{dsn}"\ninstance = "fleet-1"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nprefix = "sealink"\n'
        f'group = "fleet-tls"\ntls = true\nca_file = "{pki.ca}"\n'
        f'cert_file = "{pki.client_cert}"\nkey_file = "{pki.client_key}"\n'
        f'username = "fleet"\npassword_file = "fleet.password"\nreconnect_max_s = 1\n\n'
        f'[gateways]\n{gateway.id} = "{gateway.write_public_key(tmp / "gw.pem")}"\n'
    )
    return path


def test_the_fleet_takes_records_over_tls_with_its_login_and_the_acl_confines_it(
    site_broker: Mosquitto, pki: Pki, cluster: PostgresCluster, tmp_path: Path
) -> None:
    """The fleet's [mqtt] takes what the gateway's does (TLS, client certificate, login), and
    the shipped ACL's fleet role lets it do its work and nothing else: it reads the records,
    writes the registry the gateways read, asks gateways for proofs, which they answer on
    its topics, each only for itself."""
    gateway, seal = SimGateway("gw-1"), SimSeal(OWN_SEAL)
    dsn = cluster.database("fleet_tls")
    config = _fleet_toml(tmp_path, dsn, site_broker, pki, gateway)
    assert sealink("fleet", "migrate", "--config", str(config)).returncode == 0
    store = Store(dsn)
    store.import_seal_keys([(seal.device, seal.chip.public)], source="test")
    service = FleetService(load_config(config), store).start()
    registry_reader = Consumer(site_broker, pki, "gw-1", subscribe="sealink/fleet/registry/+")
    try:
        assert service.connected.wait(20), site_broker.log_tail(20)
        publisher = Consumer(site_broker, pki, "gw-1")
        for _, cose in gateway.records(seal, 5):
            assert publisher.puback(f"sealink/{OWN_SEAL}/events", cose) == 0
        publisher.close()
        until_true(lambda: service.stored, lambda n: n >= 5, 20, "the 5 records stored")

        def attempt(user: str, topic: str) -> int | None:
            return _attempt(site_broker, pki, user, topic)

        allowed = ("sealink/fleet/registry/x", "sealink/fleet/approvers/x",
                   "sealink/gateway/gw-2/proof/request", "sealink/cmd/gw-1/request")  # fmt: skip
        for topic in allowed:
            assert attempt("fleet", topic) in (0, 0x10), topic
        for topic in (f"sealink/{OWN_SEAL}/events", "sealink/gateway/gw-1/checkpoint",
                      "sealink/cmd/gw-1/result/fleet"):  # fmt: skip
            assert attempt("fleet", topic) == NOT_AUTHORIZED, topic
        registry_reader.wait(
            lambda: "sealink/fleet/registry/x" in registry_reader.topics(),
            "gw-1 reading the fleet's registry",
        )
        assert attempt("gw-1", "sealink/fleet/fleet-1/proof/gw-1") in (0, 0x10)
        for topic in ("sealink/fleet/fleet-1/proof/gw-2", "sealink/fleet/registry/x"):
            assert attempt("gw-1", topic) == NOT_AUTHORIZED, topic
    finally:
        registry_reader.close()
        service.stop()
        store.close()


_WRONG = "not-the-fleet-password-7731"


def test_a_fleet_refused_its_login_says_so_and_never_shows_the_password(
    site_broker: Mosquitto, pki: Pki, cluster: PostgresCluster, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    gateway = SimGateway("gw-1")
    dsn = cluster.database("fleet_tls_refused")
    config = _fleet_toml(tmp_path, dsn, site_broker, pki, gateway, password=_WRONG)
    assert sealink("fleet", "migrate", "--config", str(config)).returncode == 0
    store = Store(dsn)
    service = FleetService(load_config(config), store).start()
    try:
        until_true(lambda: caplog.text, lambda text: "broker refused the login" in text, 20,
                   "the refusal logged")  # fmt: skip
        assert not service.connected.is_set()
        assert PASSWORDS["fleet"] not in caplog.text and _WRONG not in caplog.text
    finally:
        service.stop()
        store.close()


def test_no_login_no_connection(site_broker: Mosquitto, pki: Pki) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="anonymous", protocol=mqtt.MQTTv5)
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    client.tls_set_context(context)
    reasons: list[Any] = []
    done = threading.Event()
    client.on_connect = lambda c, u, f, reason, p: (reasons.append(reason), done.set())
    client.connect("127.0.0.1", site_broker.port)
    client.loop_start()
    try:
        assert done.wait(10)
        assert reasons[0].is_failure and reasons[0].value in (0x86, 0x87)
    finally:
        client.loop_stop()


def test_the_session_settings_reach_the_connect_packet() -> None:
    from sealink.mqtt.connection import connect_properties

    props = connect_properties(parse_mqtt({"session_expiry_s": 3600}))
    assert props.SessionExpiryInterval == 3600
    assert connect_properties(MqttConfig()).SessionExpiryInterval == 24 * 3600
