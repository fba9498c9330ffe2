"""`sealink fleet`: the fleet ledger in PostgreSQL (issue 14).

sealink fleet migrate --config fleet.toml        apply the schema migrations (idempotent)
sealink fleet run --config fleet.toml            ingest every gateway's records from MQTT
sealink fleet devices import FILE --config ...   seals' public keys, from `sealink devices list`
                                                 or provisioning files (JSON lines)
sealink fleet records --device D [--since MS] [--until MS] [--json]
sealink fleet gaps [--device D] [--json]         counters missing per seal, across gateways,
                                                 and the gateways' signed statements that
                                                 declare each missing (or "undeclared")
sealink fleet forks [--json]                     second records for a held (device, counter)
sealink fleet alarms [--device D] [--json]       what the fleet raised and gateways signed
sealink fleet checkpoints [--gateway G] [--json] each gateway's checkpoints and whether each
                                                 was proved consistent (SPEC §14.6)
sealink fleet keys init --config ...             the registry's signing key (0600) + public key
sealink fleet devices revoke D --reason TEXT     a stolen seal disabled on every gateway
sealink fleet devices reinstate D --reason TEXT  (SPEC §11.6: signed, retained, per seal)
sealink fleet devices move D --to GW --reason T  the seal moved to gateway GW: it learns where
                                                 the seal stands, the others hold it (with
                                                 [authority]: and it is enrolled with GW)
sealink fleet devices enrol D --gateway GW --reason T   enrol the seal with the gateway it is
                                                 placed on (SPEC §5.11 certificate, §11.6)
sealink fleet devices import FILE --org ORG      ... and put those seals in an organisation
sealink fleet approvers add NAME --public-key HEX --actions a,b --reason T | revoke NAME
                 --reason T | list               approver keys issued to every gateway (§11.7)
sealink fleet serve --config ... [--listen H:P]  the read-only JSON API for downstream systems
                                                 (records, evidence bundles; HTTPS with
                                                 [serve] tls_cert_file and tls_key_file)
sealink fleet tokens add NAME | list | revoke NAME   its bearer tokens (printed once, kept hashed)

The package is an extra (`pip install sealink[fleet]`: psycopg, psycopg_pool, cwt, starlette,
uvicorn): it is imported only when a fleet command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sealink.cli.common import add_command, iso_ms, print_json
from sealink.errors import FleetError
from sealink.logs import configure_logging

if TYPE_CHECKING:
    from sealink.crypto import GatewayKey
    from sealink.fleet import ApproverChange, FleetConfig, RegistryChange, Store

__all__ = ["open_fleet", "register", "signed_change", "who_acts", "with_fleet_config"]

Change = TypeVar("Change", "RegistryChange", "ApproverChange")


def open_fleet(args: argparse.Namespace) -> tuple[FleetConfig, Store]:
    try:
        from sealink.fleet import Store, load_config
    except ImportError as exc:
        raise FleetError(
            f"the fleet needs its extra: pip install 'sealink[fleet]' ({exc})"
        ) from None
    config = load_config(args.config)
    return config, Store(config.database, instance=config.instance)


def _migrate(config: FleetConfig, store: Store) -> list[str]:
    import psycopg

    from sealink.fleet import migrate

    try:
        with psycopg.connect(config.database) as conn:
            applied = migrate(conn)
    except psycopg.Error as exc:
        raise FleetError(f"migrate: {exc}") from None
    for gateway, key in config.gateways:
        store.pin_gateway(gateway, [key])
    return applied


def cmd_migrate(args: argparse.Namespace) -> int:
    config, store = open_fleet(args)
    with store:
        applied = _migrate(config, store)
    print_json({"applied": applied})
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from sealink.fleet import FleetService

    configure_logging("info")
    config, store = open_fleet(args)
    with store:
        _migrate(config, store)
        service = FleetService(config, store).start()
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        done.wait()
        service.stop()
    return 0


def _seal_keys(path: Path, orgs: dict[str, list[str]]) -> list[tuple[str, bytes]]:
    """(device, 64-byte key) from JSON lines with `device`/`device_id` and `seal_key` (hex);
    a row's `org`, if any, adds its device to `orgs[org]`."""
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip().startswith("{"):
            continue
        try:
            row = json.loads(line)
            device = str(row.get("device") or row["device_id"])
            key = row.get("seal_key")
            raw = None if key is None else bytes.fromhex(key)
        except (ValueError, KeyError, TypeError) as exc:
            raise FleetError(f"{path}:{number}: not a device row: {exc!r}") from None
        if raw is not None and len(raw) != 64:
            raise FleetError(f"{path}:{number}: {device}: a seal key is 64 bytes (X || Y)")
        if raw is not None:
            found.append((device, raw))
        if isinstance(row.get("org"), str):
            orgs.setdefault(row["org"], []).append(device)
    return found


