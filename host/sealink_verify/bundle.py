"""One impression's evidence bundle (SPEC §14.5), checked offline with nothing else.

The bundle carries the seal's record and public key, the gateway's countersignature and
public key, the record's leaf in the gateway's log with its inclusion proof, the signed
checkpoint (with the cosignature lines of the witnesses that cosigned it, SPEC §14.6), the
device-heads table that checkpoint commits to, and the gateway's key history.
Each step of §14.5 is one named check. A bundle carries its own keys, so anyone can make a
self-consistent one with keys of their own: the report says which keys it relied on
(SHA-256 fingerprints) and whether the auditor pinned them or they came from the bundle only.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cwt import COSE, COSEKey

from sealink_verify import tlog
from sealink_verify.audit import KINDS, seal_public_key, seal_signature_ok
from sealink_verify.keyhistory import (
    Epoch,
    KeyHistory,
    KeyHistoryError,
    from_entries,
    history_entries,
)

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "Bundle",
    "BundleError",
    "BundleReport",
    "Check",
    "ed25519_raw",
    "fingerprint",
    "read_bundle",
    "verify_bundle",
]

BUNDLE_FORMAT = "sealink-evidence-bundle"
BUNDLE_VERSION = 1
# Written by a gateway that rotated its key: key_history carries the transitions (SPEC §14.7).
BUNDLE_VERSION_ROTATED = 2

_EVENT = 4
# EVENT fields (SPEC §4): 0 type, 1 counter, 2 boot_id, 3 uptime_ms, 4 time_s, 5 kind,
# 6 permit, 7 operator, 8 prev, 9 sig, 10 cause (some kinds only), 15 mac
_U32 = 1 << 32
_U64 = 1 << 64
_EV_UINTS = {1: _U32, 2: _U32, 3: _U64, 4: _U64, 5: _U64, 6: _U32, 7: _U32}
_EV_BYTES = {8: 32, 9: 64, 15: 32}
_EV_CAUSE = 10
_KIND_REBOOT = 4
_CAUSE_REQUIRED = (5, 6)  # ALARM, UNRECORDED; optional on REBOOT, absent on the others
_KIND_WORDS = (
    "Impression",
    "Forced impression (sensed while the lock was shut)",
    "Tamper record (the seal's case was opened)",
    "Low-battery record",
    "Reboot record",
    "Alarm record",
    "Record of presses that got no record",
)
_KID_LEN = 8


class BundleError(Exception):
    """A file that is not a bundle this verifier reads: named, without a traceback."""


@dataclass(frozen=True)
class Bundle:
    device: str
    counter: int
    record: bytes
    seal_key: bytes
    cose: bytes
    gateway_id: str
    gateway_key: bytes
    gateway_kid: bytes
    leaf_index: int
    leaf_data: bytes
    tree_size: int
    path: list[bytes]
    note: str
    heads: list[tuple[str, int, int, bytes]]
    key_history: list[tuple[bytes, bytes]]  # (public key, kid), oldest first
    version: int = BUNDLE_VERSION
    transitions: list[Any] = field(default_factory=list)  # entries as written: keyhistory reads
    receipt: bytes | None = None  # the COSE Receipt (SPEC §14.8): `sealink-verify receipt` reads


def _hex(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"{what}: expected a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise BundleError(f"{what}: not hex") from None
    if size is not None and len(raw) != size:
        raise BundleError(f"{what}: {len(raw)} bytes, expected {size}")
    return raw


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BundleError(f"{what}: expected a non-negative integer")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BundleError(f"{what}: expected a string")
    return value


def read_bundle(text: str) -> Bundle:
    """Parse a bundle file (BundleError says what is missing or malformed)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BundleError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
        raise BundleError(f'not an evidence bundle (no "format": "{BUNDLE_FORMAT}")')
    if doc.get("version") not in (BUNDLE_VERSION, BUNDLE_VERSION_ROTATED):
        raise BundleError(
            f"bundle version {doc.get('version')!r}: this verifier reads versions "
            f"{BUNDLE_VERSION} and {BUNDLE_VERSION_ROTATED}"
        )
    try:
        gateway, leaf, inclusion = doc["gateway"], doc["leaf"], doc["inclusion"]
        return Bundle(
            device=_str(doc["device"], "device"),
            counter=_int(doc["counter"], "counter"),
            record=_hex(doc["record"], "record"),
            seal_key=_hex(doc["seal"]["public_key"], "seal.public_key"),
            cose=_hex(doc["countersignature"], "countersignature"),
            gateway_id=_str(gateway["id"], "gateway.id"),
            gateway_key=_hex(gateway["public_key"], "gateway.public_key", 32),
            gateway_kid=_hex(gateway["kid"], "gateway.kid", _KID_LEN),
            leaf_index=_int(leaf["index"], "leaf.index"),
            leaf_data=_hex(leaf["data"], "leaf.data"),
            tree_size=_int(inclusion["tree_size"], "inclusion.tree_size"),
            path=[_hex(p, "inclusion.path", 32) for p in inclusion["path"]],
            note=_str(doc["checkpoint"]["note"], "checkpoint.note"),
            heads=[
                (
                    _str(h["device"], "heads.device"),
                    _int(h["counter"], "heads.counter"),
                    _int(h["leaf"], "heads.leaf"),
                    _hex(h["hash"], "heads.hash", 32),
                )
                for h in doc["heads"]
            ],
            key_history=[
                (
                    _hex(k["public_key"], "key_history.public_key", 32),
                    _hex(k["kid"], "key_history.kid", _KID_LEN),
                )
                for k in doc["key_history"]
            ],
            version=doc["version"],
            transitions=list(doc["key_history"]),
            receipt=None if doc.get("receipt") is None else _hex(doc["receipt"], "receipt"),
        )
    except (KeyError, TypeError) as exc:
        raise BundleError(f"malformed bundle: missing or misshapen {exc}") from None


