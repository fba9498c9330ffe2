"""`sealink config check --config FILE [--json]`: is this gateway ready to run?

Checks, without starting a gateway and without disturbing a running one: the config parses;
every file it names exists and can be read; the secret files (gateway key, acknowledgement key,
link key store, MQTT client key and password) are 0600 and owned by whoever runs this or by the
ledger's owner (the service user); the ledger exists (`sealink ledger init`) and opens
read-only; the broker answers a TCP connect and a real MQTT CONNECT with the configured TLS and
login, under a client id of its own (the gateway's id would take the running gateway's session
over). It takes no lock of the ledger's and writes nothing. Exit 0: all is well; 2: each
problem is named.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sqlite3
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.enums import MQTTErrorCode

from sealink.cli.common import add_command, print_json, with_config
from sealink.config import Config, load_config
from sealink.errors import ConfigError
from sealink.mqtt.connection import Client, connect_failure, new_client, refusal

__all__ = ["check", "register"]

_EXIT_PROBLEMS = 2
_BROKER_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "detail": self.detail}


def _owner_ok(st: os.stat_result, ledger_uid: int | None) -> bool:
    return st.st_uid == os.geteuid() or (ledger_uid is not None and st.st_uid == ledger_uid)


def _file(
    name: str, path: Path, *, secret: bool, ledger_uid: int | None, optional: bool = False
) -> Finding:
    try:
        st = path.stat()
    except FileNotFoundError:
        if optional:
            return Finding(name, True, f"{path}: not there yet")
        return Finding(name, False, f"{path}: does not exist")
    except OSError as exc:
        return Finding(name, False, f"{path}: {exc.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return Finding(name, False, f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        return Finding(name, False, f"{path}: cannot be read by uid {os.geteuid()}")
    problems = []
    mode = stat.S_IMODE(st.st_mode)
    if secret and mode & 0o077:
        problems.append(f"mode {mode:04o}, must be 0600 (chmod 600 {path})")
    if secret and not _owner_ok(st, ledger_uid):
        problems.append(
            f"owned by uid {st.st_uid}, neither this user ({os.geteuid()}) nor the ledger's "
            f"owner ({ledger_uid})"
        )
    if problems:
        return Finding(name, False, f"{path}: " + "; ".join(problems))
    return Finding(name, True, f"{path}: ok")


def _ledger(path: Path) -> tuple[Finding, int | None]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (
            Finding("ledger", False, f"{path}: does not exist; create it: sealink ledger init"),
            None,
        )
    except OSError as exc:
        return Finding("ledger", False, f"{path}: {exc.strerror}"), None
    try:
        # Read-only: no migration, no write lock; WAL readers never block the gateway.
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.Error as exc:
        return Finding("ledger", False, f"{path}: cannot be read as a ledger: {exc}"), st.st_uid
    if row is None:
        return Finding("ledger", False, f"{path}: not a sealink ledger (no schema)"), st.st_uid
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        detail = f"{path}: mode {mode:04o}, must be 0600 (chmod 600 {path})"
        return Finding("ledger", False, detail), st.st_uid
    return Finding("ledger", True, f"{path}: schema {row[0]}, owner uid {st.st_uid}"), st.st_uid


def _files(config: Config) -> list[Finding]:
    ledger, ledger_uid = _ledger(config.ledger_path)
    found = [ledger]
    found.append(_file("gateway.key_file", config.key_file, secret=True, ledger_uid=ledger_uid))
    if config.ack_key_file is not None:
        # Absent until `sealink keys init` makes it; the gateway then runs without it (warned).
        found.append(
            _file(
                "gateway.ack_key_file",
                config.ack_key_file,
                secret=True,
                ledger_uid=ledger_uid,
                optional=True,
            )
        )
    found.append(
        _file(
            "gateway.link_keys", config.link_keys, secret=True, ledger_uid=ledger_uid, optional=True
        )
    )
    mqtt = config.mqtt
    named = (
        ("mqtt.ca_file", mqtt.ca_file, False),
        ("mqtt.cert_file", mqtt.cert_file, False),
        ("mqtt.key_file", mqtt.key_file, True),
        ("mqtt.password_file", mqtt.password_file, True),
    )
    for name, path, secret in named:
        if path is not None:
            found.append(_file(name, path, secret=secret, ledger_uid=ledger_uid))
    return found


def _broker(config: Config) -> list[Finding]:
    mqtt = config.mqtt
    where = f"{mqtt.host}:{mqtt.port}"
    try:
        socket.create_connection((mqtt.host, mqtt.port), timeout=_BROKER_TIMEOUT_S).close()
    except OSError as exc:
        return [Finding("mqtt.tcp", False, f"{where}: {exc.strerror or exc}")]
    found = [Finding("mqtt.tcp", True, f"{where}: accepts connections")]
    found.append(_mqtt_connect(config, where))
    return found


def _mqtt_connect(config: Config, where: str) -> Finding:
    # Never the gateway's own id: the broker would hand this probe the gateway's session.
    probe_id = f"sealink-check-{config.gateway_id}-{os.getpid()}"
    client = new_client(config.mqtt, probe_id, Client)
    answered = threading.Event()
    outcome: list[str] = []

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome.append("" if not reason.is_failure else refusal(reason))
        answered.set()

    client.on_connect = on_connect
    try:
        code = client.connect(config.mqtt.host, config.mqtt.port, keepalive=10, clean_start=True)
    except (OSError, ValueError) as exc:
        return Finding("mqtt.connect", False, f"{where}: {connect_failure(exc)}")
    if code != MQTTErrorCode.MQTT_ERR_SUCCESS:
        return Finding("mqtt.connect", False, f"{where}: {code.name}")
    client.loop_start()
    try:
        if not answered.wait(_BROKER_TIMEOUT_S):
            why = client.failure or f"no CONNACK within {_BROKER_TIMEOUT_S:g} s"
            return Finding("mqtt.connect", False, f"{where}: {why}")
        client.disconnect()
    finally:
        client.loop_stop()
    if outcome[0]:
        return Finding("mqtt.connect", False, f"{where}: {outcome[0]}")
    login = f" as {config.mqtt.username}" if config.mqtt.username else ""
    tls = " over TLS" if config.mqtt.tls else ""
    return Finding("mqtt.connect", True, f"{where}: CONNACK ok{tls}{login} (probe {probe_id})")


def check(path: str) -> list[Finding]:
    """Every finding about the config at `path`, problems and passes."""
    try:
        config = load_config(path, check_key_file=False)
    except ConfigError as exc:
        return [Finding("config", False, str(exc))]
    found = [Finding("config", True, f"{path}: parses (gateway {config.gateway_id})")]
    found += _files(config)
    found += _broker(config)
    return found


def cmd_config_check(args: argparse.Namespace) -> int:
    found = check(args.config)
    problems = [f for f in found if not f.ok]
    if args.json:
        print_json({"ok": not problems, "checks": [f.as_dict() for f in found]})
    else:
        for f in found:
            print(f"{'ok ' if f.ok else 'BAD'}  {f.check}: {f.detail}")
    for f in problems:
        print(f"sealink: error: {f.check}: {f.detail}", file=sys.stderr)
    return _EXIT_PROBLEMS if problems else 0


def register(sub: Any) -> None:
    config = sub.add_parser("config", help="the gateway's configuration")
    cfg_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    p = add_command(
        cfg_sub,
        "check",
        cmd_config_check,
        "check the config, its files (modes, owners), the ledger and the broker; "
        "a running gateway is not disturbed",
    )
    with_config(p)
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