def cmd_devices_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    orgs: dict[str, list[str]] = {}
    keys = _seal_keys(path, orgs)
    if args.org is not None:  # the flag wins over the rows' own `org`
        orgs = {args.org: [device for device, _ in keys]}
    _config, store = open_fleet(args)
    with store:
        count = store.import_seal_keys(keys, source=f"import:{path.name}")
        _set_orgs(store, orgs)
    print_json({"imported": count})
    return 0


def _set_orgs(store: Store, orgs: dict[str, list[str]]) -> None:
    from sealink.fleet._query import set_org

    with store.pool.connection() as conn:
        for org, devices in orgs.items():
            set_org(conn, devices, org)


def cmd_devices_set_org(args: argparse.Namespace) -> int:
    _config, store = open_fleet(args)
    with store:
        _set_orgs(store, {args.org: [args.device]})
    print_json({"device": args.device, "org": args.org})
    return 0


def cmd_keys_init(args: argparse.Namespace) -> int:
    from sealink.crypto import GatewayKey
    from sealink.fleet import load_config

    config = load_config(args.config)
    key = GatewayKey.generate()
    key.save(config.key_file)  # 0600, refused if it exists: a registry key is not replaced
    # The public key goes into each gateway's config: [fleet] public_key = "<hex>".
    print_json({"key_file": str(config.key_file), "public_key": key.public_raw().hex()})
    return 0


def signed_change(
    args: argparse.Namespace, make: Callable[..., Change], mark: Callable[[Store, Change], None]
) -> tuple[Change, bool]:
    """Sign one change (`make(store, key, config)`), publish it retained and `mark` it
    published; unpublished (no broker), it waits in the database for `sealink fleet run`."""
    from sealink.crypto import GatewayKey
    from sealink.fleet import publish

    config, store = open_fleet(args)
    key = GatewayKey.load(config.key_file)
    with store:
        change = make(store, key, config)
        try:
            publish(config.mqtt, [change], f"{config.instance}-registry")
            mark(store, change)
        except FleetError as exc:
            # Recorded: `sealink fleet run` publishes it once the broker takes it.
            print(f"sealink: warning: {exc}; `sealink fleet run` publishes it", file=sys.stderr)
            return change, False
    return change, True


def _registry_change(args: argparse.Namespace, make: Callable[..., RegistryChange]) -> int:
    """Sign, publish and say one registry change (SPEC §11.6)."""
    from sealink.fleet import mark_published

    change, published = signed_change(args, make, mark_published)
    said: dict[str, Any] = {"device": change.device, "state": change.state, "seq": change.seq,
                            "topic": change.topic, "published": published}  # fmt: skip
    if change.placement is not None:
        said |= {"gateway": change.placement.gateway, "counter": change.placement.counter,
                 "record_sha256": change.placement.head.hex()}  # fmt: skip
    if change.enrolment is not None:
        said["serial"] = change.enrolment.serial
    print_json(said)
    return 0


def who_acts(args: argparse.Namespace) -> str:
    return str(args.by or os.environ.get("USER") or "unknown")


def _set_state(args: argparse.Namespace, state: str) -> int:
    from sealink.fleet import change_state

    return _registry_change(args, lambda store, key, config: change_state(
        store, key, config.name, config.prefix, args.device, state, args.reason,
        who_acts(args)))  # fmt: skip


def cmd_devices_revoke(args: argparse.Namespace) -> int:
    return _set_state(args, "revoked")


def cmd_devices_reinstate(args: argparse.Namespace) -> int:
    return _set_state(args, "active")