def fingerprint(public: bytes) -> str:
    """A key's SHA-256 fingerprint (of the raw Ed25519 key, of a seal key's X || Y)."""
    return hashlib.sha256(public).hexdigest()


def ed25519_raw(pem: bytes) -> bytes:
    """The raw 32-byte key of an Ed25519 public key PEM (ValueError if it is not one)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key PEM")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class KeyUse:
    """The key a check relied on: its fingerprint, and whether the auditor pinned it."""

    fingerprint: str
    pinned: bool

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "pinned": self.pinned}


@dataclass
class BundleReport:
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, KeyUse] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def pinned(self) -> bool:
        return all(k.pinned for k in self.keys.values())

    @property
    def problems(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    @property
    def status(self) -> str:
        if not self.ok:
            return "failed"
        return "verified" if self.pinned else "keys_unpinned"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "verified": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "problems": self.problems,
            "facts": self.facts,
            "keys": {role: key.to_json() for role, key in self.keys.items()},
        }

    def text(self) -> str:
        return _render(self)


class _Verifier:
    """The steps of SPEC §14.5 in order; each adds one Check, later ones use what earlier
    ones established (the decoded event, the verified checkpoint)."""

    def __init__(
        self,
        bundle: Bundle,
        gateway_key: bytes | None,
        seal_key: bytes | None,
        witness_keys: dict[str, bytes],
    ):
        self.b = bundle
        self.witness_keys = witness_keys
        self.report = BundleReport()
        rotated = bundle.version == BUNDLE_VERSION_ROTATED
        # What the auditor pins is the FIRST key; a version 1 bundle has only one.
        self.first_in_bundle = bundle.key_history[0][0] if rotated else bundle.gateway_key
        self.gateway_key = gateway_key or self.first_in_bundle
        self.history_problem: str | None = None
        self.keys = KeyHistory.one(self.gateway_key)
        if rotated:
            try:
                entries = history_entries(bundle.transitions)
                self.keys = from_entries(self.gateway_key, entries, bundle.gateway_id)
            except KeyHistoryError as exc:
                self.history_problem = str(exc)
        self.seal_key = seal_key or bundle.seal_key
        self.report.keys = {
            "gateway": KeyUse(fingerprint(self.gateway_key), gateway_key is not None),
            "seal": KeyUse(fingerprint(self.seal_key), seal_key is not None),
            **{f"witness {n}": KeyUse(fingerprint(k), True) for n, k in witness_keys.items()},
        }
        self.cosigned: dict[str, int] = {}
        self.unknown_cosigners: list[str] = []
        self.event: dict[Any, Any] | None = None
        self.checkpoint: tlog.SignedCheckpoint | None = None
        self.received_ms: int | None = None

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.report.checks.append(Check(name, ok, detail))

    def run(self) -> BundleReport:
        for step in (
            self.record,
            self.seal_key_used,
            self.seal_signature,
            self.gateway_key_used,
            self.countersignature,
            self.leaf,
            self.signed_checkpoint,
            self.inclusion,
            self.heads,
            self.key_history,
            self.cosignatures,
        ):
            step()
        self.report.facts = self.facts()
        return self.report

    def record(self) -> None:
        b = self.b
        try:
            event = cbor2.loads(b.record)
        except Exception as exc:  # cbor2 raises several types on malformed input
            self.add("record", False, f"the record's bytes are not CBOR: {exc}")
            return
        problem = _event_problem(event, b.record)
        if problem is None and event[1] != b.counter:
            problem = f"the record says counter {event[1]}, the bundle {b.counter}"
        if problem is not None:
            self.add("record", False, problem)
            return
        self.event = event
        self.add("record", True, f"an EVENT of counter {b.counter}, {len(b.record)} bytes")

    def seal_key_used(self) -> None:
        self._key_used("seal_key", "seal", self.b.seal_key, self.seal_key)

    def gateway_key_used(self) -> None:
        b = self.b
        if hashlib.sha256(b.gateway_key).digest()[:_KID_LEN] != b.gateway_kid:
            self.add("gateway_key", False, "gateway.kid is not SHA-256(gateway.public_key)[:8]")
        elif b.version == BUNDLE_VERSION_ROTATED and b.gateway_key != b.key_history[-1][0]:
            self.add("gateway_key", False, "gateway.public_key is not the last key of the history")
        else:
            self._key_used("gateway_key", "gateway", self.first_in_bundle, self.gateway_key)

    def _key_used(self, name: str, role: str, in_bundle: bytes, used: bytes) -> None:
        shown = fingerprint(used)
        if not self.report.keys[role].pinned:
            self.add(name, True, f"taken from the bundle, not pinned: {shown}")
        elif in_bundle == used:
            self.add(name, True, f"pinned by the auditor, the same as the bundle's: {shown}")
        else:
            self.add(
                name,
                False,
                f"the bundle names {fingerprint(in_bundle)}, the auditor pinned {shown}",
            )

    def seal_signature(self) -> None:
        if self.event is None:
            self.add("seal_signature", False, "not checked: the record does not decode")
            return
        try:
            key = seal_public_key(self.seal_key)
        except ValueError as exc:
            self.add("seal_signature", False, f"the seal key is not a P-256 point: {exc}")
            return
        if seal_signature_ok(key, self.event):
            self.add("seal_signature", True, "made by the seal's chip key (ECDSA P-256)")
        else:
            self.add("seal_signature", False, "does not verify under the seal key")

    def countersignature(self) -> None:
        b = self.b
        epoch, problem = self._countersigning_key()
        if epoch is None:
            self.add("countersignature", False, problem)
            return
        key = COSEKey.from_pem(epoch.pem(), kid=epoch.kid)
        try:
            signed = cbor2.loads(COSE.new().decode(b.cose, key))
        except Exception as exc:  # cwt raises several types; any of them means "not verified"
            self.add("countersignature", False, f"does not verify under the gateway key: {exc}")
            return
        named = (
            (signed.get("device"), signed.get("counter"), signed.get("gateway"))
            if isinstance(signed, dict)
            else None
        )
        if named != (b.device, b.counter, b.gateway_id):
            self.add("countersignature", False, f"names another record or gateway: {named}")
        elif signed.get("event") != b.record:
            self.add("countersignature", False, "covers other record bytes than the bundle's")
        elif not isinstance(signed.get("received_ms"), int) or signed["received_ms"] < 0:
            self.add("countersignature", False, "has no received_ms")
        else:
            self.received_ms = signed["received_ms"]
            self.add("countersignature", True, "COSE_Sign1 by the gateway over exactly this record")

    def _countersigning_key(self) -> tuple[Epoch | None, str]:
        """The key of the history whose kid the countersignature names, if it may have signed
        the record's leaf (SPEC §14.7); else None and why not."""
        b = self.b
        try:
            kid = cbor2.loads(cbor2.loads(b.cose).value[0]).get(4)
        except Exception:  # cbor2 raises several types: not a COSE_Sign1, judged on decoding
            kid = None
        epoch = self.keys.by_kid(kid) if isinstance(kid, bytes) else None
        if epoch is None and self.keys.rotated:
            shown = kid.hex() if isinstance(kid, bytes) else repr(kid)
            return None, f"signed by kid {shown}, not a key of the history"
        epoch = epoch or self.keys.first  # an unknown kid fails to verify under the one key
        problem = epoch.leaf_problem(b.leaf_index)
        return (None, problem) if problem is not None else (epoch, "")

    def leaf(self) -> None:
        b = self.b
        expected = tlog.event_leaf_data(b.device, b.counter, b.record, b.cose)
        if b.leaf_data == expected:
            self.add("leaf", True, "binds the record, its seal signature and the countersignature")
        else:
            self.add("leaf", False, "the leaf data is not the one of this record and signature")

    def signed_checkpoint(self) -> None:
        b = self.b
        try:
            checkpoint = self.keys.open_checkpoint(b.note)
        except tlog.NoteError as exc:
            self.add("checkpoint", False, str(exc))
            return
        origin = f"sealink/gateway/{b.gateway_id}"
        if checkpoint.origin != origin:
            self.add("checkpoint", False, f"origin {checkpoint.origin!r}, not {origin!r}")
        elif checkpoint.heads_hash is None or checkpoint.time_ms is None:
            self.add("checkpoint", False, "no sealink-heads and sealink-time-ms lines")
        else:
            self.checkpoint = checkpoint
            self.add("checkpoint", True, f"signed by the gateway key: size {checkpoint.size}")

    def inclusion(self) -> None:
        b, checkpoint = self.b, self.checkpoint
        if checkpoint is None:
            self.add("inclusion", False, "not checked: no verified checkpoint")
        elif b.tree_size != checkpoint.size:
            self.add("inclusion", False, f"proven for size {b.tree_size}, not {checkpoint.size}")
        elif tlog.verify_inclusion(
            tlog.rfc9162_leaf(b.leaf_data), b.leaf_index, checkpoint.size, b.path, checkpoint.root
        ):
            self.add("inclusion", True, f"leaf {b.leaf_index} reaches the root (RFC 9162)")
        else:
            self.add("inclusion", False, f"leaf {b.leaf_index} does not reach the signed root")

    def heads(self) -> None:
        b, checkpoint = self.b, self.checkpoint
        if checkpoint is None:
            self.add("heads", False, "not checked: no verified checkpoint")
            return
        if tlog.heads_digest(b.heads) != checkpoint.heads_hash:
            self.add("heads", False, "the heads table is not the one the checkpoint signs")
            return
        entries = [h for h in b.heads if h[0] == b.device]
        if len(entries) != 1:
            self.add("heads", False, f"{len(entries)} entries for {b.device}, not one")
            return
        _, counter, leaf, leaf_hash = entries[0]
        mine = tlog.rfc9162_leaf(b.leaf_data)
        if not leaf < checkpoint.size:
            ok = False
        elif counter == b.counter:
            ok = (leaf, leaf_hash) == (b.leaf_index, mine)
        else:
            ok = counter > b.counter and leaf > b.leaf_index
        detail = f"{b.device}'s head in the checkpoint: counter {counter}, leaf {leaf}"
        self.add("heads", ok, detail if ok else f"{detail}: does not fit this record")

    def key_history(self) -> None:
        history = self.b.key_history
        current = (self.b.gateway_key, self.b.gateway_kid)
        if self.b.version == BUNDLE_VERSION_ROTATED:
            if self.history_problem is not None:
                self.add("key_history", False, self.history_problem)
            else:
                self.add(
                    "key_history",
                    True,
                    f"{len(self.keys.epochs)} gateway keys from the first, each transition "
                    "signed by the key before it and by the next",
                )
        elif history == [current]:
            self.add("key_history", True, "one gateway key, the one above")
        elif len(history) > 1:
            self.add("key_history", False, "key transitions are not defined in version 1")
        else:
            self.add("key_history", False, "does not end with the bundle's gateway key")

    def cosignatures(self) -> None:
        """Each pinned witness must have cosigned this very checkpoint; the lines of witnesses
        the auditor gave no key for are listed, not trusted."""
        b, checkpoint = self.b, self.checkpoint
        try:
            names = tlog.cosigners(b.note)
        except tlog.NoteError:
            names = []  # the checkpoint check already failed on it
        origin = f"sealink/gateway/{b.gateway_id}"
        self.unknown_cosigners = sorted(
            {n for n in names if n != origin and n not in self.witness_keys}
        )
        for name, key in sorted(self.witness_keys.items()):
            check = f"cosignature {name}"
            if checkpoint is None:
                self.add(check, False, "not checked: no verified checkpoint")
                continue
            try:
                time_s = tlog.verify_cosignature(b.note, name, key)
            except tlog.NoteError as exc:
                self.add(check, False, str(exc))
                continue
            if time_s is None:
                self.add(check, False, f"witness {name} did not cosign this checkpoint")
            else:
                self.cosigned[name] = time_s
                self.add(check, True, f"witness {name} cosigned it on {_utc(time_s)}")

    def facts(self) -> dict[str, Any]:
        b, event, checkpoint = self.b, self.event or {}, self.checkpoint
        kind = event.get(5)
        return {
            "device": b.device,
            "counter": b.counter,
            "gateway": b.gateway_id,
            "kind": KINDS[kind] if isinstance(kind, int) and kind < len(KINDS) else kind,
            "boot_id": event.get(2),
            "time_s": event.get(4),
            "permit": event.get(6),
            "operator": event.get(7),
            "received_ms": self.received_ms,
            "leaf_index": b.leaf_index,
            "tree_size": None if checkpoint is None else checkpoint.size,
            "root": None if checkpoint is None else checkpoint.root.hex(),
            "checkpoint_time_ms": None if checkpoint is None else checkpoint.time_ms,
            "cosigned_by": dict(sorted(self.cosigned.items())),
            "unknown_cosigners": self.unknown_cosigners,
        }


