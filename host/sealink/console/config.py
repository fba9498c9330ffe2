"""The console's TOML configuration, validated with errors that name key and problem.

[console]
listen = "127.0.0.1:8470"            # host:port of the web server (port 0: any free port)
data_dir = "console-data"            # its SQLite: accounts, sessions' audit, acks, records
secret_key_file = "console.secret"   # signs session cookies; `sealink console init`, 0600
approver = "ops-console"             # optional: the approver name its requests are signed as
approver_key_file = "approver.key"   # optional: that approver's key (SPEC §11.5)
tls_cert_file = "console.pem"        # optional: serve HTTPS with this certificate (chain, PEM)
tls_key_file = "console.key"         # and its unencrypted private key, 0600

[mqtt]                               # as the gateway's [mqtt] (host, port, prefix, tls, ...)
host = "127.0.0.1"

[[gateways]]                         # each gateway it follows, with its pinned public key
id = "gw-1"
public_key = "gw-1.pub.pem"          # `sealink keys show` on that gateway

[fleet]                              # optional: the fleet ledger's query API (Records page)
url = "https://fleet.example:8470"   # https://; http:// only to a loopback host
token_file = "fleet.token"           # its bearer token, one line (`sealink fleet tokens add`), 0600
ca_file = "fleet-ca.pem"             # optional: the CA of its certificate (default: the system's)
timeout_s = 10                       # optional: per request
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealink.config import (
    NAME_RE,
    MqttConfig,
    check_private,
    check_server_tls,
    https_client_context,
    parse_mqtt,
    read_line_file,
    read_toml,
    require_together,
)
from sealink.errors import ConfigError, SealinkError

__all__ = [
    "ConsoleConfig",
    "ConsoleError",
    "FleetLink",
    "FollowedGateway",
    "load_console_config",
    "parse_console_config",
]

_CONSOLE_KEYS = (
    "listen",
    "data_dir",
    "secret_key_file",
    "approver",
    "approver_key_file",
    "tls_cert_file",
    "tls_key_file",
)
_GATEWAY_KEYS = ("id", "public_key")
_FLEET_KEYS = ("url", "token_file", "ca_file", "timeout_s")
_FLEET_TIMEOUT_S = 10.0
_FLEET_TIMEOUT_MAX_S = 300.0


class ConsoleError(SealinkError):
    """The console cannot start, or a console command cannot do what it was asked."""


@dataclass(frozen=True)
class FollowedGateway:
    gateway_id: str
    public_raw: bytes  # its Ed25519 countersigning key, pinned


@dataclass(frozen=True)
class FleetLink:
    """The fleet ledger's query API the Records page reads (`sealink fleet serve`)."""

    url: str  # no trailing slash: API paths are appended
    token_file: Path
    ca_file: Path | None = None  # None: the system's CAs
    timeout_s: float = _FLEET_TIMEOUT_S
    # Read at load when files are checked (None when not); never in a repr, so never logged.
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ConsoleConfig:
    listen: tuple[str, int]
    data_dir: Path
    secret_key_file: Path
    mqtt: MqttConfig
    gateways: tuple[FollowedGateway, ...]
    approver: str | None = None
    approver_key_file: Path | None = None
    tls_cert_file: Path | None = None  # None: plain HTTP (behind a TLS reverse proxy)
    tls_key_file: Path | None = None
    fleet: FleetLink | None = None  # None: no Records page

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file is not None else "http"

    @property
    def database(self) -> Path:
        return self.data_dir / "console.sqlite"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"sealink-console-{os.getpid()}"

    def approver_client_id(self, gateway_id: str) -> str:
        """Fixed across restarts, so the broker keeps the session that gathers the gateway's
        results while the console is away: [mqtt] client_id, else the approver's name."""
        base = self.mqtt.client_id or f"sealink-console-{self.approver}"
        return f"{base}-approver-{gateway_id}"

    def gateway_keys(self) -> dict[str, list[bytes]]:
        """gateway id -> its keys, as sealink_verify.mqtt.verify_message takes them."""
        return {g.gateway_id: [g.public_raw] for g in self.gateways}


