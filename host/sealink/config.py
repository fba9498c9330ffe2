"""The gateway's one TOML configuration file, validated with errors that name key and problem.

[gateway]
id = "gw-1"                          # [A-Za-z0-9._-], 1..32; names the gateway topics
key_file = "/etc/sealink/gateway.key" # made by `sealink keys init`, must be 0600
link_keys = "/etc/sealink/link-keys" # optional; default "link-keys" beside key_file; 0600
ack_key_file = "/etc/sealink/gateway.ack.key" # optional, this default; `sealink keys init`, 0600
ack_key_tpm = "device:/dev/tpmrm0"   # optional: the ack key is made inside this TPM (a TCTI);
                                     # ack_key_file then holds only its TPM-wrapped blob
ledger = "/var/lib/sealink/ledger.sqlite"

[mqtt]
host = "127.0.0.1"
port = 1883
prefix = "sealink"
client_id = "sealink-gw-1"           # optional; default "sealink-<gateway.id>"
keepalive_s = 30
inflight = 256                       # publishes awaiting PUBACK, at most
reconnect_min_s = 0.1
reconnect_max_s = 10.0
session_expiry_s = 86400             # MQTT 5: how long the broker keeps the gateway's session
tls = true                           # optional; TLS 1.2 or later, the broker's name checked
ca_file = "/etc/sealink/mqtt-ca.pem" # optional: the broker's CA (default: the system's CAs)
cert_file = "/etc/sealink/mqtt.crt"  # optional: a client certificate, with key_file (0600)
key_file = "/etc/sealink/mqtt.key"
server_name = "broker.example"       # optional: the name in the broker's certificate (and SNI)
username = "gw-1"                    # optional: the login; the shipped ACL wants the gateway id
password_file = "/etc/sealink/mqtt.password" # optional: the password, one line, 0600

[ledger]
group_commit_rows = 512              # at most this many rows per transaction
group_commit_ms = 0.0                # linger before a commit to gather more rows
checkpoint_interval_s = 10.0         # sign a transparency-log checkpoint this often (if it grew)

[[ports]]
url = "/dev/ttyUSB0"                 # any pyserial URL: rfc2217://, socket://, spy://; or
                                     # ble://<device id>[?…] (sealink/transport/bleurl.py)
transport = "serial"                 # optional: "serial", or "ble" (a ble:// URL implies it)
baudrate = 115200

[[witnesses]]                        # optional: who cosigns the checkpoints (SPEC §14.6)
vkey = "audit.example/w1+8c4f3a2b+BK…" # the witness's key, as `sealink witness init` prints it

[metrics]                            # optional: off unless `listen` is given
listen = "127.0.0.1:9464"            # host:port ([v6]:port) of /metrics (Prometheus) and
                                     # /healthz (JSON); port 0 picks a free one

[log]
level = "info"
json = false
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sealink.crypto.signer import check_private_file
from sealink.crypto.vkey import COSIGNATURE_ALG, parse_vkey
from sealink.errors import ConfigError, KeyFileError
from sealink.topics import witness_name_problem

__all__ = [
    "ApprovalsConfig",
    "Config",
    "FleetLinkConfig",
    "LedgerConfig",
    "LogConfig",
    "MetricsConfig",
    "MqttConfig",
    "PortConfig",
    "WitnessKey",
    "check_private",
    "check_server_tls",
    "https_client_context",
    "load_config",
    "parse_mqtt",
    "read_line_file",
    "read_toml",
    "require_together",
    "tls_context",
]

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
_TOPIC_FORBIDDEN = set("+#\0")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_SERIAL_SCHEMES = ("", "rfc2217", "socket", "spy", "loop", "hwgrep", "alt", "cp2110")
# A TCTI as tpm2-tools takes it: the TCTI library's name, then its own configuration.
_TCTI_RE = re.compile(r"^[a-z0-9_-]+(:\S*)?$")


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "sealink"
    client_id: str = ""
    keepalive_s: int = 30
    inflight: int = 256
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 10.0
    # The gateway's publisher resumes its session (clean start off); the broker keeps it this
    # long after a disconnect (MQTT 5 §3.1.2.11.2).
    session_expiry_s: int = 24 * 3600
    tls: bool = False
    ca_file: Path | None = None  # None: the system's CAs
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str = ""  # checked against the broker's certificate; "" means `host`
    username: str = ""
    password_file: Path | None = None
    # Read from password_file when the config is loaded; never a config key, never printed.
    password: str | None = field(default=None, repr=False)
    # Beside each record's COSE, its decoded JSON on `<prefix>/<device>/events/json` (SPEC §11.2).
    json_companion: bool = True


@dataclass(frozen=True)
class LedgerConfig:
    group_commit_rows: int = 512
    group_commit_ms: float = 0.0
    checkpoint_interval_s: float = 10.0


@dataclass(frozen=True)
class PortConfig:
    url: str
    transport: str = "serial"
    baudrate: int = 115200


@dataclass(frozen=True)
class WitnessKey:
    """A witness whose cosignatures of the checkpoints the gateway keeps (SPEC §14.6)."""

    name: str
    public_raw: bytes


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    json: bool = False


@dataclass(frozen=True)
class MetricsConfig:
    # (host, port) of the metrics and health endpoint; None: not served.
    listen: tuple[str, int] | None = None


@dataclass(frozen=True)
class ApprovalsConfig:
    # A request whose time_ms is further than this from the gateway's clock is refused as
    # stale (SPEC §11.5): with seq, it bounds how long a captured request stays usable.
    max_skew_s: int = 300
    # Refusals handled one by one (a ledger row, a signed result, an alarm) per claimed
    # approver name and in all, a minute's worth at once (SPEC §11.5); beyond them a refusal
    # is counted into one summary a minute. 30 a name records every retry of an approval
    # system with a wrong key or clock (one each 2 s); 120 in all, four of those at once.
    refusals_per_approver_per_min: int = 30
    refusals_per_min: int = 120


@dataclass(frozen=True)
class FleetLinkConfig:
    # The fleet's registry key (raw Ed25519, SPEC §11.6); None: the gateway takes no registry.
    public_key: bytes | None = None


def _fleet_key(key: str, value: Any) -> Any:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(key, "must be the fleet's Ed25519 public key, 64 hex digits "
                          "(`sealink fleet keys init` prints it)")  # fmt: skip
    return raw


@dataclass(frozen=True)
class Config:
    gateway_id: str
    key_file: Path
    ledger_path: Path
    # The seals' link keys (crypto/keystore.py): never in the ledger, whose copies travel.
    link_keys: Path
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    ports: tuple[PortConfig, ...] = ()
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = None
    # Signs that seals' records are stored, so that they may free them (SPEC §5.11); a
    # config file always names one (default beside key_file), a Config made in code may not.
    ack_key_file: Path | None = None
    # The TCTI of the TPM that holds the acknowledgement key; None: ack_key_file is a PEM key.
    ack_key_tpm: str | None = None
    witnesses: tuple[WitnessKey, ...] = ()
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # A seal in session but not heard from for this many STATUS intervals (SPEC §5.3: it sends
    # one at least every STATUS_INTERVAL_MS) is published offline (SPEC §11.2).
    offline_after_status_intervals: float = 3.0
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    fleet: FleetLinkConfig = field(default_factory=FleetLinkConfig)

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"sealink-{self.gateway_id}"


_Check = Callable[[str, Any], Any]


def _type(expected: type, name: str) -> _Check:
    def check(key: str, value: Any) -> Any:
        # bool is an int in Python; a config that says `port = true` is still wrong.
        if isinstance(value, bool) and expected is not bool:
            raise ConfigError(key, f"must be {name}, got a boolean")
        if expected is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, expected):
            raise ConfigError(key, f"must be {name}, got {type(value).__name__} {value!r}")
        return value

    return check


def _int_range(lo: int, hi: int) -> _Check:
    def check(key: str, value: Any) -> Any:
        value = _type(int, "an integer")(key, value)
        if not lo <= value <= hi:
            raise ConfigError(key, f"must be between {lo} and {hi}, got {value}")
        return value

    return check


def _positive_float(key: str, value: Any) -> Any:
    value = _type(float, "a number")(key, value)
    if value < 0:
        raise ConfigError(key, f"must not be negative, got {value}")
    return value


def _liveness_multiple(key: str, value: Any) -> Any:
    value = _type(float, "a number")(key, value)
    if value <= 0:
        raise ConfigError(
            key, f"must be above 0 (a multiple of the seals' STATUS interval), got {value}"
        )
    return float(value)


def _interval_s(key: str, value: Any) -> Any:
    value = _type(float, "a number")(key, value)
    if not 0.1 <= value <= 86_400:
        raise ConfigError(key, f"must be between 0.1 and 86400 seconds, got {value}")
    return value


def _name(key: str, value: Any) -> Any:
    value = _type(str, "a string")(key, value)
    if not NAME_RE.match(value):
        raise ConfigError(key, f"must be 1..32 characters of A-Z a-z 0-9 . _ -, got {value!r}")
    return value


def _host(key: str, value: Any) -> Any:
    value = _type(str, "a string")(key, value)
    if not value or any(c.isspace() for c in value) or "/" in value:
        raise ConfigError(key, f"must be a host name or address, got {value!r}")
    return value


def _prefix(key: str, value: Any) -> Any:
    value = _type(str, "a string")(key, value)
    if not value or value.startswith("/") or value.endswith("/") or _TOPIC_FORBIDDEN & set(value):
        raise ConfigError(key, f"must be an MQTT topic prefix without wildcards, got {value!r}")
    return value


def _level(key: str, value: Any) -> Any:
    value = _type(str, "a string")(key, value)
    if value.lower() not in _LOG_LEVELS:
        raise ConfigError(key, f"must be one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return value.lower()


def _transport(key: str, value: Any) -> Any:
    from sealink.transport.base import TRANSPORTS

    value = _type(str, "a string")(key, value)
    if value not in TRANSPORTS:
        raise ConfigError(key, f"unknown transport {value!r}; known: {', '.join(TRANSPORTS)}")
    return value


def _serial_url(key: str, value: Any) -> Any:
    value = _type(str, "a string")(key, value)
    if not value.strip():
        raise ConfigError(key, "must not be empty")
    scheme = urlsplit(value).scheme if "://" in value else ""
    if scheme not in _SERIAL_SCHEMES:
        raise ConfigError(
            key,
            f"unsupported URL scheme {scheme!r}; use a device path or one of "
            "rfc2217://, socket://, spy://, loop://",
        )
    if scheme in ("rfc2217", "socket"):
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ConfigError(key, f"{scheme}:// URL needs host:port, got {value!r}")
    return value


def _port_url(key: str, value: Any) -> Any:
    value = _type(str, "a string")(key, value)
    if not value.startswith("ble:"):
        return _serial_url(key, value)
    from sealink.transport.bleurl import parse_ble_url

    try:
        parse_ble_url(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
    return value


def _port(table: Any, key_prefix: str) -> PortConfig:
    fields = _section("ports", table, key_prefix)
    wanted = "ble" if fields["url"].startswith("ble:") else "serial"
    if fields.setdefault("transport", wanted) != wanted:
        raise ConfigError(
            f"{key_prefix}.transport",
            f"{fields['transport']!r} does not match url {fields['url']!r} ({wanted})",
        )
    return PortConfig(**fields)


def _tcti(key: str, value: Any) -> Any:
    value = _type(str, "a string")(key, value)
    if not _TCTI_RE.match(value):
        raise ConfigError(
            key,
            "must be a TCTI such as device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321, "
            f"got {value!r}",
        )
    return value


def _witness_vkey(key: str, value: Any) -> Any:
    value = _type(str, "a string")(key, value)
    try:
        name, public = parse_vkey(value, COSIGNATURE_ALG)
    except ValueError as exc:
        raise ConfigError(key, f"{exc} (print it with `sealink witness init`)") from None
    problem = witness_name_problem(name)
    if problem is not None:
        raise ConfigError(key, problem)
    return WitnessKey(name, public)


def _listen(key: str, value: Any) -> Any:
    value = _type(str, "a string")(key, value)
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 address, as in a URL
    elif ":" in host:
        raise ConfigError(key, f"an IPv6 address goes in brackets, [::1]:9464; got {value!r}")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"must be host:port with a port 0..65535, got {value!r}")
    return _host(key, host), int(port)


def _username(key: str, value: Any) -> Any:
    value = _type(str, "a string")(key, value)
    if not value or len(value.encode()) > 0xFFFF or "\0" in value:
        raise ConfigError(key, "must be a non-empty MQTT user name")
    return value


def _path(key: str, value: Any) -> Any:
    value = _type(str, "a string")(key, value)
    if not value:
        raise ConfigError(key, "must be a file path")
    return value


# schema: section -> key -> (check, required)
_SCHEMA: dict[str, dict[str, tuple[_Check, bool]]] = {
    "gateway": {
        "id": (_name, True),
        "key_file": (_path, True),
        "link_keys": (_path, False),
        "ack_key_file": (_path, False),
        "ack_key_tpm": (_tcti, False),
        "ledger": (_path, True),
        "offline_after_status_intervals": (_liveness_multiple, False),
    },
    "mqtt": {
        "host": (_host, False),
        "port": (_int_range(1, 65535), False),
        "prefix": (_prefix, False),
        "client_id": (_type(str, "a string"), False),
        "keepalive_s": (_int_range(1, 65535), False),
        "inflight": (_int_range(1, 65535), False),
        "reconnect_min_s": (_positive_float, False),
        "reconnect_max_s": (_positive_float, False),
        "session_expiry_s": (_int_range(0, 0xFFFFFFFF), False),
        "tls": (_type(bool, "true or false"), False),
        "ca_file": (_path, False),
        "cert_file": (_path, False),
        "key_file": (_path, False),
        "server_name": (_host, False),
        "username": (_username, False),
        "password_file": (_path, False),
        "json_companion": (_type(bool, "true or false"), False),
    },
    "ledger": {
        "group_commit_rows": (_int_range(1, 100_000), False),
        "group_commit_ms": (_positive_float, False),
        "checkpoint_interval_s": (_interval_s, False),
    },
    "ports": {
        "url": (_port_url, True),
        "transport": (_transport, False),
        "baudrate": (_int_range(50, 20_000_000), False),
    },
    "witnesses": {
        "vkey": (_witness_vkey, True),
    },
    "metrics": {
        "listen": (_listen, False),
    },
    "approvals": {
        "max_skew_s": (_int_range(1, 86_400), False),
        # At most one a millisecond: a bucket refills in whole milliseconds.
        "refusals_per_approver_per_min": (_int_range(1, 60_000), False),
        "refusals_per_min": (_int_range(1, 60_000), False),
    },
    "fleet": {
        "public_key": (_fleet_key, False),
    },
    "log": {
        "level": (_level, False),
        "json": (_type(bool, "true or false"), False),
    },
}


def _section(
    name: str,
    table: Any,
    key_prefix: str,
    own: Collection[str] = (),
    unused: Collection[str] = (),
) -> dict[str, Any]:
    """The checked values of `table` by section `name`'s schema, less the keys in `unused`
    (refused as unknown) and the keys in `own` (skipped: the caller takes them)."""
    if not isinstance(table, Mapping):
        raise ConfigError(key_prefix, f"must be a table, got {type(table).__name__}")
    schema = {k: v for k, v in _SCHEMA[name].items() if k not in unused}
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in own:
            continue
        if key not in schema:
            known = ", ".join([*schema, *own])
            raise ConfigError(f"{key_prefix}.{key}", f"unknown key (known: {known})")
        check, _ = schema[key]
        out[key] = check(f"{key_prefix}.{key}", value)
    for key, (_, required) in schema.items():
        if required and key not in out:
            raise ConfigError(f"{key_prefix}.{key}", "missing (required)")
    return out


_MQTT_FILES = ("ca_file", "cert_file", "key_file", "password_file")
_MQTTS_PORT = 8883


def parse_mqtt(
    table: Any,
    key_prefix: str = "mqtt",
    base: Path | None = None,
    check_files: bool = True,
    own: Collection[str] = (),
    unused: Collection[str] = (),
) -> MqttConfig:
    """An [mqtt] table as the gateway takes it (the witness's config has the same). Relative
    paths resolve against `base`. With `check_files`, the TLS files and the password file must
    be readable (the private ones by their owner only), the password is read, and the TLS
    settings are tried on a TLS context; without, only their syntax is checked (commands that
    do not connect, run by users who may not read them). A caller with keys of its own in the
    table names them in `own` (skipped here), and the gateway's keys it has no use for in
    `unused` (refused, so a setting that would do nothing is not silently taken)."""
    fields = _section("mqtt", table, key_prefix, own, unused)
    for key in _MQTT_FILES:
        if key in fields:
            fields[key] = _resolve(fields[key], base)
    if fields.get("tls", False):
        fields.setdefault("port", _MQTTS_PORT)
    mqtt = MqttConfig(**fields)
    if mqtt.reconnect_max_s < mqtt.reconnect_min_s:
        raise ConfigError(
            f"{key_prefix}.reconnect_max_s", f"must not be less than {key_prefix}.reconnect_min_s"
        )
    _check_mqtt_keys(mqtt, key_prefix)
    if not check_files:
        return mqtt
    for key in ("ca_file", "cert_file"):
        path = getattr(mqtt, key)
        if path is not None:
            _readable(path, f"{key_prefix}.{key}")
    for key, what in (("key_file", "MQTT client key"), ("password_file", "MQTT password file")):
        path = getattr(mqtt, key)
        if path is not None:
            _readable(path, f"{key_prefix}.{key}")
            check_private(path, f"{key_prefix}.{key}", what)
    if mqtt.password_file is not None:
        password = read_line_file(mqtt.password_file, f"{key_prefix}.password_file", "password")
        mqtt = replace(mqtt, password=password)
    if mqtt.tls:
        tls_context(mqtt, key_prefix)  # a bad PEM or a key that is not the certificate's
    return mqtt


def require_together(table: Mapping[str, object], key_prefix: str, first: str, second: str) -> None:
    """`first` and `second` are both in `table` (and not None) or both left out; the
    ConfigError names the one left out, the key the user has to add."""
    first_missing, second_missing = table.get(first) is None, table.get(second) is None
    if first_missing != second_missing:
        key = first if first_missing else second
        raise ConfigError(f"{key_prefix}.{key}", f"{first} and {second} go together")


def _check_mqtt_keys(mqtt: MqttConfig, key_prefix: str) -> None:
    """Settings that make sense only together."""
    if not mqtt.tls:
        for key in ("ca_file", "cert_file", "key_file", "server_name"):
            if getattr(mqtt, key):
                raise ConfigError(f"{key_prefix}.{key}", "needs tls = true")
    require_together(vars(mqtt), key_prefix, "cert_file", "key_file")
    if mqtt.password_file is not None and not mqtt.username:
        raise ConfigError(f"{key_prefix}.username", "missing: password_file needs a username")


def _readable(path: Path, key: str) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None


def check_private(path: Path, key: str, what: str) -> None:
    """check_private_file, its refusal a ConfigError naming the config's `key`."""
    try:
        check_private_file(path, what)
    except KeyFileError as exc:
        raise ConfigError(key, str(exc)) from None


def read_line_file(path: Path, key: str, what: str) -> str:
    """The secret a file holds on its one line (a password, a bearer token); ConfigError
    naming `key` if it cannot be read or holds no such line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path}: not UTF-8 text") from None
    # One line: the line ending an editor adds is not part of the secret.
    line = text.removesuffix("\n").removesuffix("\r")
    if not line or "\n" in line:
        raise ConfigError(key, f"{path}: must hold the {what} on one line")
    return line


class _NamedContext(ssl.SSLContext):
    """Checks the broker's certificate against `server_name` (and sends it as SNI) instead of
    the host that paho connects to."""

    server_name: str | None = None

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self.server_name or server_hostname,
            session=session,
        )


def _no_passphrase() -> bytes:
    # An encrypted client key would make OpenSSL ask on the terminal, which a service has not.
    return b""


def _tls_why(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    return exc.strerror or str(exc)


_Context = TypeVar("_Context", bound=ssl.SSLContext)


def _trusting(context: _Context, ca_file: Path | None, section: str) -> _Context:
    """`context` (a PROTOCOL_TLS_CLIENT one: it verifies the chain and the name) on TLS 1.2 or
    later, trusting `ca_file`, else the system's CAs; ConfigError naming `section`.ca_file."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca_file is not None:
            context.load_verify_locations(cafile=str(ca_file))
        else:
            context.load_default_certs()
    except OSError as exc:  # ssl.SSLError is one
        raise ConfigError(
            f"{section}.ca_file", f"{ca_file}: not PEM CA certificates ({_tls_why(exc)})"
        ) from None
    return context


def https_client_context(ca_file: Path | None, section: str) -> ssl.SSLContext:
    """The TLS context of an HTTPS client: TLS 1.2 or later, the server's chain (to `ca_file`,
    else to the system's CAs) and name verified; ConfigError naming `section`.ca_file."""
    return _trusting(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca_file, section)


def tls_context(mqtt: MqttConfig, key_prefix: str = "mqtt") -> ssl.SSLContext:
    """The TLS context of a connection to the broker: TLS 1.2 or later, the broker's chain and
    name verified (no setting turns that off). ConfigError naming the key if a file is not
    what it should be."""
    context = _trusting(_NamedContext(ssl.PROTOCOL_TLS_CLIENT), mqtt.ca_file, key_prefix)
    context.server_name = mqtt.server_name or None
    if mqtt.cert_file is not None:
        try:
            context.load_cert_chain(str(mqtt.cert_file), str(mqtt.key_file), _no_passphrase)
        except OSError as exc:
            raise ConfigError(
                f"{key_prefix}.cert_file",
                f"{mqtt.cert_file} with {mqtt.key_file}: not a PEM certificate and its "
                f"unencrypted private key ({_tls_why(exc)})",
            ) from None
    return context


def check_server_tls(cert_file: Path, key_file: Path, section: str, what: str) -> None:
    """An HTTPS server's certificate and key, checked as uvicorn will load them: a 0600 key
    that goes with the certificate (else a ConfigError naming `section`'s key now, not a
    traceback when the server starts)."""
    check_private(key_file, f"{section}.tls_key_file", f"{what} TLS key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            cert_file, key_file, _no_passphrase
        )
    except OSError as exc:  # ssl.SSLError is one
        raise ConfigError(
            f"{section}.tls_cert_file",
            f"{cert_file} with {key_file}: not a PEM certificate and its unencrypted "
            f"private key ({_tls_why(exc)})",
        ) from None


def _approvals(table: Any) -> ApprovalsConfig:
    fields = _section("approvals", table, "approvals")
    approvals = ApprovalsConfig(**fields)
    if approvals.refusals_per_approver_per_min > approvals.refusals_per_min:
        # The key the user set is the one to change (the other may be its default).
        key = "refusals_per_approver_per_min"
        if key not in fields:
            key = "refusals_per_min"
        raise ConfigError(
            f"approvals.{key}",
            f"refusals_per_approver_per_min ({approvals.refusals_per_approver_per_min}) must "
            f"not be above refusals_per_min ({approvals.refusals_per_min})",
        )
    return approvals


def _witnesses(raw: Any) -> tuple[WitnessKey, ...]:
    if not isinstance(raw, list):
        raise ConfigError("witnesses", "must be an array of tables ([[witnesses]])")
    keys = tuple(_section("witnesses", w, f"witnesses[{i}]")["vkey"] for i, w in enumerate(raw))
    names = [k.name for k in keys]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"witnesses[{i}].vkey", f"witness {name} is named twice")
    return keys


