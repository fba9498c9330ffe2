"""Copy a board's .mpy build to a real board with mpremote, then reset it.

    python -m tools.deploy esp32 --port /dev/ttyUSB0            # or python tools/deploy.py ...
    python -m tools.deploy rp2 --port /dev/ttyACM0 --dry-run    # print the plan, touch nothing
    python -m tools.deploy rp2 --port /dev/ttyACM0 --romfs      # code in the ROMFS partition

Builds first (tools/build.py) unless --no-build. The key is not part of the build: provision
the board once with tools/provision.py. Needs MicroPython 1.23+ on the board (.mpy v6).
With --romfs the modules go into the board's ROMFS partition (`mpremote romfs deploy`,
MicroPython 1.25+ with such a partition) and run in place from flash, taking no RAM; only
main.py is copied to the filesystem.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as `python tools/deploy.py`: Python put tools/ on sys.path; the checkout, above it,
    # makes `tools` a package.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from tools import build
from tools.build import ROOT

DEVICE_BOARDS = ("esp32", "rp2")


def mpremote() -> str:
    local = Path(sys.executable).parent / "mpremote"
    return str(local) if local.exists() else (shutil.which("mpremote") or "mpremote")


def command(port: str, build_dir: Path, romfs: bool = False) -> list[str]:
    """The mpremote command line, run with build_dir as working directory."""
    entries = sorted(p.name for p in build_dir.iterdir() if p.name != build.ROMFS_IMAGE)
    if "main.py" not in entries:
        raise SystemExit(f"deploy: {build_dir} has no main.py; run tools/build.py first")
    if romfs:
        if not (build_dir / build.ROMFS_IMAGE).exists():
            raise SystemExit(f"deploy: {build_dir} has no {build.ROMFS_IMAGE}; build with --romfs")
        # The image replaces the partition's contents; main.py runs from the filesystem.
        return [
            mpremote(),
            "connect",
            port,
            "romfs",
            "deploy",
            build.ROMFS_IMAGE,
            "+",
            "fs",
            "cp",
            "main.py",
            ":main.py",
            "+",
            "reset",
        ]
    # `cp -r` recreates seal/ and sealproto/ on the board; `+ reset` starts the new firmware.
    return [mpremote(), "connect", port, "fs", "cp", "-r", *entries, ":", "+", "reset"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("board", choices=DEVICE_BOARDS)
    parser.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    parser.add_argument("--build-dir", type=Path, help="default build/<board>")
    parser.add_argument("--no-build", action="store_true", help="deploy the existing build")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--romfs", action="store_true", help="modules into the ROMFS partition")
    args = parser.parse_args(argv)
    build_dir = args.build_dir or ROOT / "build" / args.board
    if not args.no_build:
        try:
            build.build(args.board, build_dir, romfs=args.romfs)
        except build.BuildError as e:
            print(f"deploy: {e}", file=sys.stderr)
            return 1
    cmd = command(args.port, build_dir, romfs=args.romfs)
    for path in sorted(p for p in build_dir.rglob("*") if p.is_file()):
        print(f"{path.stat().st_size:7d}  {path.relative_to(build_dir)}")
    print(f"cd {shlex.quote(str(build_dir))} && {shlex.join(cmd)}")
    if args.dry_run:
        return 0
    return subprocess.run(cmd, cwd=build_dir).returncode


if __name__ == "__main__":
    sys.exit(main())
