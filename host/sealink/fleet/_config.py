"""fleet.toml: where the database and the broker are, and which gateway keys are pinned.

[fleet]
database = "postgresql://fleet@db.example/sealink"
instance = "fleet-1"        # the MQTT client id: stable, so a restart resumes its session
batch_max = 500             # messages per transaction
batch_ms = 20               # how long a batch may wait to fill once it holds one message
key_file = "fleet.key"      # signs the registry (SPEC §11.6): `sealink fleet keys init`
name = "fleet"              # the registry messages' signer name
proof_timeout_s = 5         # how long a gateway has to answer a consistency proof request
proof_retry_s = 30          # how soon a gateway that did not answer is asked again

[mqtt]                      # as the gateway's [mqtt]: tls, ca_file, cert_file, key_file,
host = "127.0.0.1"          # server_name, username, password_file (0600), keepalive_s,
port = 1883                 # reconnect_min_s/max_s; host/examples/sealink.toml documents each
                            # (client_id, inflight and json_companion are the gateway's only)
prefix = "sealink"
group = "sealink-fleet"     # the shared subscription group all instances join
session_expiry_s = 86400
receive_maximum = 1000      # unacknowledged QoS 1 messages the broker may send at once

[serve]                     # `sealink fleet serve`: the query API for downstream systems
listen = "127.0.0.1:8470"
tls_cert_file = "api.pem"   # optional: serve HTTPS only, with this certificate (chain, PEM)
tls_key_file = "api.key"    # and its unencrypted private key, 0600
approver = "fleet-api"      # optional: evidence bundles asked of the record's gateway (SPEC
approver_key_file = "approver.key"  # §11.5 `bundle`) as this approver, with this key
bundle_timeout_s = 10       # how long a gateway has to answer a bundle request

[gateways]                  # gateway id = its public key file (PEM, `sealink keys show`)
gw-1 = "keys/gw-1.pem"

[authority]                 # optional: the fleet enrols the seals it places (SPEC §5.11, §11.6)
key_file = "authority.key"  # `sealink authority init` (P-256, 0600)
[authority.ack_keys]        # gateway id = its acknowledgement key (`sealink keys show`: ack_key)
gw-1 = "<128 hex digits>"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealink.config import NAME_RE, MqttConfig, parse_mqtt, require_together
from sealink.crypto.sealkey import parse_seal_key
from sealink.errors import ConfigError, KeyFileError

__all__ = ["FleetConfig", "load_config", "parse_listen"]


@dataclass(frozen=True)
class FleetConfig:
    database: str
    instance: str
    # The broker as every sealink client takes it (TLS, login: sealink.mqtt.connection).
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    group: str = "sealink-fleet"
    receive_maximum: int = 1000
    batch_max: int = 500
    batch_ms: int = 20
    registry_refresh_s: int = 10
    gateways: tuple[tuple[str, bytes], ...] = ()  # (gateway id, raw Ed25519 public key)
    key_file: Path = Path("fleet.key")  # the registry's signing key (SPEC §11.6)
    name: str = "fleet"
    proof_timeout_s: float = 5.0  # consistency proofs (SPEC §14.6): the gateway's answer
    proof_retry_s: float = 30.0  # a gateway that did not answer: asked again after this
    listen: tuple[str, int] = ("127.0.0.1", 8470)  # `sealink fleet serve`
    # The enrolment authority's key file (SPEC §5.11); None: moves enrol nobody.
    authority_key_file: Path | None = None
    ack_keys: tuple[tuple[str, bytes], ...] = ()  # (gateway id, its G as X || Y)
    tls_cert_file: Path | None = None  # None: plain HTTP (loopback, or behind a TLS proxy)
    tls_key_file: Path | None = None
    approver: str | None = None  # None: no bundles from the gateways
    approver_key_file: Path | None = None
    bundle_timeout_s: float = 10.0

    @property
    def prefix(self) -> str:
        return self.mqtt.prefix

    def ack_key(self, gateway: str) -> bytes | None:
        return dict(self.ack_keys).get(gateway)


def _authority(
    table: Any, base: Path, gateways: dict[str, Any]
) -> tuple[Path | None, tuple[tuple[str, bytes], ...]]:
    """[authority]: its key file (read when a certificate is signed: 0600 checked then) and
    the gateways' pinned acknowledgement keys, each of a gateway of [gateways]."""
    if not isinstance(table, dict):
        raise ConfigError("authority", "must be a table")
    if not table:
        return None, ()
    if "key_file" not in table:
        raise ConfigError("authority.key_file", "required with [authority]")
    key_file = base / _typed(table, "authority", "key_file", str, "")
    ack_keys = table.get("ack_keys", {})
    if not isinstance(ack_keys, dict):
        raise ConfigError("authority.ack_keys", "must be a table of gateway id = hex")
    pinned = []
    for gateway in sorted(ack_keys):
        where = f"authority.ack_keys.{gateway}"
        if gateway not in gateways:
            raise ConfigError(where, "not a gateway of [gateways]")
        try:
            pinned.append((gateway, parse_seal_key(str(ack_keys[gateway]), where)))
        except KeyFileError as exc:
            raise ConfigError(where, str(exc)) from None
    return key_file, tuple(pinned)


