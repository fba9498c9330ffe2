"""`sealink verify`: an auditor's offline check of an evidence export.

Input: the JSON Lines written by `sealink events export`, the gateway's public key (PEM, from
`sealink keys show --format pem`), the seals' chip public keys (from whoever provisioned the
seals, not from the operator whose records are checked) and, optionally, device link keys.
Like the observer, it shares no code with the gateway's signing or protocol path: `cwt`
verifies each COSE_Sign1, `cryptography` each seal signature, cbor2 and hashlib/hmac check what
is inside. Per device it proves (SPEC §4.1, §11):

- every event carries the seal's signature, made inside the seal's chip: nobody holding the
  gateway host, its ledger and every key on it can make one, so a rewritten record fails here
  even when everything the gateway signs was signed again;
- every countersignature verifies under the gateway key, and its signed payload names the
  exported device and counter and embeds exactly the exported event bytes;
- counters are contiguous from the first one exported (from 1: complete since the device's
  first record), none repeated;
- each event's `prev` is SHA-256 of the event before it (32 zero bytes for counter 1), so no
  record was inserted, removed or altered;
- with the device's key, each event's device MAC;
- a gap (counters an operator declared lost: `sealink devices adopt`) is accepted in the
  sequence only if its statement is countersigned by the gateway key and names exactly the
  exported device and counters; the event after it anchors the chain again (its `prev` names a
  record nobody holds, so it cannot be checked). Gaps are listed, never hidden: a verified
  export with gaps is complete only as far as the operator's word goes;
- every exported plaintext column agrees with signed data: `received_ms` with the
  countersigned payload, `hash` with SHA-256 of the event bytes;
- the first row is counter 1 or a signed gap from 1 (else the head was cut off);
- with a checkpoint (`events export --with-checkpoint`, SPEC §14), `sealink_verify.evidence`
  checks the rest: signature, device heads (tail truncation), the recomputed root;
- a gateway that rotated its key (SPEC §14.7): the key history is walked from the pinned first
  key (`sealink_verify.keyhistory`), and each row must be signed by the key its kid names,
  the one of the history for its leaf index.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cwt import COSE, COSEKey

from sealink_verify import tlog
from sealink_verify.keyhistory import (
    Epoch,
    KeyHistory,
    KeyHistoryError,
    from_entries,
    history_entries,
)

__all__ = [
    "KINDS",
    "DeviceAudit",
    "GapStatement",
    "derive_kid",
    "read_export",
    "seal_public_key",
    "seal_signature_ok",
    "verify_export",
]

_EV_COUNTER = 1
_EV_KIND = 5
_EV_PREV = 8
_EV_SIG = 9
_MAC = 15
_SEAL_KEY_LEN = 64
# EVENT field 5 (SPEC §4.1), by value.
KINDS = ("impression", "forced", "tamper", "low_battery", "reboot", "alarm", "unrecorded")
_ECDSA_PREHASHED = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
_GENESIS = bytes(32)
_COSE_KEY_X = -2
_HDR_KID = 4


def derive_kid(public_key_pem: bytes) -> bytes:
    """kid per SPEC §11.1: the first 8 bytes of SHA-256 over the raw Ed25519 public key."""
    raw = COSEKey.from_pem(public_key_pem).to_dict()[_COSE_KEY_X]
    return hashlib.sha256(raw).digest()[:8]


@dataclass(frozen=True)
class GapStatement:
    """A verified gap: counters first..last declared lost by `operator` at `adopted_ms`, or,
    with `head`, held elsewhere in the fleet's record when the seal was moved here (SPEC
    §11.6): `head` is record `last`'s hash, which the next event must chain to."""

    first: int
    last: int
    adopted_ms: int
    operator: str
    note: str
    head: bytes | None = None


@dataclass
class DeviceAudit:
    device: str
    events: int = 0
    first: int = 0
    last: int = 0
    macs_checked: int = 0
    seal_signatures_checked: int = 0
    problems: list[str] = field(default_factory=list)
    gaps: list[GapStatement] = field(default_factory=list)
    # exported records by kind (SPEC §4.1), verified or not: what the seal says happened
    kinds: dict[str, int] = field(default_factory=dict)
    rows: int = 0  # events and gaps, verified or not: the sequence advances over each
    # (leaf index or None, first, last, RFC 9162 leaf hash) of each row, in export order
    leaves: list[tuple[int | None, int, int, bytes]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "events": self.events,
            "kinds": dict(sorted(self.kinds.items())),
            "counters": [self.first, self.last],
            "complete_from_first_record": self.first == 1 and not self.problems,
            "gaps": [[gap.first, gap.last] for gap in self.gaps],
            "macs_checked": self.macs_checked,
            "seal_signatures_checked": self.seal_signatures_checked,
            "problems": len(self.problems),
            "problem_list": list(self.problems),
        }


