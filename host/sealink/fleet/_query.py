"""The SQL of `sealink fleet serve` (issue 14): keyset-paged reads, the API's bearer tokens.

Every page is ordered by a unique key and the next one starts after the last key served
(`WHERE (device, counter) > (%s, %s)`), never at an OFFSET: a page costs the same on the
millionth row as on the first, and a row stored meanwhile is neither served twice nor skipped
past. A cursor is that last key, opaque to the client (base64url JSON).

Records are keyed by (device, counter), except when time is their only filter: then by
(received_ms, device, counter), so a consumer following the ledger by time gets it in the
order it was received, from an index that walks that key (records_received_key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from sealink.errors import FleetError

__all__ = [
    "PAGE_MAX",
    "Page",
    "RecordFilter",
    "add_token",
    "alarms_page",
    "decode_cursor",
    "device_summary",
    "gap_coverage",
    "list_tokens",
    "permits_page",
    "record_cursor_shape",
    "record_key",
    "records_page",
    "revoke_token",
    "set_org",
    "token_ok",
]

PAGE_MAX = 1000

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next: str | None  # the cursor of the following page; None: this one is the last


@dataclass(frozen=True)
class RecordFilter:
    device: str | None = None
    org: str | None = None
    permit: int | None = None
    document_sha256: str | None = None  # the records under a permit for that document
    since_ms: int | None = None
    until_ms: int | None = None


def _cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, shape: tuple[type, ...]) -> list[Any]:
    """The key a cursor carries; FleetError if it is not one of ours (of this shape)."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise FleetError("cursor: not a cursor this API returned") from None
    if not isinstance(key, list) or len(key) != len(shape):
        raise FleetError("cursor: not a cursor this API returned")
    if not all(
        isinstance(k, t) and not isinstance(k, bool) for k, t in zip(key, shape, strict=True)
    ):
        raise FleetError("cursor: not a cursor this API returned")
    return key


def _page(items: list[dict[str, Any]], limit: int, key: list[str]) -> Page:
    """`items` holds up to limit + 1 rows: one more than served says another page follows."""
    if len(items) <= limit:
        return Page(items, None)
    items = items[:limit]
    return Page(items, _cursor([items[-1][k] for k in key]))


_RECORD_COLUMNS = (
    "r.device, r.counter, r.gateway, r.received_ms, r.kind, r.permit, r.operator, r.time_s, "
    "encode(r.record_hash, 'hex'), r.seal_verified, r.chain_ok, r.cose"
)
_RECORD_NAMES = ("device", "counter", "gateway", "received_ms", "kind", "permit", "operator",
                 "time_s", "record_sha256", "seal_verified", "chain_ok", "cose")  # fmt: skip


_KEY_TYPES: dict[str, type] = {"received_ms": int, "device": str, "counter": int}


def record_key(where: RecordFilter) -> tuple[str, ...]:
    """The unique key the records of `where` are ordered and paged by."""
    by_seal = (where.device, where.org, where.permit, where.document_sha256)
    if all(v is None for v in by_seal) and (where.since_ms, where.until_ms) != (None, None):
        return ("received_ms", "device", "counter")
    return ("device", "counter")


def record_cursor_shape(where: RecordFilter) -> tuple[type, ...]:
    return tuple(_KEY_TYPES[k] for k in record_key(where))


