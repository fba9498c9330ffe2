"""The seals' link keys (SPEC §4.2): one 0600 file of their own, never the ledger.

    {"keys": {"seal-0001": "<64 hex>", ...}, "version": 1}

The ledger travels (backups, exports, a copy for an auditor); this file stays on the gateway
host, beside the gateway key. A file that group or others may read is refused, as the gateway
key is. Every change rewrites the whole file: a temporary file in the same folder, created
0600, fsynced, renamed over the old one, the folder fsynced, so a crash leaves the old keys or
the new ones, never a mix. Writers hold an exclusive lock on `<file>.lock` from their read to
their rename, so two `sealink devices add` at once both keep their key. Keys never leave this
module in printable form: reprs name the file and count the keys, errors name devices only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from sealink.crypto.signer import check_private_file
from sealink.errors import KeyFileError

__all__ = ["LINK_KEY_LEN", "LinkKeyStore", "LinkKeys"]

LINK_KEY_LEN = 32
_VERSION = 1
_WHAT = "link key store"


class LinkKeys(Mapping[str, bytes]):
    """The keys of one read of the store: device -> key. repr() shows how many, not which."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._keys = dict(keys)

    def __getitem__(self, device: str) -> bytes:
        return self._keys[device]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"<LinkKeys of {len(self._keys)} devices>"


class LinkKeyStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"<LinkKeyStore {self.path}>"

    def load(self) -> LinkKeys:
        """Every key; none if the file does not exist yet (no seal registered)."""
        if not self.path.exists():
            return LinkKeys({})
        check_private_file(self.path, _WHAT)
        try:
            text = self.path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{_WHAT} {self.path}: cannot read ({exc.strerror})") from None
        return LinkKeys(self._parse(text))

    def get(self, device: str) -> bytes | None:
        return self.load().get(device)

    def put(self, device: str, key: bytes) -> None:
        self.update({device: key})

    def update(self, keys: Mapping[str, bytes]) -> None:
        """Add or replace these devices' keys, keeping every other device's."""
        for device, key in keys.items():
            if len(key) != LINK_KEY_LEN:
                raise KeyFileError(
                    f"{_WHAT} {self.path}: the key of {device} is {len(key)} bytes, "
                    f"expected {LINK_KEY_LEN}"
                )
        with self._locked():
            merged = {**self.load(), **keys}
            self._replace(merged)

    # the file ------------------------------------------------------------------------------

    def _parse(self, text: bytes) -> dict[str, bytes]:
        bad = KeyFileError(
            f'{_WHAT} {self.path}: expected {{"keys": {{DEVICE: "<64 hex>", ...}}, '
            f'"version": {_VERSION}}}'
        )
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise bad from None
        if not isinstance(doc, dict) or doc.get("version") != _VERSION:
            raise bad
        entries = doc.get("keys")
        if not isinstance(entries, dict):
            raise bad
        keys: dict[str, bytes] = {}
        for device, value in entries.items():
            try:
                key = bytes.fromhex(value)
            except (TypeError, ValueError):
                key = b""
            if len(key) != LINK_KEY_LEN:
                raise KeyFileError(
                    f"{_WHAT} {self.path}: the key of {device} is not {2 * LINK_KEY_LEN} hex digits"
                )
            keys[device] = key
        return keys

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeyFileError(
                f"{_WHAT} {self.path}: cannot lock {lock} ({exc.strerror})"
            ) from None
        try:
            # Held for one read-modify-rename: milliseconds. The kernel drops it if the holder
            # dies, so a crashed writer never blocks the next.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _replace(self, keys: Mapping[str, bytes]) -> None:
        """Write the whole file anew and rename it over the old one (the lock is held)."""
        body = json.dumps(
            {"keys": {device: key.hex() for device, key in keys.items()}, "version": _VERSION},
            indent=1,
            sort_keys=True,
        ).encode()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            # A leftover is a writer that died before its rename; only lock holders write it.
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as out:
                    os.fchmod(out.fileno(), 0o600)
                    out.write(body + b"\n")
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise KeyFileError(f"{_WHAT} {self.path}: cannot write ({exc.strerror})") from None


def _fsync_dir(folder: Path) -> None:
    """The rename is durable once the folder's entry is on disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
