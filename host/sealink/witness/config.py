"""The witness's TOML configuration, validated with errors that name key and problem.

[witness]
name = "audit.example/w1"            # its key's name and its topics' last levels
key_file = "witness.key"             # made by `sealink witness init`, must be 0600
state_dir = "witness-state"          # the last cosigned checkpoint of each gateway, evidence
proof_timeout_s = 10.0               # optional: how long to wait for a proof reply

[mqtt]                               # as the gateway's [mqtt] (host, port, prefix, tls, ...)
host = "127.0.0.1"

[[gateways]]
vkey = "sealink/gateway/gw-1+2c5f0a1d+AZ…" # `sealink evidence vkey` on the gateway
initial_size = 1200                  # a checkpoint obtained elsewhere (size and root, hex) ...
initial_root = "9f…"
# trust_on_first_use = true          # ... or cosign whatever checkpoint comes first

[log]
level = "info"
json = false
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealink.config import LogConfig, MqttConfig, parse_mqtt, read_toml
from sealink.crypto.vkey import NOTE_ALG, parse_vkey
from sealink.errors import ConfigError
from sealink.topics import witness_name_problem

__all__ = ["FollowedGateway", "WitnessConfig", "load_witness_config", "parse_witness_config"]

_ORIGIN_RE = re.compile(r"^sealink/gateway/([A-Za-z0-9._-]{1,32})$")
_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class FollowedGateway:
    gateway_id: str
    origin: str
    public_raw: bytes  # the gateway's Ed25519 note key
    trust_on_first_use: bool = False
    initial: tuple[int, bytes] | None = None  # (size, root) of a checkpoint known elsewhere


@dataclass(frozen=True)
class WitnessConfig:
    name: str
    key_file: Path
    state_dir: Path
    mqtt: MqttConfig
    gateways: tuple[FollowedGateway, ...]
    proof_timeout_s: float = 10.0
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or "sealink-witness-" + self.name.replace("/", "_")


def _table(data: Any, key: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(key, "must be a table")
    for name in data:
        if name not in known:
            raise ConfigError(f"{key}.{name}", f"unknown key (known: {', '.join(known)})")
    return data


def _str(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}", "missing, or not a non-empty string")
    return value


def _gateway(raw: Any, where: str) -> FollowedGateway:
    table = _table(raw, where, ("vkey", "trust_on_first_use", "initial_size", "initial_root"))
    try:
        origin, public = parse_vkey(_str(table, "vkey", where), NOTE_ALG)
    except ValueError as exc:
        raise ConfigError(f"{where}.vkey", f"{exc} (`sealink evidence vkey` prints it)") from None
    match = _ORIGIN_RE.match(origin)
    if match is None:
        raise ConfigError(f"{where}.vkey", f"{origin!r} is not a gateway's sealink/gateway/<id>")
    tofu = table.get("trust_on_first_use", False)
    if not isinstance(tofu, bool):
        raise ConfigError(f"{where}.trust_on_first_use", "must be true or false")
    initial = None
    if "initial_size" in table or "initial_root" in table:
        size = table.get("initial_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ConfigError(f"{where}.initial_size", "must be a non-negative integer")
        try:
            root = bytes.fromhex(_str(table, "initial_root", where))
        except ValueError:
            root = b""
        if len(root) != 32:
            raise ConfigError(f"{where}.initial_root", "must be 64 hex digits (a SHA-256 root)")
        initial = (size, root)
    if tofu == (initial is not None):
        raise ConfigError(
            where,
            "give either initial_size and initial_root (a checkpoint obtained elsewhere) or "
            "trust_on_first_use = true",
        )
    return FollowedGateway(match.group(1), origin, public, tofu, initial)


def parse_witness_config(data: dict[str, Any], base: Path | None = None) -> WitnessConfig:
    _table(data, "", ("witness", "mqtt", "gateways", "log"))
    witness = _table(
        data.get("witness"), "witness", ("name", "key_file", "state_dir", "proof_timeout_s")
    )
    name = _str(witness, "name", "witness")
    problem = witness_name_problem(name)
    if problem is not None:
        raise ConfigError("witness.name", problem)
    timeout = witness.get("proof_timeout_s", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 600:
        raise ConfigError("witness.proof_timeout_s", "must be a number of seconds, 0 to 600")
    raw = data.get("gateways")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("gateways", "follow at least one gateway ([[gateways]] with a vkey)")
    gateways = tuple(_gateway(g, f"gateways[{i}]") for i, g in enumerate(raw))
    if len({g.origin for g in gateways}) != len(gateways):
        raise ConfigError("gateways", "a gateway is followed twice")
    log = _table(data.get("log", {}), "log", ("level", "json"))
    level = log.get("level", "info")
    if level not in _LEVELS or not isinstance(log.get("json", False), bool):
        raise ConfigError("log", f"level is one of {', '.join(_LEVELS)}; json true or false")

    def resolve(p: str) -> Path:
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() or base is None else base / path

    return WitnessConfig(
        name=name,
        key_file=resolve(_str(witness, "key_file", "witness")),
        state_dir=resolve(_str(witness, "state_dir", "witness")),
        mqtt=parse_mqtt(data.get("mqtt", {}), base=base),
        gateways=gateways,
        proof_timeout_s=float(timeout),
        log=LogConfig(level, log.get("json", False)),
    )


def load_witness_config(path: str | os.PathLike[str]) -> WitnessConfig:
    path = Path(path)
    return parse_witness_config(read_toml(path), path.resolve().parent)