def _resolve(p: str, base: Path | None) -> Path:
    path = Path(os.path.expanduser(p))
    return path if path.is_absolute() or base is None else base / path


def ack_key_beside(key_file: Path) -> Path:
    """The acknowledgement key's default place: gateway.key -> gateway.ack.key."""
    return key_file.with_suffix(".ack.key")


def parse_config(
    data: Mapping[str, Any], base: Path | None = None, check_key_file: bool = True
) -> Config:
    """Validate a parsed TOML document; relative paths resolve against `base`."""
    for name in data:
        if name not in _SCHEMA:
            raise ConfigError(name, f"unknown section (known: {', '.join(_SCHEMA)})")
    if "gateway" not in data:
        raise ConfigError("gateway", "missing section [gateway]")
    gateway = _section("gateway", data["gateway"], "gateway")
    ledger = _section("ledger", data.get("ledger", {}), "ledger")
    log = _section("log", data.get("log", {}), "log")
    metrics = _section("metrics", data.get("metrics", {}), "metrics")
    approvals = _approvals(data.get("approvals", {}))
    fleet = _section("fleet", data.get("fleet", {}), "fleet")
    ports_raw = data.get("ports", [])
    if not isinstance(ports_raw, list):
        raise ConfigError("ports", "must be an array of tables ([[ports]])")
    ports = tuple(_port(p, f"ports[{i}]") for i, p in enumerate(ports_raw))
    mqtt_cfg = parse_mqtt(data.get("mqtt", {}), base=base, check_files=check_key_file)
    witnesses = _witnesses(data.get("witnesses", []))

    def resolve(p: str) -> Path:
        return _resolve(p, base)

    key_file = resolve(gateway["key_file"])
    link_keys = resolve(gateway.get("link_keys", str(key_file.with_name("link-keys"))))
    ledger_path = resolve(gateway["ledger"])
    if link_keys in (key_file, ledger_path):
        raise ConfigError("gateway.link_keys", f"must be a file of its own, got {link_keys}")
    ack_key_file = resolve(gateway.get("ack_key_file", str(ack_key_beside(key_file))))
    if ack_key_file in (key_file, ledger_path, link_keys):
        raise ConfigError("gateway.ack_key_file", f"must be a file of its own, got {ack_key_file}")
    if check_key_file:
        if not os.access(key_file, os.R_OK):
            raise ConfigError("gateway.key_file", f"cannot read {key_file}")
        check_private(key_file, "gateway.key_file", "key file")
        # Absent until the first `sealink devices add`; once there, as private as the key.
        if link_keys.exists():
            check_private(link_keys, "gateway.link_keys", "link key store")
        if ack_key_file.exists():
            check_private(ack_key_file, "gateway.ack_key_file", "acknowledgement key")
    return Config(
        gateway_id=gateway["id"],
        key_file=key_file,
        ledger_path=ledger_path,
        link_keys=link_keys,
        ack_key_file=ack_key_file,
        ack_key_tpm=gateway.get("ack_key_tpm"),
        offline_after_status_intervals=gateway.get("offline_after_status_intervals", 3.0),
        witnesses=witnesses,
        mqtt=mqtt_cfg,
        ledger=LedgerConfig(**ledger),
        ports=ports,
        log=LogConfig(**log),
        metrics=MetricsConfig(**metrics),
        approvals=approvals,
        fleet=FleetLinkConfig(**fleet),
    )


def read_toml(path: Path) -> dict[str, Any]:
    """A config file's tables; ConfigError if it cannot be read or is not TOML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path}: not valid TOML: {exc}") from None


def load_config(path: str | os.PathLike[str], check_key_file: bool = True) -> Config:
    path = Path(path)
    config = parse_config(read_toml(path), path.resolve().parent, check_key_file)
    return Config(**{**config.__dict__, "source": path})