def _raw_key(gateway: str, path: Path) -> bytes:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"gateways.{gateway}", f"{path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"gateways.{gateway}", f"{path}: not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _typed(table: dict[str, Any], name: str, key: str, kind: type, default: Any) -> Any:
    value = table.get(key, default)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise ConfigError(f"{name}.{key}", f"must be {kind.__name__}, got {value!r}")
    if isinstance(value, int) and value <= 0:
        raise ConfigError(f"{name}.{key}", f"must be > 0, got {value}")
    return value


def parse_listen(name: str, value: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:8470 for IPv6; port 0: any free one); ConfigError names `name`."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(name, f"must be HOST:PORT, got {value!r}")
    return host, int(port)


def _broker(table: Any, base: Path) -> MqttConfig:
    """[mqtt] less the fleet's own two keys, as the gateway's [mqtt] is taken."""
    if not isinstance(table, dict):
        raise ConfigError("mqtt", "must be a table")
    if "client_id" in table:  # one per instance, resumed across restarts: README "Fleet ledger"
        raise ConfigError("mqtt.client_id", "the fleet's client id is [fleet] instance")
    # The fleet publishes no records (json_companion) and bounds what it is sent, not what it
    # sends (receive_maximum, not inflight).
    return parse_mqtt(
        table, base=base, own=("group", "receive_maximum"), unused=("inflight", "json_companion")
    )


def load_config(path: str | Path) -> FleetConfig:
    """Read and check fleet.toml; ConfigError names the key at fault."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("", f"{path}: {exc}") from None
    fleet, mqtt, gateways, serve = (doc.get(k, {}) for k in ("fleet", "mqtt", "gateways", "serve"))
    if "database" not in fleet or "instance" not in fleet:
        raise ConfigError("fleet", "database and instance are required")
    base = path.parent
    authority_key_file, ack_keys = _authority(doc.get("authority", {}), base, gateways)
    require_together(serve, "serve", "tls_cert_file", "tls_key_file")
    tls_cert_file, tls_key_file = (
        base / _typed(serve, "serve", key, str, "") if key in serve else None
        for key in ("tls_cert_file", "tls_key_file")
    )
    require_together(serve, "serve", "approver", "approver_key_file")
    approver = _typed(serve, "serve", "approver", str, "") if "approver" in serve else None
    if approver is not None and not NAME_RE.match(approver):
        raise ConfigError("serve.approver", f"{approver!r} is not an approver name")
    return FleetConfig(
        authority_key_file=authority_key_file,
        ack_keys=ack_keys,
        database=_typed(fleet, "fleet", "database", str, ""),
        instance=_typed(fleet, "fleet", "instance", str, ""),
        batch_max=_typed(fleet, "fleet", "batch_max", int, 500),
        batch_ms=_typed(fleet, "fleet", "batch_ms", int, 20),
        registry_refresh_s=_typed(fleet, "fleet", "registry_refresh_s", int, 10),
        key_file=base / _typed(fleet, "fleet", "key_file", str, "fleet.key"),
        name=_typed(fleet, "fleet", "name", str, "fleet"),
        proof_timeout_s=_typed(fleet, "fleet", "proof_timeout_s", int, 5),
        proof_retry_s=_typed(fleet, "fleet", "proof_retry_s", int, 30),
        mqtt=_broker(mqtt, base),
        group=_typed(mqtt, "mqtt", "group", str, "sealink-fleet"),
        receive_maximum=_typed(mqtt, "mqtt", "receive_maximum", int, 1000),
        listen=parse_listen(
            "serve.listen", _typed(serve, "serve", "listen", str, "127.0.0.1:8470")
        ),
        tls_cert_file=tls_cert_file,
        tls_key_file=tls_key_file,
        approver=approver,
        approver_key_file=(
            base / _typed(serve, "serve", "approver_key_file", str, "")
            if approver is not None
            else None
        ),
        bundle_timeout_s=_typed(serve, "serve", "bundle_timeout_s", int, 10),
        gateways=tuple(
            (gw, _raw_key(gw, base / str(_typed(gateways, "gateways", gw, str, ""))))
            for gw in sorted(gateways)
        ),
    )
