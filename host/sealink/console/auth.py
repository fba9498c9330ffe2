"""Passwords (argon2id, argon2-cffi's defaults), the session secret, and failed-login throttling."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from sealink.console.config import ConsoleError
from sealink.console.store import Account, Store
from sealink.crypto.signer import check_private_file
from sealink.files import write_durably

__all__ = [
    "Throttle",
    "check_password",
    "hash_password",
    "load_secret",
    "make_secret",
    "random_token",
]

_HASHER = PasswordHasher()
_SECRET_BYTES = 32
_MIN_PASSWORD = 8
# A wrong password costs one argon2 check anyway; after this many in the window, the name is
# refused without a check until the window has passed.
_MAX_FAILURES = 5
_WINDOW_S = 300.0
# Checked when a name has no account, so that a refusal takes as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("sealink-console-no-such-account")


def hash_password(password: str) -> str:
    if len(password) < _MIN_PASSWORD:
        raise ConsoleError(f"a password has at least {_MIN_PASSWORD} characters")
    return _HASHER.hash(password)


def check_password(store: Store, account: Account | None, password: str) -> bool:
    """True if `account` exists, is enabled and `password` is its own; rehashes when
    argon2-cffi's parameters have grown since the hash was made."""
    if account is None:
        try:
            _HASHER.verify(_DUMMY_HASH, password)
        except VerificationError:
            pass
        return False
    try:
        _HASHER.verify(account.hash, password)
    except (VerificationError, InvalidHashError):
        return False
    if _HASHER.check_needs_rehash(account.hash):
        store.set_hash(account.name, _HASHER.hash(password))
    return not account.disabled


def make_secret(path: Path) -> None:
    """The session-cookie signing secret, 0600; never replaced (that would log everyone out
    and is `rm` then `init` when meant)."""
    try:
        write_durably(path, secrets.token_hex(_SECRET_BYTES).encode(), replace=False)
    except FileExistsError:
        raise ConsoleError(f"{path} exists already; the console keeps its secret") from None


def load_secret(path: Path) -> str:
    if not path.exists():
        raise ConsoleError(f"{path}: no secret key (make it with `sealink console init`)")
    try:
        check_private_file(path, "console secret key")
    except Exception as exc:
        raise ConsoleError(str(exc)) from None
    text = path.read_text(encoding="ascii").strip()
    if len(text) < 2 * _SECRET_BYTES:
        raise ConsoleError(f"{path}: not a console secret key")
    return text


class Throttle:
    """Failed logins per account name (and per client address): too many refuse the next."""

    def __init__(self) -> None:
        self._failures: dict[str, list[float]] = {}

    def _recent(self, key: str) -> list[float]:
        now = time.monotonic()
        kept = [t for t in self._failures.get(key, []) if now - t < _WINDOW_S]
        self._failures[key] = kept
        return kept

    def blocked(self, *keys: str) -> bool:
        return any(len(self._recent(k)) >= _MAX_FAILURES for k in keys)

    def failed(self, *keys: str) -> None:
        for key in keys:
            self._recent(key).append(time.monotonic())

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)


def random_token() -> str:
    return secrets.token_urlsafe(32)
