"""Provision a seal: a fresh 32-byte link key, written as the board's /seal.json, and the seal
key made inside the board's security chip.

    python tools/provision.py seal-0001 --out keys/seal-0001.json          # local file
    python tools/provision.py seal-0001 --out keys/seal-0001.json --port /dev/ttyUSB0
    python tools/provision.py seal-0001 --out keys/seal-0001.json --port /dev/ttyUSB0 --chip

The file is {"device_id": ..., "key": "<64 hex>"}, mode 0600 from its creation; with --port it is
also copied to the board as /seal.json (mpremote). With --chip (the firmware already on the
board) the board's ATECC608 generates the seal key inside (seal.atecc.provision, once: the slot
is locked after) and only its public key comes back; it is added to the file as "seal_key".
The same file is the host half: the command to register the seal with the gateway is printed;
it copies the link key into the gateway's key store (`[gateway] link_keys`, 0600), never into
the ledger. The link key itself is never printed or logged. An existing file is never
overwritten (a new key would orphan the device's registration).
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


def _mpremote(port: str) -> list[str]:
    local = Path(sys.executable).parent / "mpremote"
    tool = str(local) if local.exists() else (shutil.which("mpremote") or "mpremote")
    return [tool, "connect", port]


def mpremote_command(port: str, seal_json: Path) -> list[str]:
    return [*_mpremote(port), "fs", "cp", str(seal_json), ":/seal.json"]


# Run on the board over its REPL (before a field build removes it): the firmware's own driver.
CHIP_PROVISION = (
    "import hal; from seal.chipsetup import provision; "
    "print('@pubkey', provision(hal.chip(), 0).hex())"
)
SEAL_KEY_HEX = 128


def chip_command(port: str) -> list[str]:
    return [*_mpremote(port), "exec", CHIP_PROVISION]


def add_seal_key(path: Path, output: str) -> str:
    """The public key the board printed, added to the 0600 host-half file; the key's hex."""
    found = [line.split()[1] for line in output.splitlines() if line.startswith("@pubkey ")]
    if len(found) != 1 or len(found[0]) != SEAL_KEY_HEX:
        raise ProvisionError(f"the board printed no seal key: {output.strip()[-200:]!r}")
    conf = json.loads(path.read_text())
    conf["seal_key"] = found[0]
    path.write_text(json.dumps(conf) + "\n")
    return str(found[0])


def enrol_commands(device_id: str, host_config: str) -> list[str]:
    cert = f"{device_id}.cert"
    certify = ["sealink", "authority", "certify", "--key", "AUTHORITY.key", "--device"]
    return [
        shlex.join([*certify, device_id, "--gateway-key", "ACK_KEY_HEX", "--out", cert]),
        shlex.join(["sealink", "devices", "enrol", device_id, cert, "--config", host_config]),
    ]


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
        "--chip",
        action="store_true",
        help="with --port: make the seal key inside the board's chip, record its public key",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="with --port: print the mpremote command instead of running it",
    )
    args = parser.parse_args(argv)
    if args.chip and not args.port:
        parser.error("--chip needs --port: the chip is on the board")
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
        if args.chip:
            cmd = chip_command(args.port)
            print(shlex.join(cmd))
            if not args.dry_run:
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                try:
                    seal_key = add_seal_key(args.out, done.stdout + done.stderr)
                except ProvisionError as e:
                    print(f"provision: {e}; {args.out} is kept", file=sys.stderr)
                    return 1
                print(f"seal key (the chip's public key): {seal_key}")
    print("register it with the gateway (the link key goes to its key store, 0600):")
    print("  " + host_command(args.device_id, args.out, args.host_config))
    print("then enrol it (SPEC §5.11): the authority certifies the gateway's `ack_key`")
    print("(`sealink keys show`), the gateway keeps the certificate:")
    for line in enrol_commands(args.device_id, args.host_config):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
