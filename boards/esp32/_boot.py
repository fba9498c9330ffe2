# _boot.py of the ESP32 build, in place of the port's: littlefs on the "vfs" partition with a
# 256-byte program size, the page of the module's flash, as the RP2 port mounts its own. The
# port's default of 32 has littlefs program the journal's copy-on-write 128 bytes at a time,
# four times the flash writes (SPEC §10.1). A partition is formatted only while it is blank:
# one that holds a journal but does not mount is left alone, and the seal fails closed
# (JOURNAL_FAULT) instead of erasing its records.
import gc
import vfs

from flashbdev import bdev

_PROG_SIZE = 256
_SUPERBLOCKS = 2


def _blank():
    buf = bytearray(4096)
    for block in range(_SUPERBLOCKS):
        bdev.readblocks(block, buf)
        if buf.count(b"\xff") != len(buf):
            return False
    return True


try:
    vfs.mount(vfs.VfsLfs2(bdev, progsize=_PROG_SIZE), "/")
except OSError:
    if _blank():
        vfs.VfsLfs2.mkfs(bdev, progsize=_PROG_SIZE)
        vfs.mount(vfs.VfsLfs2(bdev, progsize=_PROG_SIZE), "/")
del _blank
gc.collect()
