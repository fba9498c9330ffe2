"""`sealink verify` (and the standalone `sealink-verify`): check an evidence export offline;
`sealink-verify bundle FILE`: check one impression's evidence bundle (SPEC §14.5);
`sealink-verify receipt FILE`: check one record's COSE Receipt (RFC 9942, SPEC §14.8);
`sealink-verify message --topic T FILE`: check one signed MQTT status or alarm (SPEC §11.4);
`sealink-verify registry --topic T --fleet-key HEX FILE`: check one fleet registry message
(SPEC §11.6); `sealink-verify approver ...` (the same arguments): one fleet approver message
(SPEC §11.7).

Registered into the `sealink` command line through the `sealink.commands` entry point group, so
the gateway's CLI offers it without importing this package's code into the product. The bundle
and receipt checks are the standalone command's only: `sealink verify` takes an export as its
first argument.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sealink_verify.audit import (
    DeviceAudit,
    GapStatement,
    derive_kid,
    read_export,
    seal_public_key,
)
from sealink_verify.bundle import Bundle, BundleError, ed25519_raw, read_bundle, verify_bundle
from sealink_verify.evidence import EvidenceAudit, check_checkpoints, check_proof, load_proof
from sealink_verify.keyhistory import KeyHistory, KeyHistoryError, from_entries, history_entries
from sealink_verify.mqtt import (
    MessageError,
    SignedMessage,
    verify_approver_message,
    verify_message,
    verify_registry_message,
)
from sealink_verify.receipt import verify_receipt

__all__ = ["main", "register"]

_T = TypeVar("_T")
_M = TypeVar("_M")

EXIT_VERIFIED = 0
EXIT_FAILED = 1
EXIT_UNUSABLE = 2
EXIT_GAPS = 3
EXIT_UNPINNED = 4

_EPILOG = """\
exit status:
  0  every row verified and every counter is evidenced by a record
  1  something failed to verify: a signature, a record's bytes, the hash chain, a missing
     record, a gap statement that is unsigned, forged or does not fit the sequence
  2  an input is unusable (a file missing or unreadable, not a PEM public key, a seal key
     that is not a P-256 point)
  3  everything verified, but some counters are covered only by an operator-declared gap
     (`sealink devices adopt`: the records were lost; a warning names each gap)
  4  (bundle) every check passed, but with a key taken from the bundle itself: give the
     gateway's and the seal's keys obtained elsewhere (--gateway-key, --seal-key)