def records_page(conn: Conn, where: RecordFilter, after: list[Any] | None, limit: int) -> Page:
    """Records matching every filter given, in record_key(where) order, `limit` at most;
    `after`: the key a cursor of the same filter's page before decoded to."""
    key = record_key(where)
    columns = ", ".join(f"r.{k}" for k in key)
    clauses, params = [], []
    for sql, value in (
        ("r.device = %s", where.device),
        ("d.org = %s", where.org),
        ("r.permit = %s", where.permit),
        (
            "(r.device, r.permit) IN "
            "(SELECT device, permit FROM permits WHERE document_sha256 = %s)",
            None if where.document_sha256 is None else where.document_sha256.lower(),
        ),
        ("r.received_ms >= %s", where.since_ms),
        ("r.received_ms < %s", where.until_ms),
    ):
        if value is not None:
            clauses.append(sql)
            params.append(value)
    if after is not None:
        clauses.append(f"({columns}) > ({', '.join(['%s'] * len(key))})")
        params.extend(after)
    join = "JOIN devices d ON d.id = r.device " if where.org is not None else ""
    rows = conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM records r {join}"  # only the fixed clauses above
        f"WHERE {' AND '.join(clauses) or 'true'} ORDER BY {columns} LIMIT %s",
        (*params, limit + 1),
    ).fetchall()
    items = []
    for row in rows:
        item = dict(zip(_RECORD_NAMES, row, strict=True))
        # time_s is numeric (a uint64 does not fit a bigint); the COSE bytes as base64, so a
        # consumer verifies the countersignature itself.
        item["time_s"] = int(item["time_s"])
        item["cose"] = base64.b64encode(bytes(item["cose"])).decode()
        items.append(item)
    return _page(items, limit, list(key))


def alarms_page(
    conn: Conn, device: str | None, since_ms: int | None, after: list[Any] | None, limit: int
) -> Page:
    rows = conn.execute(
        "SELECT id, time_ms, source, gateway, device, reason, detail FROM alarms "
        "WHERE (%s::text IS NULL OR device = %s) AND (%s::bigint IS NULL OR time_ms >= %s) "
        "AND (%s::bigint IS NULL OR id > %s) ORDER BY id LIMIT %s",
        (device, device, since_ms, since_ms, *(2 * [None if after is None else after[0]]),
         limit + 1),
    ).fetchall()  # fmt: skip
    names = ("id", "time_ms", "source", "gateway", "device", "reason", "detail")
    return _page([dict(zip(names, r, strict=True)) for r in rows], limit, ["id"])


def permits_page(
    conn: Conn,
    device: str | None,
    document_sha256: str | None,
    after: list[Any] | None,
    limit: int,
) -> Page:
    """What the fleet learned of each permit from the gateways' signed results (§11.5)."""
    document = None if document_sha256 is None else document_sha256.lower()
    start = [None, None, None] if after is None else [after[0], *after]
    rows = conn.execute(
        "SELECT device, permit, document_sha256, gateway, approver, requested_by, count, states, "
        "first_ms FROM permits WHERE (%s::text IS NULL OR device = %s) "
        "AND (%s::text IS NULL OR document_sha256 = %s) "
        "AND (%s::text IS NULL OR (device, permit) > (%s, %s)) ORDER BY device, permit LIMIT %s",
        (device, device, document, document, *start, limit + 1),
    ).fetchall()  # fmt: skip
    names = ("device", "permit", "document_sha256", "gateway", "approver", "requested_by",
             "count", "states", "first_ms")  # fmt: skip
    return _page([dict(zip(names, r, strict=True)) for r in rows], limit, ["device", "permit"])


def device_summary(conn: Conn, device: str) -> dict[str, Any] | None:
    """A seal as the fleet knows it; None: not a seal the fleet has heard of."""
    row = conn.execute(
        "SELECT d.id, d.state, d.org, encode(d.seal_key, 'hex'), d.key_source, d.first_seen_ms, "
        "d.gateway, (SELECT min(counter) FROM records WHERE device = d.id), "
        "(SELECT max(counter) FROM records WHERE device = d.id), "
        "(SELECT count(*) FROM records WHERE device = d.id), "
        "(SELECT count(*) FROM forks WHERE device = d.id) FROM devices d WHERE d.id = %s",
        (device,),
    ).fetchone()
    if row is None:
        return None
    names = ("device", "state", "org", "seal_key", "key_source", "first_seen_ms", "gateway",
             "first_counter", "last_counter", "records", "forks")  # fmt: skip
    summary = dict(zip(names, row, strict=True))
    summary["gaps"] = [
        {k: v for k, v in gap.items() if k != "device"} for gap in gap_coverage(conn, device)
    ]
    return summary


