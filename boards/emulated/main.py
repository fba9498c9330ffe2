# main.py for the emulated board: sealink_sim.emulator runs it under `micropython` with the
# firmware as a ROMFS image (tools/build.py --romfs) in memory outside the MicroPython heap.
import os
import sys

# A device with a ROMFS partition imports its code in place from memory-mapped flash (frozen
# code does the same), so bytecode takes no RAM. The launcher emulates that flash: it maps the
# image at SEAL_ROM = "address:size" in its own process, and this mounts it as the port does.
# Without it (a plain `micropython main.py`) the .mpy beside this file load into the heap.
_rom = os.getenv("SEAL_ROM")
if _rom:
    import uctypes
    import vfs

    _addr, _size = _rom.split(":")
    vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(_addr), int(_size))), "/rom")
    # Only the flash: the script's own folder (sys.path[0]) holds the same modules as files.
    sys.path[0] = "/rom"
    del _addr, _size, uctypes, vfs
del _rom

# Only now: the firmware must come from the flash just mounted.
import seal.app  # noqa: E402

seal.app.run()