A gateway that rotated its key (`sealink keys rotate`): pin its FIRST key (--public-key); the
key history (`sealink keys history --json`, --key-history, or the export's first line) is walked
from it, and each row and checkpoint must be signed by the key the history names for it.

Every problem is also in the JSON output ("problem_list"); with a checkpoint (an export made
with --with-checkpoint, --checkpoint notes, --proof files) a last line {"evidence": {...}}
says what the transparency log proves.

`sealink-verify bundle FILE [--gateway-key PEM] [--seal-key HEX] [--witness-key NAME=HEX]...
[--json]` checks one impression's evidence bundle (`sealink evidence bundle`) with nothing
else: 0 verified with both keys pinned, 4 verified with a key from the bundle only, 1 a check
failed (a pinned witness's cosignature missing or forged included), 2 unusable.
"""


class VerifyInputError(Exception):
    """An input the verifier cannot read: named, without a traceback."""


class _Progress:
    """How much of the export is read, as one line on stderr redrawn at most every
    `_REDRAW_S`, and only when stderr is a terminal (a log or a pipe gets no control
    characters). No progress library is a dependency, and the verifier keeps its own line
    rather than the gateway's: it imports nothing of sealink (import-linter)."""

    _REDRAW_S = 0.2

    def __init__(self, name: str, size: int) -> None:
        self.shown = sys.stderr.isatty() and size > 0
        self._name = name
        self._size = size
        self._read = 0
        self._drawn_at: float | None = None

    def lines(self, source: Iterable[str]) -> Iterator[str]:
        """`source`'s lines, counted as they are read (an export is ASCII JSON Lines: its
        characters are its bytes)."""
        try:
            for line in source:
                self._read += len(line)
                self._draw()
                yield line
        finally:
            if self._drawn_at is not None:
                sys.stderr.write("\r\x1b[K")  # what is printed next starts on a clean line
                sys.stderr.flush()

    def _draw(self) -> None:
        now = time.monotonic()
        if self.shown and (self._drawn_at is None or now - self._drawn_at >= self._REDRAW_S):
            self._drawn_at = now
            percent = min(100, self._read * 100 // self._size)
            sys.stderr.write(f"\rsealink verify: {self._name}: {percent}% read\x1b[K")
            sys.stderr.flush()


def read_device_key(path: str) -> bytes:
    """A device key file: 64 hex digits, or the provisioning JSON {"device_id", "key"}; 0600."""
    try:
        st = os.stat(path)
        text = Path(path).read_bytes().strip()
    except OSError as exc:
        raise VerifyInputError(f"cannot read device key file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VerifyInputError(
            f"device key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"chmod 600 {path}"
        )
    try:
        if text.startswith(b"{"):
            text = json.loads(text)["key"].encode()
        key = bytes.fromhex(text.decode())
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise VerifyInputError(
            f"device key file {path}: expected 64 hex digits or "
            '{"device_id": ..., "key": "<64 hex>"}'
        ) from None
    if len(key) != 32:
        raise VerifyInputError(f"device key file {path}: key is {len(key)} bytes, expected 32")
    return key


def read_seal_keys(path: str) -> dict[str, bytes]:
    """JSON Lines, each {"device": ..., "seal_key": "<128 hex>"}: what the seals' provisioning
    issued (also the shape of `sealink devices list`, which is the operator's word, not theirs)."""
    keys: dict[str, bytes] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise VerifyInputError(f"cannot read seal keys {path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            device, raw = str(row["device"]), bytes.fromhex(row["seal_key"])
            seal_public_key(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise VerifyInputError(
                f"{path} line {number}: expected "
                '{"device": ..., "seal_key": "<128 hex digits: X || Y>"}' + f" ({exc})"
            ) from None
        if keys.get(device, raw) != raw:
            raise VerifyInputError(f"{path} line {number}: a second, different key for {device}")
        keys[device] = raw
    return keys


def read_key_history(path: str) -> list[Any]:
    """The `keys` of `sealink keys history --json` (checked when walked)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise VerifyInputError(f"cannot read key history {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerifyInputError(f"key history {path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise VerifyInputError(
            f'key history {path}: expected `sealink keys history --json` output ({{"keys": [...]}})'
        )
    return list(doc["keys"])


def _walk(public_pem: bytes, history: list[Any] | None, evidence: EvidenceAudit) -> KeyHistory:
    """The key history from the pinned first key; one that does not walk is a failure (a
    forged or broken chain), and only the first key is relied on."""
    first = ed25519_raw(public_pem)
    if history is not None:
        try:
            return from_entries(first, history_entries(history))
        except KeyHistoryError as exc:
            evidence.problems.append(f"key history: {exc}")
    return KeyHistory.one(first)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "export", nargs="?", help="JSON Lines written by `sealink events export` (optional)"
    )
    p.add_argument(
        "--public-key", required=True, metavar="PEM", help="from `sealink keys show --format pem`"
    )
    p.add_argument(
        "--key-history",
        metavar="JSON",
        help="the gateway's key history (`sealink keys history --json`), walked from the "
        "--public-key, which is then its FIRST key; an export of a rotated gateway carries it",
    )
    p.add_argument(
        "--seal-keys",
        metavar="JSONL",
        help='the seals\' chip public keys, lines of {"device": ..., "seal_key": "<hex>"}, '
        "from the seals' provisioning; required to verify an export",
    )
    p.add_argument(
        "--device-key",
        action="append",
        default=[],
        metavar="DEVICE=KEYFILE",
        help="also check this device's MACs (key file 0600); repeatable",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NOTE",
        help="a signed checkpoint obtained elsewhere (the retained MQTT copy, an older export):"
        " forks, replayed old views and unproven consistency are reported; repeatable",
    )
    p.add_argument(
        "--proof",
        action="append",
        default=[],
        metavar="JSON",
        help="`sealink evidence prove|consistency --json` output to verify; repeatable",
    )
    p.add_argument(
        "--require-checkpoint",
        action="store_true",
        help="fail unless a signed checkpoint covers the export (from --with-checkpoint or "
        "--checkpoint): without one, a tail cut off the export cannot be told from its end",
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="an export that starts after counter 1 (--since) is not a failure",
    )


def run(args: argparse.Namespace) -> int:
    """0: verified and complete; 1: something failed to verify; 2: an input is unusable;
    3: verified, with operator-declared gaps."""
    try:
        return _verify(args)
    except VerifyInputError as exc:
        print(f"sealink verify: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE


def _verify(args: argparse.Namespace) -> int:
    device_keys: dict[str, bytes] = {}
    for spec in args.device_key:
        device, sep, path = spec.partition("=")
        if not sep or not device or not path:
            raise VerifyInputError(f"--device-key {spec!r}: expected DEVICE=KEYFILE")
        device_keys[device] = read_device_key(path)
    if args.export is None and not (args.proof or args.checkpoint):
        raise VerifyInputError("nothing to verify: give an EXPORT, --proof or --checkpoint")
    if args.export is not None and args.seal_keys is None:
        raise VerifyInputError(
            "an export needs --seal-keys: without the seals' public keys nothing shows that a "
            "record is the seal's and not the gateway operator's"
        )
    seal_keys = read_seal_keys(args.seal_keys) if args.seal_keys else {}
    history = read_key_history(args.key_history) if args.key_history else None
    audits: list[DeviceAudit] = []
    trailer = None
    evidence = EvidenceAudit()
    try:
        public_pem = Path(args.public_key).read_bytes()
        derive_kid(public_pem)
        if args.export is None:
            keys = _walk(public_pem, history, evidence)
        else:
            with open(args.export, encoding="utf-8") as export:
                progress = _Progress(args.export, os.fstat(export.fileno()).st_size)
                audits, trailer, keys = read_export(
                    progress.lines(export),
                    public_pem,
                    seal_keys,
                    device_keys,
                    args.allow_partial,
                    history,
                )
        for path in args.proof:
            try:
                check_proof(load_proof(Path(path).read_text(encoding="utf-8")), keys, evidence)
            except ValueError as exc:  # not JSON
                evidence.problems.append(f"{path}: not a proof: {exc}")
        notes = [Path(path).read_text(encoding="utf-8") for path in args.checkpoint]
        check_checkpoints(audits, trailer, notes, keys, evidence)
        if args.require_checkpoint and trailer is None and not notes:
            evidence.problems.append(
                "no signed checkpoint covers this export (--require-checkpoint): export with "
                "`sealink events export --with-checkpoint` or pass --checkpoint NOTE"
            )
    except OSError as exc:
        raise VerifyInputError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except ValueError as exc:
        raise VerifyInputError(f"{args.public_key}: not a PEM public key ({exc})") from None
    for audit in audits:
        sys.stdout.write(json.dumps(audit.summary(), sort_keys=True) + "\n")
        for problem in audit.problems:
            print(f"sealink verify: {problem}", file=sys.stderr)
        for gap in audit.gaps:
            print(f"sealink verify: warning: {_gap_warning(audit, gap)}", file=sys.stderr)
    used = trailer is not None or args.proof or args.checkpoint or args.require_checkpoint
    if used:
        sys.stdout.write(json.dumps({"evidence": evidence.summary()}, sort_keys=True) + "\n")
        for problem in evidence.problems:
            print(f"sealink verify: {problem}", file=sys.stderr)
        for warning in evidence.warnings:
            print(f"sealink verify: warning: {warning}", file=sys.stderr)
    if args.export is None:
        return EXIT_FAILED if evidence.problems else EXIT_VERIFIED
    return _outcome(audits, evidence.problems)


def _gap_warning(audit: DeviceAudit, gap: GapStatement) -> str:
    when = datetime.datetime.fromtimestamp(gap.adopted_ms / 1000, datetime.UTC)
    return (
        f"{audit.device}: counters {gap.first}..{gap.last} have no record: declared lost by "
        f"operator {gap.operator!r} at {when.isoformat(timespec='seconds')} ({gap.note!r}); "
        f"the gateway signed that statement, the seal's records for them are gone"
    )


def _outcome(audits: list[DeviceAudit], evidence_problems: list[str]) -> int:
    # Problems of the export as a whole (its key history, a malformed line) are filed under
    # the device "?": not a device.
    devices = sum(1 for a in audits if a.device != "?")
    kinds: dict[str, int] = {}
    for audit in audits:
        for kind, n in audit.kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
    summary = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    events = f"{sum(a.events for a in audits)} events of {devices} devices"
    if summary:
        events += f" ({summary})"
    gaps = sum(len(a.gaps) for a in audits)
    if not audits or evidence_problems or any(audit.problems for audit in audits):
        print(f"sealink verify: {events}, FAILED", file=sys.stderr)
        return EXIT_FAILED
    if gaps:
        print(
            f"sealink verify: {events} verified, with {gaps} operator-declared gap(s): "
            "complete only as far as the operator's word goes",
            file=sys.stderr,
        )
        return EXIT_GAPS
    print(f"sealink verify: {events}, all verified", file=sys.stderr)
    return EXIT_VERIFIED


def register(sub: Any) -> None:
    """Add `verify` to the `sealink` command line (entry point group `sealink.commands`)."""
    help_ = "auditor's offline check of `events export` output"
    p: argparse.ArgumentParser = sub.add_parser(
        "verify",
        help=help_,
        description=help_,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(fn=run)


def _bundle_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sealink-verify bundle",
        description="check one impression's evidence bundle offline (SPEC §14.5)",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", metavar="FILE", help="written by `sealink evidence bundle`")
    p.add_argument(
        "--gateway-key",
        metavar="PEM",
        help="the gateway's public key obtained elsewhere (`sealink keys show --format pem`); "
        "without it the bundle's own key is used, and the exit status is 4, not 0",
    )
    p.add_argument(
        "--seal-key",
        metavar="HEX",
        help="the seal's chip public key (128 hex digits: X || Y) from its provisioning; "
        "without it the bundle's own key is used, and the exit status is 4, not 0",
    )
    p.add_argument(
        "--witness-key",
        action="append",
        default=[],
        metavar="NAME=HEX",
        help="a witness that must have cosigned the checkpoint, and its Ed25519 public key "
        "(64 hex digits, as `sealink witness init` prints it); repeatable",
    )
    p.add_argument("--json", action="store_true", help="every check, the problems, the facts")
    return p


def _witness_keys(given: list[str]) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for item in given:
        name, _, key = item.rpartition("=")
        try:
            raw = bytes.fromhex(key)
        except ValueError:
            raw = b""
        if not name or len(raw) != 32:
            raise VerifyInputError(f"--witness-key {item!r}: expected NAME=64 hex digits")
        if name in keys:
            raise VerifyInputError(f"--witness-key: {name} given twice")
        keys[name] = raw
    return keys


def _usable(read: Callable[[], _T]) -> _T | None:
    """What `read()` returns, or None after saying on stderr why an input is unusable."""
    try:
        return read()
    except OSError as exc:
        print(f"sealink-verify: error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
    except VerifyInputError as exc:
        print(f"sealink-verify: error: {exc}", file=sys.stderr)
    return None


def _bundle_inputs(
    args: argparse.Namespace,
) -> tuple[Bundle, bytes | None, bytes | None, dict[str, bytes]]:
    gateway_key = seal_key = None
    witness_keys = _witness_keys(args.witness_key)
    if args.gateway_key is not None:
        try:
            gateway_key = ed25519_raw(Path(args.gateway_key).read_bytes())
        except ValueError as exc:
            raise VerifyInputError(f"{args.gateway_key}: {exc}") from None
    if args.seal_key is not None:
        try:
            seal_key = bytes.fromhex(args.seal_key)
            seal_public_key(seal_key)
        except ValueError as exc:
            raise VerifyInputError(f"--seal-key: not a seal key, X || Y ({exc})") from None
    return _read_bundle(args.bundle), gateway_key, seal_key, witness_keys


def _read_bundle(path: str) -> Bundle:
    try:
        return read_bundle(Path(path).read_text(encoding="utf-8"))
    except (BundleError, UnicodeDecodeError) as exc:
        raise VerifyInputError(f"{path}: {exc}") from None


def run_bundle(args: argparse.Namespace) -> int:
    """0: verified with pinned keys; 4: verified with a key from the bundle only; 1: a check
    failed; 2: an input is unusable."""
    inputs = _usable(lambda: _bundle_inputs(args))
    if inputs is None:
        return EXIT_UNUSABLE
    report = verify_bundle(*inputs)
    if args.json:
        sys.stdout.write(json.dumps(report.to_json(), sort_keys=True) + "\n")
    else:
        sys.stdout.write(report.text())
    if not report.ok:
        return EXIT_FAILED
    return EXIT_VERIFIED if report.pinned else EXIT_UNPINNED


def _receipt_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sealink-verify receipt",
        description="check a record's COSE Receipt of inclusion offline (RFC 9942, SPEC §14.8)",
        epilog="exit status: 0 verified under the pinned key, 1 a check failed, 2 unusable",
    )
    p.add_argument(
        "receipt",
        nargs="?",
        metavar="FILE",
        help="written by `sealink evidence receipt` (default: the --bundle's own receipt)",
    )
    leaf = p.add_mutually_exclusive_group(required=True)
    leaf.add_argument("--leaf-data", metavar="HEX", help="the leaf's data (SPEC §14.1), hex")
    leaf.add_argument(
        "--bundle",
        metavar="FILE",
        help="the record's evidence bundle: its leaf is computed from the record and "
        "countersignature, its key history walked from --gateway-key",
    )
    p.add_argument(
        "--gateway-key",
        required=True,
        metavar="PEM",
        help="the gateway's (first) public key obtained elsewhere (`sealink keys show`)",
    )
    p.add_argument("--json", action="store_true", help="every check, the problems, the facts")
    return p


def _receipt_inputs(args: argparse.Namespace) -> tuple[bytes, bytes, bytes | Bundle]:
    try:
        pinned = ed25519_raw(Path(args.gateway_key).read_bytes())
    except ValueError as exc:
        raise VerifyInputError(f"{args.gateway_key}: {exc}") from None
    leaf: bytes | Bundle
    if args.bundle is not None:
        leaf = _read_bundle(args.bundle)
    else:
        try:
            leaf = bytes.fromhex(args.leaf_data)
        except ValueError:
            raise VerifyInputError("--leaf-data: not hex") from None
    if args.receipt is not None:
        receipt = Path(args.receipt).read_bytes()
    elif isinstance(leaf, Bundle) and leaf.receipt is not None:
        receipt = leaf.receipt
    else:
        raise VerifyInputError("no receipt: give FILE, or a --bundle that carries one")
    return receipt, pinned, leaf


def run_receipt(args: argparse.Namespace) -> int:
    """0: verified under the pinned key; 1: a check failed; 2: an input is unusable."""
    inputs = _usable(lambda: _receipt_inputs(args))
    if inputs is None:
        return EXIT_UNUSABLE
    report = verify_receipt(*inputs)
    if args.json:
        sys.stdout.write(json.dumps(report.to_json(), sort_keys=True) + "\n")
    else:
        sys.stdout.write(report.text())
    return EXIT_VERIFIED if report.ok else EXIT_FAILED


def _signed_message_parser(command: str, description: str) -> argparse.ArgumentParser:
    """The arguments every check of one signed MQTT message takes."""
    p = argparse.ArgumentParser(
        prog=f"sealink-verify {command}",
        description=description,
        epilog="exit status: 0 verified (printed as JSON), 1 it does not verify (the failed "
        "check is named), 2 an input is unusable",
    )
    p.add_argument("payload", metavar="FILE", help="the message's payload bytes; - for stdin")
    p.add_argument("--topic", required=True, help="the topic the message was delivered on")
    return p


def _run_signed(
    read: Callable[[], _T], check: Callable[[_T], _M], show: Callable[[_M], Any]
) -> int:
    """0: `check` verified what `read` gave (`show` of it printed); 1: it does not verify;
    2: an input is unusable."""
    inputs = _usable(read)
    if inputs is None:
        return EXIT_UNUSABLE
    try:
        message = check(inputs)
    except MessageError as exc:
        print(f"sealink-verify: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(json.dumps(show(message), sort_keys=True) + "\n")
    return EXIT_VERIFIED


def _message_parser() -> argparse.ArgumentParser:
    p = _signed_message_parser(
        "message",
        "check one signed MQTT status or alarm of a gateway (SPEC §11.4) and print its JSON body",
    )
    p.add_argument(
        "--gateway-key",
        action="append",
        required=True,
        metavar="ID=PEM",
        help="a gateway id and a file with its public key (`sealink keys show --format pem`); "
        "repeatable, also for each key of a rotated gateway",
    )
    p.add_argument("--json", action="store_true", help="the signed fields too, as one object")
    return p


def _gateway_keys(given: list[str]) -> dict[str, list[bytes]]:
    keys: dict[str, list[bytes]] = {}
    for item in given:
        gateway, sep, path = item.partition("=")
        if not gateway or not sep or not path:
            raise VerifyInputError(f"--gateway-key {item!r}: expected ID=PEM-FILE")
        try:
            raw = ed25519_raw(Path(path).read_bytes())
        except ValueError as exc:
            raise VerifyInputError(f"{path}: {exc}") from None
        keys.setdefault(gateway, []).append(raw)
    return keys


def _payload(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def run_message(args: argparse.Namespace) -> int:
    """0: verified; 1: it does not verify; 2: an input is unusable."""

    def show(message: SignedMessage) -> Any:
        if not args.json:
            return message.body
        return {
            "topic": message.topic,
            "gateway": message.gateway,
            "seq": message.seq,
            "time_ms": message.time_ms,
            "kid": message.kid.hex(),
            "body": message.body,
        }

    return _run_signed(
        lambda: (_gateway_keys(args.gateway_key), _payload(args.payload)),
        lambda inputs: verify_message(args.topic, inputs[1], inputs[0]),
        show,
    )


def _registry_parser() -> argparse.ArgumentParser:
    return _fleet_message_parser(
        "registry",
        "check one fleet registry message (SPEC §11.6: a seal's state as the fleet signed it) "
        "and print it as JSON",
    )


def _approver_parser() -> argparse.ArgumentParser:
    return _fleet_message_parser(
        "approver",
        "check one fleet approver message (SPEC §11.7: an approver key as the fleet issued or "
        "revoked it) and print it as JSON",
    )


def _fleet_message_parser(command: str, description: str) -> argparse.ArgumentParser:
    p = _signed_message_parser(command, description)
    p.add_argument(
        "--fleet-key",
        required=True,
        metavar="HEX",
        help="the fleet's registry public key (`sealink fleet keys init` prints it)",
    )
    return p


def _fleet_key(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise VerifyInputError("--fleet-key: expected 64 hex digits (a raw Ed25519 public key)")
    return raw


def run_registry(args: argparse.Namespace) -> int:
    """0: verified; 1: it does not verify; 2: an input is unusable."""
    return _run_signed(
        lambda: (_fleet_key(args.fleet_key), _payload(args.payload)),
        lambda inputs: verify_registry_message(args.topic, inputs[1], inputs[0]),
        lambda message: {**dataclasses.asdict(message), "seal_key": message.seal_key.hex()},
    )


def run_approver(args: argparse.Namespace) -> int:
    """0: verified; 1: it does not verify; 2: an input is unusable."""
    return _run_signed(
        lambda: (_fleet_key(args.fleet_key), _payload(args.payload)),
        lambda inputs: verify_approver_message(args.topic, inputs[1], inputs[0]),
        lambda message: {
            **dataclasses.asdict(message),
            "public_key": message.public_key.hex(),
            "actions": list(message.actions),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["message"]:
        return run_message(_message_parser().parse_args(argv[1:]))
    if argv[:1] == ["bundle"]:
        return run_bundle(_bundle_parser().parse_args(argv[1:]))
    if argv[:1] == ["receipt"]:
        return run_receipt(_receipt_parser().parse_args(argv[1:]))
    if argv[:1] == ["registry"]:
        return run_registry(_registry_parser().parse_args(argv[1:]))
    if argv[:1] == ["approver"]:
        return run_approver(_approver_parser().parse_args(argv[1:]))
    parser = argparse.ArgumentParser(
        prog="sealink-verify",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