def gap_coverage(conn: Conn, device: str | None) -> list[dict[str, Any]]:
    """Counters missing per seal, across gateways (the `gaps` view, and those a gateway's
    statement declares past the last record held), each run cut where a statement starts or
    ends: every piece is covered whole by the statements in its `declared_by` (the gateway
    that signed, operator, note, adopted_ms, head), or by none (`declared` false)."""
    missing: dict[str, list[tuple[int, int]]] = {}
    for name, first, last in conn.execute(
        "SELECT device, first, last FROM gaps WHERE %s::text IS NULL OR device = %s "
        "ORDER BY device, first",
        (device, device),
    ):
        missing.setdefault(name, []).append((first, last))
    statements: dict[str, list[dict[str, Any]]] = {}
    for name, *row in conn.execute(
        "SELECT g.device, g.first, g.last, g.gateway, g.operator, g.note, g.adopted_ms, "
        "encode(g.head, 'hex'), encode(g.cose_sha256, 'hex'), "
        "(SELECT max(counter) FROM records r WHERE r.device = g.device) "
        "FROM gap_statements g WHERE %s::text IS NULL OR g.device = %s ORDER BY g.device, g.id",
        (device, device),
    ):
        *fields, top = row
        keys = ("first", "last", "gateway", "operator", "note", "adopted_ms", "head",
                "statement_sha256")  # fmt: skip
        statements.setdefault(name, []).append(dict(zip(keys, fields, strict=True)))
        held = top or 0
        if fields[1] > held:  # declared past the last record held: missing up to its last
            runs = missing.setdefault(name, [])
            if runs and runs[-1][0] == held + 1:
                runs[-1] = (held + 1, max(runs[-1][1], fields[1]))
            else:
                runs.append((held + 1, fields[1]))
    return [
        piece
        for name in sorted(missing)
        for first, last in sorted(missing[name])
        for piece in _pieces(name, first, last, statements.get(name, []))
    ]


def _pieces(
    device: str, first: int, last: int, statements: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Missing run first..last, cut at every statement boundary inside it."""
    cuts = {first, last + 1}
    for s in statements:
        cuts.update(c for c in (s["first"], s["last"] + 1) if first < c <= last)
    pieces = []
    for start, end in itertools.pairwise(sorted(cuts)):
        covering = [
            {k: v for k, v in s.items() if k not in ("first", "last")}
            for s in statements
            if s["first"] <= start and end - 1 <= s["last"]
        ]
        pieces.append({"device": device, "first": start, "last": end - 1,
                       "declared": bool(covering), "declared_by": covering})  # fmt: skip
    return pieces


def set_org(conn: Conn, devices: list[str], org: str) -> int:
    """Put registered seals in an organisation; FleetError names one the registry lacks."""
    with conn.transaction():
        done = {
            str(r[0])
            for r in conn.execute(
                "UPDATE devices SET org = %s WHERE id = ANY(%s) RETURNING id", (org, devices)
            )
        }
        missing = sorted(set(devices) - done)
        if missing:
            raise FleetError(f"{missing[0]}: not in the fleet's registry (import its key first)")
    return len(done)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def add_token(conn: Conn, name: str) -> str:
    """A new token for `name`, returned once: only its SHA-256 is stored."""
    token = secrets.token_urlsafe(32)
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO api_tokens (name, token_sha256, created_ms) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO NOTHING RETURNING name",
            (name, _digest(token), int(time.time() * 1000)),
        ).fetchone()
    if row is None:
        raise FleetError(f"token {name!r} exists (revoke it, or choose another name)")
    return token


def list_tokens(conn: Conn) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT name, created_ms, revoked_ms FROM api_tokens ORDER BY name")
    return [{"name": n, "created_ms": c, "revoked_ms": r} for n, c, r in rows]


def revoke_token(conn: Conn, name: str) -> None:
    row = conn.execute(
        "UPDATE api_tokens SET revoked_ms = coalesce(revoked_ms, %s) WHERE name = %s "
        "RETURNING name",
        (int(time.time() * 1000), name),
    ).fetchone()
    if row is None:
        raise FleetError(f"no token named {name!r}")


def token_ok(conn: Conn, token: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM api_tokens WHERE token_sha256 = %s AND revoked_ms IS NULL",
        (_digest(token),),
    ).fetchone()
    return row is not None
