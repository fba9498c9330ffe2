"""Provision a seal: a fresh 32-byte device key, written as the board's /seal.json.

    python tools/provision.py seal-0001 --out keys/seal-0001.json          # local file
    python tools/provision.py seal-0001 --out keys/seal-0001.json --port /dev/ttyUSB0

The file is {"device_id": ..., "key": "<64 hex>"}, mode 0600 from its creation; with --port it is
also copied to the board as /seal.json (mpremote). The same file is the host half: the command
to register the seal with the gateway is printed. The key itself is never printed or logged.
An existing file is never overwritten (a new key would orphan the device's registration).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

KEY_BYTES = 32
# SPEC §8: device_id is 1..32 bytes of [A-Za-z0-9._-].
DEVICE_ID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
DEFAULT_HOST_CONFIG = "/etc/sealink/sealink.toml"


class ProvisionError(Exception):
    pass


def write_seal_json(path: Path, device_id: str, key: bytes) -> None:
    if not DEVICE_ID.match(device_id):
        raise ProvisionError(f"device id {device_id!r}: 1..32 characters of A-Z a-z 0-9 . _ -")
    if len(key) != KEY_BYTES:
        raise ProvisionError(f"key must be {KEY_BYTES} bytes")
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"device_id": device_id, "key": key.hex()}) + "\n"
    # O_EXCL + mode at creation: the key is never readable by others, not even for an instant.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ProvisionError(f"{path} exists: refusing to replace a device key") from None
    with os.fdopen(fd, "w") as f:
        f.write(body)
    os.chmod(path, 0o600)


def mpremote_command(port: str, seal_json: Path) -> list[str]:
    local = Path(sys.executable).parent / "mpremote"
    tool = str(local) if local.exists() else (shutil.which("mpremote") or "mpremote")
    return [tool, "connect", port, "fs", "cp", str(seal_json), ":/seal.json"]


def host_command(device_id: str, seal_json: Path, host_config: str) -> str:
    return shlex.join(
        [
            "sealink",
            "devices",
            "add",
            device_id,
            "--key-file",
            str(seal_json),
            "--config",
            host_config,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device_id", help="1..32 characters of A-Z a-z 0-9 . _ -")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="where to write seal.json (0600; also the host's key file)",
    )
    parser.add_argument("--port", help="also copy it to the board on this serial port")
    parser.add_argument(
        "--host-config",
        default=DEFAULT_HOST_CONFIG,
        help="gateway config for the printed registration command",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="with --port: print the mpremote command instead of running it",
    )
    args = parser.parse_args(argv)
    try:
        write_seal_json(args.out, args.device_id, secrets.token_bytes(KEY_BYTES))
    except ProvisionError as e:
        print(f"provision: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} (mode 0600)")
    if args.port:
        cmd = mpremote_command(args.port, args.out)
        print(shlex.join(cmd))
        if not args.dry_run:
            rc = subprocess.run(cmd).returncode
            if rc != 0:
                print(f"provision: mpremote failed ({rc}); {args.out} is kept", file=sys.stderr)
                return rc
    print("register it with the gateway:")
    print("  " + host_command(args.device_id, args.out, args.host_config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
