"""The decisions of whoever checks a gateway's log only grows (a witness, SPEC §14.6; the
fleet, §14.9), without I/O: what to do with a checkpoint given the last one it stands behind
(its head), and whether a consistency proof carries it from there."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from sealink.evidence.merkle import verify_consistency
from sealink.evidence.note import split_note

__all__ = [
    "Cosign",
    "Decision",
    "Head",
    "NeedProof",
    "Offered",
    "Refuse",
    "Seen",
    "judge",
    "judge_proof",
    "judge_reply",
]


class Head(Protocol):
    """The checkpoint a checker stands behind: a witness's cosigned one or its trust anchor
    (note None), the fleet's verified head."""

    @property
    def size(self) -> int: ...

    @property
    def root(self) -> bytes: ...

    @property
    def time_ms(self) -> int: ...

    @property
    def note(self) -> str | None: ...


class Offered(Head, Protocol):
    """A signed checkpoint to judge (sealink.evidence.Checkpoint is one)."""

    @property
    def note(self) -> str: ...


@dataclass(frozen=True)
class Cosign:
    """Consistent with the head: a witness cosigns it, the fleet holds it proved."""


@dataclass(frozen=True)
class Seen:
    """The very checkpoint already held (a retained message delivered again)."""


@dataclass(frozen=True)
class NeedProof:
    old_size: int
    new_size: int


@dataclass(frozen=True)
class Refuse:
    reason: str  # split_view, rollback, bad_proof, no_proof
    detail: str


Decision = Cosign | Seen | NeedProof | Refuse


def judge(last: Head | None, new: Offered) -> Decision:
    """`last` None: the first checkpoint of a gateway trusted on first use."""
    if last is None:
        return Cosign()
    if new.size == last.size:
        if new.root != last.root:
            return Refuse(
                "split_view",
                f"two signed checkpoints of size {new.size} with different roots: "
                f"{last.root.hex()} held, {new.root.hex()} now",
            )
        if last.note is not None and split_note(last.note).text == split_note(new.note).text:
            return Seen()
        return Cosign()
    if new.size < last.size:
        return Refuse(
            "rollback", f"size {new.size} is older than the size {last.size} already held"
        )
    if new.time_ms < last.time_ms:
        return Refuse(
            "rollback",
            f"size {new.size} is signed at {new.time_ms} ms, before the checkpoint of size "
            f"{last.size} ({last.time_ms} ms)",
        )
    return NeedProof(last.size, new.size)


def judge_proof(last: Head, new: Offered, reply: Any) -> Cosign | Refuse:
    """The gateway's reply to NeedProof(last.size, new.size), checked against the roots the
    checker holds (never the ones the reply names)."""
    if not isinstance(reply, dict) or reply.get("type") != "consistency":
        why = reply.get("error") if isinstance(reply, dict) else None
        return Refuse("no_proof", f"the gateway sent no proof: {why or 'not a proof reply'}")
    if (reply.get("old_size"), reply.get("new_size")) != (last.size, new.size):
        return Refuse("no_proof", f"a proof of other sizes than {last.size} -> {new.size}")
    try:
        path = [bytes.fromhex(p) for p in reply["path"]]
    except (KeyError, TypeError, ValueError):
        return Refuse("bad_proof", "the proof's path is not a list of hex hashes")
    if any(len(p) != 32 for p in path) or not verify_consistency(
        last.size, new.size, last.root, new.root, path
    ):
        return Refuse(
            "bad_proof",
            f"the consistency proof {last.size} -> {new.size} does not verify (RFC 9162): the "
            "new checkpoint does not extend the one held",
        )
    return Cosign()


def judge_reply(last: Head, new: Offered, reply: bytes | None) -> Cosign | Refuse:
    """judge_proof on the reply's bytes as they came: None (no reply in time) and bytes that
    are not JSON carry no proof."""
    if reply is None:
        return Refuse("no_proof", "no reply to the proof request")
    try:
        body = json.loads(reply)
    except ValueError:
        body = None
    return judge_proof(last, new, body)