def _event_problem(event: Any, raw: bytes) -> str | None:
    """Why these bytes are not an EVENT of SPEC §4 (None: they are one)."""
    if not isinstance(event, dict) or event.get(0) != _EVENT:
        return "the record is not an EVENT (type 4)"
    allowed = {0, *_EV_UINTS, *_EV_BYTES, _EV_CAUSE}
    if set(event) - allowed:
        return f"the record has keys an EVENT has not: {sorted(set(event) - allowed, key=str)}"
    for k, end in _EV_UINTS.items():
        value = event.get(k)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < end:
            return f"field {k} is missing or not an unsigned integer below {end}"
    for k, size in _EV_BYTES.items():
        if not isinstance(event.get(k), bytes) or len(event[k]) != size:
            return f"field {k} is missing or not {size} bytes"
    if event[1] < 1 or event[5] >= len(KINDS):
        return "counter 0, or a kind that is not defined"
    cause = event.get(_EV_CAUSE)
    if cause is None and event[5] in _CAUSE_REQUIRED:
        return f"a {KINDS[event[5]]} record without its cause (field 10)"
    if cause is not None and (
        event[5] not in (*_CAUSE_REQUIRED, _KIND_REBOOT)
        or not isinstance(cause, int)
        or isinstance(cause, bool)
        or not 0 <= cause < _U32
    ):
        return "field 10 (cause) where the kind has none, or not a uint32"
    if cbor2.dumps(event, canonical=True) != raw:
        return "the record is not deterministic CBOR: not the bytes a seal makes"
    return None