def seal_public_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """A seal chip's public key, X || Y (64 bytes, SPEC §4.1). ValueError if it is not one."""
    if len(raw) != _SEAL_KEY_LEN:
        raise ValueError(f"a seal key is {_SEAL_KEY_LEN} bytes (X || Y), got {len(raw)}")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)


def seal_signature_ok(key: ec.EllipticCurvePublicKey, event: dict[Any, Any]) -> bool:
    """SPEC §4.1: sig = ECDSA P-256 (r || s) over SHA-256 of the event without keys 9 and 15."""
    sig = event.get(_EV_SIG)
    if not isinstance(sig, bytes) or len(sig) != 64:
        return False
    body = {k: v for k, v in event.items() if k not in (_EV_SIG, _MAC)}
    digest = hashlib.sha256(cbor2.dumps(body, canonical=True)).digest()
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (r and s):
        return False
    try:
        key.verify(utils.encode_dss_signature(r, s), digest, _ECDSA_PREHASHED)
    except InvalidSignature:
        return False
    return True


class _Checker:
    def __init__(
        self,
        public_key_pem: bytes,
        device_keys: dict[str, bytes],
        seal_keys: dict[str, bytes],
        key_history: list[Any] | None,
    ) -> None:
        self._first = COSEKey.from_pem(public_key_pem).to_dict()[_COSE_KEY_X]
        self.keys = KeyHistory.one(self._first)
        self._keys_given = key_history is not None
        if key_history is not None:
            self._walk(0, key_history)
        self._cose = COSE.new()
        self._device_keys = device_keys
        self._seal_keys = {device: seal_public_key(raw) for device, raw in seal_keys.items()}
        self.devices: dict[str, DeviceAudit] = {}
        # Per device, the hash the next event's prev must equal: SHA-256 of the event before
        # it, the head a fleet placement's gap names, or None after an operator's gap (lost).
        self._next_prev: dict[str, bytes | None] = {}
        self.trailer: dict[str, Any] | None = None

    def line(self, number: int, text: str) -> None:
        try:
            row = json.loads(text)
        except ValueError as exc:
            self._device("?").problems.append(f"line {number}: not an export row: {exc!r}")
            return
        if isinstance(row, dict) and "key_history" in row:
            # The export's own copy: used unless the auditor gave one (--key-history).
            if self.devices:
                self._device("?").problems.append(f"line {number}: a key history after rows")
            elif not self._keys_given:
                history = row["key_history"]
                self._walk(number, history.get("keys") if isinstance(history, dict) else None)
            return
        if isinstance(row, dict) and "checkpoint" in row:
            if self.trailer is not None:
                self._device("?").problems.append(f"line {number}: a second checkpoint line")
            self.trailer = row
            return
        if isinstance(row, dict) and "gap" in row:
            self._gap_line(number, row)
            return
        try:
            device = str(row["device"])
            counter = int(row["counter"])
            event_bytes = bytes.fromhex(row["event"])
            cose = base64.b64decode(row["cose"], validate=True)
            # Plaintext copies of signed data, compared when present (nothing hides in absence).
            columns = (
                None if row.get("received_ms") is None else int(row["received_ms"]),
                None if row.get("hash") is None else bytes.fromhex(row["hash"]),
            )
            leaf = None if row.get("leaf") is None else int(row["leaf"])
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            self._device("?").problems.append(f"line {number}: not an export row: {exc!r}")
            return
        audit = self._device(device)
        where = f"line {number} ({device} #{counter})"
        problems = self._row(audit, counter, event_bytes, cose, columns, leaf)
        audit.problems.extend(f"{where}: {p}" for p in problems)
        data = tlog.event_leaf_data(device, counter, event_bytes, cose)
        audit.leaves.append((leaf, counter, counter, tlog.rfc9162_leaf(data)))

    def _walk(self, number: int, entries: Any) -> None:
        try:
            self.keys = from_entries(self._first, history_entries(entries))
        except KeyHistoryError as exc:
            where = f"line {number}: " if number else ""
            self._device("?").problems.append(f"{where}key history: {exc}")

    def _open(self, cose: bytes, leaf: int | None) -> tuple[Any, Epoch | None, str | None]:
        """(the signed payload, the key that signed it, None) or (None, None, why not): the
        key is the history's whose kid the COSE header names, and must be the one for the
        row's leaf index (SPEC §14.7)."""
        try:
            protected = cbor2.loads(cbor2.loads(cose).value[0])
            kid = protected.get(_HDR_KID) if isinstance(protected, dict) else None
        except Exception:  # cbor2 raises several types: not a COSE_Sign1
            kid = None
        epoch = self.keys.by_kid(kid) if isinstance(kid, bytes) else None
        if epoch is None:
            named = kid.hex() if isinstance(kid, bytes) else repr(kid)
            return (
                None,
                None,
                (
                    f"does not verify: signed by kid {named}, not a key of the gateway's key "
                    f"history (the pinned key{' and its transitions' if self.keys.rotated else ''}"
                    "): if the gateway rotated its key, give `sealink keys history --json` as "
                    "--key-history"
                ),
            )
        key = COSEKey.from_pem(epoch.pem(), kid=epoch.kid)
        try:
            signed = cbor2.loads(self._cose.decode(cose, key))
        except Exception as exc:  # cwt raises several types; any of them means "not verified"
            return None, None, f"does not verify: {exc}"
        if leaf is None and self.keys.rotated:
            # Nothing else places a row before or after a switch: its signed time is the
            # signer's to choose.
            return None, None, "names no leaf: the key history cannot tell which key may sign it"
        problem = None if leaf is None else epoch.leaf_problem(leaf)
        if problem is not None:
            return None, None, problem
        return signed, epoch, None

    def _device(self, device: str) -> DeviceAudit:
        return self.devices.setdefault(device, DeviceAudit(device))

    def _row(
        self,
        audit: DeviceAudit,
        counter: int,
        event_bytes: bytes,
        cose: bytes,
        columns: tuple[int | None, bytes | None],
        leaf: int | None,
    ) -> list[str]:
        problems = self._countersignature(
            audit.device, counter, event_bytes, cose, columns[0], leaf
        )
        if columns[1] is not None and columns[1] != hashlib.sha256(event_bytes).digest():
            problems.append("the exported hash column is not SHA-256 of the event bytes")
        try:
            event = cbor2.loads(event_bytes)
        except (cbor2.CBORDecodeError, ValueError) as exc:
            event = {}
            problems.append(f"event bytes unreadable: {exc!r}")
        if event and event.get(_EV_COUNTER) != counter:
            problems.append(f"the event itself says counter {event.get(_EV_COUNTER)}")
        follows = audit.rows and counter == audit.last + 1
        if audit.rows and not follows:
            problems.append(f"counter follows {audit.last}: records missing or repeated")
        # None after an operator's gap: the record before this one is lost, it anchors the chain.
        previous = self._next_prev.get(audit.device)
        if counter == 1 or (follows and previous is not None):
            expected = _GENESIS if counter == 1 else previous
            if event and event.get(_EV_PREV) != expected:
                problems.append("prev does not chain to the record before it")
        seal_key = self._seal_keys.get(audit.device)
        if seal_key is None:
            if not audit.events:
                problems.append(
                    "no seal key for this device (--seal-keys): its records cannot be shown "
                    "to be the seal's"
                )
        elif event:
            if not seal_signature_ok(seal_key, event):
                problems.append("the seal signature does not verify: not the seal's record")
            audit.seal_signatures_checked += 1
        key = self._device_keys.get(audit.device)
        if key is not None and event:
            unsigned = {k: v for k, v in event.items() if k != _MAC}
            mac = hmac.digest(key, cbor2.dumps(unsigned, canonical=True), "sha256")
            if not hmac.compare_digest(mac, event.get(_MAC, b"")):
                problems.append("device MAC does not verify")
            audit.macs_checked += 1
        # The sequence advances over every exported row, verified or not, so one damaged row
        # is reported once, not again by the rows after it.
        self._advance(audit, counter, counter)
        audit.events += 1
        if event:
            kind = event.get(_EV_KIND)
            name = (
                KINDS[kind] if isinstance(kind, int) and 0 <= kind < len(KINDS) else f"kind {kind}"
            )
            audit.kinds[name] = audit.kinds.get(name, 0) + 1
        self._next_prev[audit.device] = hashlib.sha256(event_bytes).digest()
        return problems

    def _advance(self, audit: DeviceAudit, first: int, last: int) -> None:
        if not audit.rows:
            audit.first = first
        audit.rows += 1
        audit.last = last

    def _gap_line(self, number: int, row: dict[str, Any]) -> None:
        try:
            gap = row["gap"]
            device = str(gap["device"])
            statement = GapStatement(
                int(gap["first"]),
                int(gap["last"]),
                int(gap["adopted_ms"]),
                str(gap["operator"]),
                str(gap["note"]),
                bytes.fromhex(gap["head"]) if "head" in gap else None,
            )
            cose = base64.b64decode(row["cose"], validate=True)
            leaf = None if row.get("leaf") is None else int(row["leaf"])
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            self._device("?").problems.append(f"line {number}: not an export gap row: {exc!r}")
            return
        audit = self._device(device)
        data = tlog.gap_leaf_data(device, statement.first, statement.last, cose)
        audit.leaves.append((leaf, statement.first, statement.last, tlog.rfc9162_leaf(data)))
        where = f"line {number} ({device} gap {statement.first}..{statement.last})"
        problems = self._gap(audit, statement, cose, leaf)
        audit.problems.extend(f"{where}: {p}" for p in problems)
        if not problems:
            audit.gaps.append(statement)
        self._advance(audit, statement.first, statement.last)
        self._next_prev[device] = statement.head if not problems else None

    def _gap(
        self, audit: DeviceAudit, gap: GapStatement, cose: bytes, leaf: int | None
    ) -> list[str]:
        problems = []
        if not 1 <= gap.first <= gap.last:
            problems.append("not a range of counters")
        if audit.rows and gap.first != audit.last + 1:
            problems.append(f"gap follows {audit.last}: records missing or repeated")
        signed, epoch, why = self._open(cose, leaf)
        if epoch is None:
            return [*problems, f"gap statement {why}"]
        expected = {
            "kind": "gap",
            "device": audit.device,
            "first": gap.first,
            "last": gap.last,
            "adopted_ms": gap.adopted_ms,
            "operator": gap.operator,
            "note": gap.note,
        }
        if gap.head is not None:
            expected["head"] = gap.head
        if signed != expected:
            problems.append("the signed statement is not this gap of this device")
        return problems

    def _countersignature(
        self,
        device: str,
        counter: int,
        event_bytes: bytes,
        cose: bytes,
        received_ms: int | None,
        leaf: int | None,
    ) -> list[str]:
        signed, epoch, why = self._open(cose, leaf)
        if epoch is None:
            return [f"countersignature {why}"]
        if not isinstance(signed, dict) or (
            signed.get("device"),
            signed.get("counter"),
            signed.get("event"),
        ) != (device, counter, event_bytes):
            return ["the signed payload names another device, counter or event"]
        if received_ms is not None and signed.get("received_ms") != received_ms:
            return [
                f"the exported received_ms {received_ms} is not the signed "
                f"{signed.get('received_ms')}"
            ]
        return []


