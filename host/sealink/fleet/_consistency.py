"""The fleet as a checker of consistency (SPEC §14.6): each gateway's checkpoints must extend
one another, the witness's way (sealink.evidence.judge decides; this module moves rows).

A gateway's verified head is its largest checkpoint in state `first` or `proved`. One step
takes a gateway no other instance holds (a per-gateway advisory lock, tried, never waited
for), judges its smallest `unproved` checkpoint against the head, asks the gateway for the
consistency proof when one is needed, and records the outcome (state, proof, alarm with its
evidence) in the transaction that holds the lock: two instances never judge one checkpoint
twice, and a crash leaves it unproved, to be taken again.

A checkpoint smaller than the head (delivered late: each instance subscribes to the retained
topic under a persistent session, so one that was away gets the older ones afterwards) is
proved against the head the other way round; it is a rollback only if it was signed after the
head. Whichever is smaller goes first to the judge, so the same rule covers both: of two
checkpoints the larger must be signed no earlier and must extend the smaller.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from sealink.evidence.judge import Cosign, NeedProof, Refuse, Seen, judge, judge_reply
from sealink.fleet._store import Store, _alarm

__all__ = ["ConsistencyWorker", "ProofRequester"]

log = logging.getLogger("sealink.fleet")

# The first key of the per-gateway advisory locks (pg_try_advisory_xact_lock(int, int)): a
# space apart from the per-device locks of the writer (one bigint key).
_LOCK_CLASS = 0x5EA1C0

# (gateway, old size, new size) -> the gateway's reply, or None when it did not answer.
ProofRequester = Callable[[str, int, int], bytes | None]

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class _Row:
    size: int
    root: bytes
    time_ms: int
    note: str


def _now_ms() -> int:
    return int(time.time() * 1000)


class ConsistencyWorker:
    def __init__(self, store: Store, instance: str, ask: ProofRequester, retry_s: float) -> None:
        self.store = store
        self.instance = instance
        self._ask = ask
        self._retry_ms = int(retry_s * 1000)

    def step(self) -> bool:
        """Judge one unproved checkpoint that is due; False when there was none to take."""
        with self.store.pool.connection() as conn:
            due = conn.execute(
                "SELECT DISTINCT gateway FROM checkpoints WHERE state = 'unproved' "
                "AND retry_ms <= %s ORDER BY gateway",
                (_now_ms(),),
            ).fetchall()
            for (gateway,) in due:
                with conn.transaction():
                    held = conn.execute(
                        "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))",
                        (_LOCK_CLASS, gateway),
                    ).fetchone()
                    if held and held[0] and self._judge_next(conn, str(gateway)):
                        return True
        return False

    def _judge_next(self, conn: Conn, gateway: str) -> bool:
        # Read under the lock: what another instance committed before it is seen.
        new = _one(
            conn,
            "state = 'unproved' AND retry_ms <= %s ORDER BY size LIMIT 1",
            (gateway, _now_ms()),
        )
        if new is None:
            return False
        head = _one(conn, "state IN ('first', 'proved') ORDER BY size DESC LIMIT 1", (gateway,))
        if head is None:
            log.info("fleet: %s's first checkpoint (size %d) trusted on first use",
                     gateway, new.size)  # fmt: skip
            self._record(conn, gateway, new, "first", None, None)
            return True
        smaller, larger = (head, new) if new.size >= head.size else (new, head)
        decision = judge(smaller, larger)
        body: Any = None
        if isinstance(decision, NeedProof):
            reply = self._ask(gateway, decision.old_size, decision.new_size)
            decision = judge_reply(smaller, larger, reply)
            body = _kept(reply)
        if isinstance(decision, Cosign | Seen):
            self._record(conn, gateway, new, "proved", head.size, body)
        elif decision.reason == "no_proof":
            self._later(conn, gateway, new, decision, body)
        else:
            self._refuse(conn, gateway, new, head, decision, body)
        return True

    def _record(
        self, conn: Conn, gateway: str, row: _Row, state: str, other: int | None, proof: Any
    ) -> None:
        conn.execute(
            "UPDATE checkpoints SET state = %s, proved_from = %s, proof = %s, checked_ms = %s, "
            "checked_by = %s WHERE gateway = %s AND size = %s AND state = 'unproved'",
            (state, other, None if proof is None else json.dumps(proof), _now_ms(),
             self.instance, gateway, row.size),
        )  # fmt: skip

    def _later(self, conn: Conn, gateway: str, row: _Row, refusal: Refuse, reply: Any) -> None:
        """The gateway away (or it answered no proof): every unproved checkpoint of it waits;
        none is lost, the next attempt asks again."""
        log.warning("fleet: %s size %d stays unproved (retry in %d ms): %s",
                    gateway, row.size, self._retry_ms, refusal.detail)  # fmt: skip
        conn.execute(
            "UPDATE checkpoints SET attempts = attempts + 1, proof = coalesce(%s, proof) "
            "WHERE gateway = %s AND size = %s",
            (None if reply is None else json.dumps(reply), gateway, row.size),
        )
        conn.execute(
            "UPDATE checkpoints SET retry_ms = %s WHERE gateway = %s AND state = 'unproved'",
            (_now_ms() + self._retry_ms, gateway),
        )

    def _refuse(
        self, conn: Conn, gateway: str, row: _Row, head: _Row, refusal: Refuse, proof: Any
    ) -> None:
        log.error("fleet: %s size %d: %s: %s", gateway, row.size, refusal.reason, refusal.detail)
        self._record(conn, gateway, row, refusal.reason, head.size, proof)
        # The evidence: both signed notes and the reply, enough to show anyone the gateway's
        # log was not append-only without asking the fleet to be believed.
        detail = {"size": row.size, "head_size": head.size, "detail": refusal.detail,
                  "note": row.note, "head_note": head.note, "proof": proof}  # fmt: skip
        _alarm(conn, refusal.reason, None, gateway, detail,
                    f"{refusal.reason}:{gateway}:{row.size}:{row.root.hex()}")  # fmt: skip


def _one(conn: Conn, where: str, params: tuple[Any, ...]) -> _Row | None:
    found = conn.execute(
        f"SELECT size, root, time_ms, note FROM checkpoints WHERE gateway = %s AND {where}",
        params,
    ).fetchone()
    if found is None:
        return None
    return _Row(int(found[0]), bytes(found[1]), int(found[2] or 0), str(found[3]))


def _kept(reply: bytes | None) -> Any:
    """The gateway's reply as evidence: its JSON, or its text when it is not JSON."""
    if reply is None:
        return None
    try:
        return json.loads(reply)
    except ValueError:
        return reply.decode(errors="replace")