def verify_bundle(
    bundle: Bundle,
    gateway_key: bytes | None = None,
    seal_key: bytes | None = None,
    witness_keys: dict[str, bytes] | None = None,
) -> BundleReport:
    """Check a bundle (SPEC §14.5). `gateway_key` (raw Ed25519) and `seal_key` (X || Y),
    when the auditor has them from elsewhere, are the keys relied on: the bundle must name
    the same ones. `witness_keys` (name -> raw Ed25519): witnesses that must have cosigned
    the checkpoint (SPEC §14.6)."""
    return _Verifier(bundle, gateway_key, seal_key, dict(witness_keys or {})).run()


def _utc(seconds: float) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return f"an impossible time ({seconds} s after 1970)"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _claim(facts: dict[str, Any]) -> str:
    kind = facts["kind"]
    words = _KIND_WORDS[KINDS.index(kind)] if kind in KINDS else "Record"
    made = (
        f"made {_utc(facts['time_s'])} by the seal's clock"
        if facts["time_s"]
        else "made when the seal's clock was not set"
    )
    permit = f"under permit {facts['permit']}" if facts["permit"] else "without a permit"
    operator = f" by operator {facts['operator']}" if facts["operator"] else ""
    received = _utc(facts["received_ms"] / 1000)
    state = _utc(facts["checkpoint_time_ms"] / 1000)
    return (
        f"{words} {facts['counter']} of seal {facts['device']}, {made}, {permit}{operator}, "
        f"was recorded by the seal's security chip and accepted by gateway {facts['gateway']} "
        f"on {received}; it is entry {facts['leaf_index'] + 1} of the gateway's log, whose signed "
        f"state of {state} (size {facts['tree_size']}) includes it."
    )