def cmd_devices_move(args: argparse.Namespace) -> int:
    from sealink.fleet import enrolling_if_authority, move

    # With the authority configured, a move enrols the seal where it goes (SPEC §11.6).
    return _registry_change(args, lambda store, key, config: move(
        store, key, config.name, config.prefix, args.device, args.to, args.reason, who_acts(args),
        enrolling_if_authority(config, args.to)))  # fmt: skip


def cmd_devices_enrol(args: argparse.Namespace) -> int:
    from sealink.fleet import enrol, enrolling

    def make(store: Store, key: GatewayKey, config: FleetConfig) -> RegistryChange:
        return enrol(store, key, config.name, config.prefix, args.device,
                     enrolling(config, args.gateway), args.reason, who_acts(args))  # fmt: skip

    return _registry_change(args, make)


def _query(args: argparse.Namespace, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    import psycopg

    _config, store = open_fleet(args)
    try:
        with store, store.pool.connection() as conn:
            return list(conn.execute(sql, params).fetchall())
    except psycopg.Error as exc:
        raise FleetError(f"query: {exc} (was `sealink fleet migrate` run?)") from None


def _with_query(args: argparse.Namespace, use: Callable[..., Any]) -> Any:
    """`use(sealink.fleet._query, conn)` on a connection of the config's database."""
    import psycopg

    from sealink.fleet import _query

    _config, store = open_fleet(args)
    try:
        with store, store.pool.connection() as conn:
            return use(_query, conn)
    except psycopg.Error as exc:
        raise FleetError(f"query: {exc} (was `sealink fleet migrate` run?)") from None


def cmd_records(args: argparse.Namespace) -> int:
    rows = _query(
        args,
        "SELECT device, counter, gateway, received_ms, kind, permit, operator, time_s, "
        "encode(record_hash, 'hex'), seal_verified, chain_ok FROM records WHERE device = %s "
        "AND received_ms >= %s AND received_ms < %s ORDER BY counter",
        (args.device, args.since or 0, args.until or 2**62),
    )
    names = ("device", "counter", "gateway", "received_ms", "kind", "permit", "operator",
             "time_s", "record_sha256", "seal_verified", "chain_ok")  # fmt: skip
    for row in rows:
        if args.json:
            # time_s is numeric (a uint64 does not fit a bigint): an int again for JSON.
            print_json({**dict(zip(names, row, strict=True)), "time_s": int(row[7])})
        else:
            print(f"{row[1]:>8}  {iso_ms(row[3]):<24}  {row[2]:<16}  kind {row[4]}  "
                  f"seal {row[9]}  chain {row[10]}")  # fmt: skip
    return 0


def cmd_gaps(args: argparse.Namespace) -> int:
    for gap in _with_query(args, lambda q, conn: q.gap_coverage(conn, args.device)):
        if args.json:
            print_json(gap)
            continue
        declared = [
            f"declared by {s['gateway']} (operator {s['operator']!r}, "
            f"{iso_ms(s['adopted_ms'])}: {s['note']!r})"
            for s in gap["declared_by"]
        ]
        print(f"{gap['device']}: {gap['first']}..{gap['last']} missing, "
              f"{'; '.join(declared) or 'undeclared'}")  # fmt: skip
    return 0


def cmd_forks(args: argparse.Namespace) -> int:
    rows = _query(
        args,
        "SELECT f.device, f.counter, f.gateway, f.received_ms, encode(f.record_hash, 'hex'), "
        "r.gateway, encode(r.record_hash, 'hex') FROM forks f JOIN records r "
        "USING (device, counter) ORDER BY f.device, f.counter",
        (),
    )
    for device, counter, gateway, received_ms, digest, held_gateway, held in rows:
        if args.json:
            print_json({"device": device, "counter": counter, "gateway": gateway,
                        "received_ms": received_ms, "record_sha256": digest,
                        "held_gateway": held_gateway, "held_sha256": held})  # fmt: skip
        else:
            print(f"{device}#{counter}: {gateway} {digest[:16]} vs held {held_gateway} {held[:16]}")
    return 0


def cmd_alarms(args: argparse.Namespace) -> int:
    rows = _query(
        args,
        "SELECT time_ms, source, gateway, device, reason, detail FROM alarms "
        "WHERE %s::text IS NULL OR device = %s ORDER BY id",
        (args.device, args.device),
    )
    for time_ms, source, gateway, device, reason, detail in rows:
        if args.json:
            print_json({"time_ms": time_ms, "source": source, "gateway": gateway,
                        "device": device, "reason": reason, "detail": detail})  # fmt: skip
        else:
            print(f"{iso_ms(time_ms):<24}  {source:<7}  {gateway or '-':<12}  "
                  f"{device or '-':<16}  {reason:<18}  {json.dumps(detail)}")  # fmt: skip
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    # A split view's second note is not a row of its own (one per size): its alarm holds it.
    rows = _query(
        args,
        "SELECT gateway, size, encode(root, 'hex'), time_ms, state, proved_from, attempts "
        "FROM checkpoints WHERE %s::text IS NULL OR gateway = %s UNION ALL "
        "SELECT gateway, (detail->>'size')::bigint, detail->'roots'->>1, "
        "substring(detail->'notes'->>1 from '\\nsealink-time-ms ([0-9]+)\\n')::bigint, "
        "reason, NULL, 0 FROM alarms WHERE reason = 'split_view' AND source = 'fleet' "
        "AND (%s::text IS NULL OR gateway = %s) ORDER BY 1, 2, 5",
        (args.gateway, args.gateway, args.gateway, args.gateway),
    )
    names = ("gateway", "size", "root", "time_ms", "state", "proved_from", "attempts")
    for row in rows:
        if args.json:
            print_json(dict(zip(names, row, strict=True)))
        else:
            gateway, size, root, time_ms, state, proved_from, attempts = row
            against = f"from {proved_from}" if proved_from is not None else ""
            tries = f"{attempts} tries" if state == "unproved" and attempts else ""
            print(f"{gateway:<12}  {size:>10}  {root[:16]}  {iso_ms(time_ms or 0):<24}  "
                  f"{state:<10}  {against or tries}".rstrip())  # fmt: skip
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import socket

    import uvicorn

    from sealink.approvals import ApproverKey
    from sealink.config import check_server_tls
    from sealink.fleet._api import build_api
    from sealink.fleet._bundles import BundleFetcher
    from sealink.fleet._config import parse_listen

    configure_logging("info")
    config, store = open_fleet(args)
    host, port = config.listen if args.listen is None else parse_listen("--listen", args.listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    scheme = "http"
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        check_server_tls(config.tls_cert_file, config.tls_key_file, "serve", "fleet API")
        scheme = "https"
    fetcher = None
    if config.approver_key_file is not None:  # loaded now: a bad key stops serve at once
        fetcher = BundleFetcher(config, ApproverKey.load(config.approver_key_file))
    with store:
        try:  # bound first, so the URL printed (port 0: the kernel's choice) is the one served
            sock = socket.create_server((host, port), family=family)
        except OSError as exc:
            raise FleetError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        print_json({"listening": f"{scheme}://{host}:{sock.getsockname()[1]}"})
        sys.stdout.flush()
        server = uvicorn.Server(
            uvicorn.Config(
                build_api(store, fetcher),
                log_level="warning",
                # None: plain HTTP; set, the socket speaks TLS only (no plain HTTP beside it)
                ssl_certfile=config.tls_cert_file,
                ssl_keyfile=config.tls_key_file,
            )
        )
        asyncio.run(server.serve(sockets=[sock]))
    return 0


def cmd_tokens_add(args: argparse.Namespace) -> int:
    token = _with_query(args, lambda q, conn: q.add_token(conn, args.name))
    print_json({"name": args.name, "token": token})
    print("the token is shown only this once: keep it now", file=sys.stderr)
    return 0


def cmd_tokens_list(args: argparse.Namespace) -> int:
    for row in _with_query(args, lambda q, conn: q.list_tokens(conn)):
        print_json(row)
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    _with_query(args, lambda q, conn: q.revoke_token(conn, args.name))
    print_json({"revoked": args.name})
    return 0


def with_fleet_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="fleet.toml")


def register(sub: Any) -> None:
    fleet = sub.add_parser("fleet", help="the fleet ledger in PostgreSQL (issue 14)")
    fl = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    with_fleet_config(add_command(fl, "migrate", cmd_migrate, "apply the schema migrations"))
    with_fleet_config(add_command(fl, "run", cmd_run, "ingest every gateway's records from MQTT"))
    devices = fl.add_parser("devices", help="the fleet's registry of seals")
    dv = devices.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    p = add_command(dv, "import", cmd_devices_import, "import seals' public keys")
    p.add_argument("file", help="`sealink devices list` output, or provisioning JSON")
    p.add_argument("--org", help="the organisation of every seal imported (else each row's org)")
    with_fleet_config(p)
    p = add_command(dv, "set-org", cmd_devices_set_org, "put a seal in an organisation")
    p.add_argument("device")
    p.add_argument("org")
    with_fleet_config(p)
    for name, fn, what in (
        ("revoke", cmd_devices_revoke, "disable a seal on every gateway (a stolen one)"),
        ("reinstate", cmd_devices_reinstate, "lift the fleet's revocation of a seal"),
    ):
        p = add_command(dv, name, fn, what)
        p.add_argument("device")
        p.add_argument("--reason", required=True, help="why: kept on the record")
        p.add_argument("--by", help="who (default: $USER)")
        with_fleet_config(p)
    p = add_command(dv, "move", cmd_devices_move, "place a seal on another gateway (SPEC §11.6)")
    p.add_argument("device")
    p.add_argument("--to", required=True, metavar="GATEWAY", help="the gateway it moves to")
    p.add_argument("--reason", required=True, help="why: kept on the record")
    p.add_argument("--by", help="who (default: $USER)")
    with_fleet_config(p)
    p = add_command(
        dv, "enrol", cmd_devices_enrol, "enrol a seal with the gateway it is placed on (§5.11)"
    )
    p.add_argument("device")
    p.add_argument("--gateway", required=True, help="the gateway the seal is placed on")
    p.add_argument("--reason", required=True, help="why: kept on the record")
    p.add_argument("--by", help="who (default: $USER)")
    with_fleet_config(p)
    keys = fl.add_parser("keys", help="the fleet's registry signing key")
    ks = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    with_fleet_config(add_command(ks, "init", cmd_keys_init, "make the registry's signing key"))
    p = add_command(fl, "records", cmd_records, "a seal's records held by the fleet")
    with_fleet_config(p)
    p.add_argument("--device", required=True)
    p.add_argument("--since", type=int, metavar="MS", help="received at or after (Unix ms)")
    p.add_argument("--until", type=int, metavar="MS", help="received before (Unix ms)")
    p.add_argument("--json", action="store_true", help="JSON Lines")
    p = add_command(
        fl, "gaps", cmd_gaps, "counters missing per seal, and the gap statements covering them"
    )
    with_fleet_config(p)
    p.add_argument("--device")
    p.add_argument("--json", action="store_true", help="JSON Lines")
    p = add_command(fl, "forks", cmd_forks, "second records for a held (device, counter)")
    with_fleet_config(p)
    p.add_argument("--json", action="store_true", help="JSON Lines")
    p = add_command(fl, "alarms", cmd_alarms, "what the fleet raised and gateways signed")
    with_fleet_config(p)
    p.add_argument("--device")
    p.add_argument("--json", action="store_true", help="JSON Lines")
    p = add_command(fl, "checkpoints", cmd_checkpoints, "each gateway's checkpoints, proved or not")
    with_fleet_config(p)
    p.add_argument("--gateway")
    p.add_argument("--json", action="store_true", help="JSON Lines")
    p = add_command(fl, "serve", cmd_serve, "the read-only JSON API for downstream systems")
    with_fleet_config(p)
    p.add_argument("--listen", metavar="HOST:PORT", help="instead of [serve] listen")
    tokens = fl.add_parser("tokens", help="the API's bearer tokens")
    tk = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    for name, fn, what in (
        ("add", cmd_tokens_add, "a new token, printed once"),
        ("revoke", cmd_tokens_revoke, "refuse a token from now on"),
    ):
        p = add_command(tk, name, fn, what)
        p.add_argument("name")
        with_fleet_config(p)
    with_fleet_config(add_command(tk, "list", cmd_tokens_list, "the tokens' names, not the tokens"))
    from sealink.cli import fleetapprovers  # it builds on this module's helpers

    fleetapprovers.register(fl)
