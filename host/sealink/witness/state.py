"""What a witness remembers of each gateway: the last checkpoint it cosigned, one JSON file per
origin, replaced atomically (temporary file, fsync, rename, fsync of the directory) BEFORE the
cosignature leaves, so that a crash at any point never lets it cosign two inconsistent
checkpoints. Refusals keep their evidence (both signed notes, the proof) in evidence/.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from sealink.errors import SealinkError
from sealink.files import write_durably

__all__ = ["Cosigned", "StateDir"]


@dataclass(frozen=True)
class Cosigned:
    """The last checkpoint a witness stands behind: cosigned (note and line set), or the
    trust anchor of its config (note None), not yet cosigned."""

    size: int
    root: bytes
    time_ms: int = 0
    note: str | None = None
    line: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "size": self.size,
            "root": self.root.hex(),
            "time_ms": self.time_ms,
            "note": self.note,
            "line": self.line,
        }

    @classmethod
    def from_json(cls, body: dict[str, object]) -> Cosigned:
        size, root, time_ms = body["size"], body["root"], body["time_ms"]
        note, line = body.get("note"), body.get("line")
        if not (
            isinstance(size, int)
            and isinstance(root, str)
            and isinstance(time_ms, int)
            and isinstance(note, str | None)
            and isinstance(line, str | None)
        ):
            raise ValueError("misshapen")
        return cls(size, bytes.fromhex(root), time_ms, note, line)


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            (path / "evidence").mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SealinkError(f"witness state {path}: cannot create ({exc.strerror})") from None

    def _file(self, origin: str) -> Path:
        return self.path / (origin.replace("/", "_") + ".json")

    def load(self, origin: str) -> Cosigned | None:
        path = self._file(origin)
        try:
            return Cosigned.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Never guess: a witness that forgot what it cosigned could cosign a fork.
            raise SealinkError(
                f"witness state {path} is unreadable ({exc}): fix or restore it"
            ) from None

    def save(self, origin: str, cosigned: Cosigned) -> None:
        text = json.dumps(cosigned.to_json(), sort_keys=True) + "\n"
        write_durably(self._file(origin), text.encode())

    def keep_evidence(self, origin: str, reason: str, files: dict[str, str]) -> Path:
        """A new folder evidence/<origin>-<reason>-<unix ms> holding `files` (name -> text)."""
        stamp = time.time_ns() // 1_000_000
        folder = self.path / "evidence" / f"{origin.replace('/', '_')}-{reason}-{stamp}"
        suffix = 0
        while folder.exists():
            suffix += 1
            folder = folder.with_name(f"{folder.name.rsplit('.', 1)[0]}.{suffix}")
        folder.mkdir(mode=0o700)
        for name, text in files.items():
            write_durably(folder / name, text.encode())
        return folder