def _render(report: BundleReport) -> str:
    facts = report.facts
    lines = []
    if report.ok:
        lines.append(_claim(facts))
        if not report.pinned:
            lines.append(
                "BUT a key was taken from the bundle itself, not given by the auditor: anyone "
                "can make a bundle that agrees with keys of their own. Compare the fingerprints "
                "below with keys obtained elsewhere (--gateway-key, --seal-key)."
            )
    else:
        failed = len(report.problems)
        lines.append(
            f"This bundle does NOT prove record {facts['counter']} of seal {facts['device']}: "
            f"{failed} of {len(report.checks)} checks FAILED."
        )
    if facts.get("cosigned_by"):
        lines.append(
            "The gateway showed this state of its log to witnesses "
            f"{', '.join(facts['cosigned_by'])}, who checked it extends every state they saw."
        )
    if facts.get("unknown_cosigners"):
        lines.append(
            "Not checked, no key given (--witness-key): cosignatures by "
            f"{', '.join(facts['unknown_cosigners'])}."
        )
    for role, key in report.keys.items():
        source = "pinned by the auditor" if key.pinned else "from the bundle only"
        lines.append(f"{role} key SHA-256 {key.fingerprint} ({source})")
    lines.extend(f"{'OK    ' if c.ok else 'FAILED'} {c.name}: {c.detail}" for c in report.checks)
    return "\n".join(lines) + "\n"