def _table(data: Any, key: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(key, "must be a table")
    for name in data:
        if name not in known:
            where = f"{key}.{name}" if key else name
            raise ConfigError(where, f"unknown key (known: {', '.join(known)})")
    return data


def _str(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}", "missing, or not a non-empty string")
    return value


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("console.listen", f"must be host:port, port 0..65535; got {value!r}")
    return host, int(port)


def _public_key(path: Path, where: str) -> bytes:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(where, f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(where, f"{path}: not a PEM public key (`sealink keys show`)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(where, f"{path}: not an Ed25519 key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _gateways(raw: Any, resolve: Any) -> tuple[FollowedGateway, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("gateways", "follow at least one gateway ([[gateways]] id, public_key)")
    out = []
    for i, item in enumerate(raw):
        where = f"gateways[{i}]"
        table = _table(item, where, _GATEWAY_KEYS)
        gateway_id = _str(table, "id", where)
        if not NAME_RE.match(gateway_id):
            raise ConfigError(f"{where}.id", f"{gateway_id!r} is not a gateway id")
        key = _public_key(resolve(_str(table, "public_key", where)), f"{where}.public_key")
        out.append(FollowedGateway(gateway_id, key))
    if len({g.gateway_id for g in out}) != len(out):
        raise ConfigError("gateways", "a gateway is followed twice")
    return tuple(out)


def _tls(
    console: dict[str, Any], resolve: Any, check_files: bool
) -> tuple[Path | None, Path | None]:
    """The HTTPS certificate and key files, checked (check_server_tls) unless told not to."""
    require_together(console, "console", "tls_cert_file", "tls_key_file")
    if console.get("tls_cert_file") is None:
        return None, None
    cert_file = resolve(_str(console, "tls_cert_file", "console"))
    key_file = resolve(_str(console, "tls_key_file", "console"))
    if check_files:
        check_server_tls(cert_file, key_file, "console", "console")
    return cert_file, key_file


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fleet_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError for a port that is not one
    except ValueError as exc:
        raise ConfigError("fleet.url", f"not a URL: {exc}") from None
    # First, and not echoed: a URL with a user may carry a password.
    if parts.username is not None or parts.query or parts.fragment:
        raise ConfigError("fleet.url", "no user, query or fragment: the token authenticates")
    if parts.scheme not in ("https", "http") or not parts.hostname or port == 0:
        raise ConfigError("fleet.url", f"must be https://HOST[:PORT][/PATH], got {value!r}")
    # The bearer token travels in every request: in clear only where it cannot leave the host.
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ConfigError("fleet.url", f"http:// only to a loopback host; use https:// for {value}")
    return value.rstrip("/")


def _fleet(raw: Any, resolve: Any, check_files: bool) -> FleetLink | None:
    """The [fleet] table; with `check_files`, the token read (its file 0600) and the CA
    file tried on a TLS context."""
    if raw is None:
        return None
    table = _table(raw, "fleet", _FLEET_KEYS)
    timeout_s = table.get("timeout_s", _FLEET_TIMEOUT_S)
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not 0 < timeout_s <= _FLEET_TIMEOUT_MAX_S
    ):
        raise ConfigError("fleet.timeout_s", f"seconds, above 0, at most {_FLEET_TIMEOUT_MAX_S:g}")
    link = FleetLink(
        url=_fleet_url(_str(table, "url", "fleet")),
        token_file=resolve(_str(table, "token_file", "fleet")),
        ca_file=resolve(_str(table, "ca_file", "fleet")) if "ca_file" in table else None,
        timeout_s=float(timeout_s),
    )
    if not check_files:
        return link
    check_private(link.token_file, "fleet.token_file", "fleet token file")
    token = read_line_file(link.token_file, "fleet.token_file", "bearer token")
    https_client_context(link.ca_file, "fleet")  # a CA file that is not PEM CA certificates
    return replace(link, token=token)


def parse_console_config(
    data: dict[str, Any], base: Path | None = None, check_files: bool = True
) -> ConsoleConfig:
    _table(data, "", ("console", "mqtt", "gateways", "fleet"))
    console = _table(data.get("console"), "console", _CONSOLE_KEYS)

    def resolve(p: str) -> Path:
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() or base is None else base / path

    require_together(console, "console", "approver", "approver_key_file")
    approver = console.get("approver")
    if approver is not None and not NAME_RE.match(str(approver)):
        raise ConfigError("console.approver", f"{approver!r} is not an approver name")
    tls_cert_file, tls_key_file = _tls(console, resolve, check_files)
    return ConsoleConfig(
        listen=_listen(_str(console, "listen", "console")),
        data_dir=resolve(_str(console, "data_dir", "console")),
        secret_key_file=resolve(_str(console, "secret_key_file", "console")),
        mqtt=parse_mqtt(data.get("mqtt", {}), base=base, check_files=check_files),
        gateways=_gateways(data.get("gateways"), resolve),
        approver=approver,
        approver_key_file=resolve(_str(console, "approver_key_file", "console"))
        if approver is not None
        else None,
        tls_cert_file=tls_cert_file,
        tls_key_file=tls_key_file,
        fleet=_fleet(data.get("fleet"), resolve, check_files),
    )


def load_console_config(path: str | os.PathLike[str], check_files: bool = True) -> ConsoleConfig:
    path = Path(path)
    return parse_console_config(read_toml(path), path.resolve().parent, check_files)