def read_export(
    lines: Iterable[str],
    public_key_pem: bytes,
    seal_keys: dict[str, bytes],
    device_keys: dict[str, bytes] | None = None,
    allow_partial: bool = False,
    key_history: list[Any] | None = None,
) -> tuple[list[DeviceAudit], dict[str, Any] | None, KeyHistory]:
    """Check every row of an export (events and gaps of one device in counter order, as
    exported); also returns its checkpoint line, if any (unchecked: sealink_verify.evidence),
    and the key history walked from the pinned key (`key_history`: the `keys` of `sealink keys
    history --json`; without it, the export's own key_history line, if any).
    `seal_keys`: device -> its chip's public key X || Y; a device without one fails."""
    checker = _Checker(public_key_pem, device_keys or {}, seal_keys, key_history)
    for number, text in enumerate(lines, 1):
        if text.strip():
            checker.line(number, text)
    audits = list(checker.devices.values())
    for audit in audits:
        if audit.rows and audit.first != 1 and not allow_partial:
            audit.problems.append(
                f"the export starts at counter {audit.first}: records 1..{audit.first - 1} "
                "are missing (head truncated), and no signed gap accounts for them"
            )
    return audits, checker.trailer, checker.keys


def verify_export(
    lines: Iterable[str],
    public_key_pem: bytes,
    seal_keys: dict[str, bytes],
    device_keys: dict[str, bytes] | None = None,
    allow_partial: bool = False,
    key_history: list[Any] | None = None,
) -> list[DeviceAudit]:
    """read_export without the checkpoint line."""
    return read_export(lines, public_key_pem, seal_keys, device_keys, allow_partial, key_history)[0]
