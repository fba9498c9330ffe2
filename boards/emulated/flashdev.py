# flashdev.py: the emulated board's flash, a littlefs block device on an image file.
# It counts block writes and can lose power after write N (the power-cut tests).
import vfs
from micropython import const

# 4096 = the erase sector of the ESP32's and the RP2040's NOR flash, which their MicroPython
# ports give littlefs as block size; 256 = their flash's page, littlefs's program size on the
# RP2040 (the port's _boot.py) and on this project's ESP32 build (boards/esp32/_boot.py). The
# emulator then sees the boards' littlefs write pattern.
BLOCK_SIZE = const(4096)
PROG_SIZE = const(256)
_IOCTL_BLOCK_COUNT = const(4)
_IOCTL_BLOCK_SIZE = const(5)
_IOCTL_ERASE = const(6)
_EIO = const(5)
# 64 erased bytes, written 64 times per erase. A literal, not b"\xff" * 64: a bytes constant
# stays in the code's flash (ROMFS); a computed one would be built in the 64 KB heap.
_ERASED = (
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
)


class FileBlockDevice:
    # littlefs's extended block protocol. Every program and every erase is one "block write".
    # Write number `cut_at` reaches the image, then the device is dead: `on_cut` runs and
    # every later write fails with EIO and is NOT applied, so the image file holds exactly
    # writes 1..cut_at, as after the power went. With `tear`, write cut_at lands only in part
    # (its first half), as when NOR flash loses power in the middle of a program.
    def __init__(self, path, cut_at=0, on_cut=None, on_write=None, tear=False):
        # Open as long as the board runs, as its flash is.
        self._f = open(path, "r+b")  # noqa: SIM115
        self.block_count = self._f.seek(0, 2) // BLOCK_SIZE
        self.writes = 0
        # Of the writes, the erases (what wears a block out and costs a NOR flash most time)
        # and the bytes programmed.
        self.erases = 0
        self.programmed = 0
        self.cut_at = cut_at
        self.dead = False
        self._on_cut = on_cut
        self._on_write = on_write
        self._tear = tear

    def readblocks(self, block, buf, offset=0):
        self._f.seek(block * BLOCK_SIZE + offset)
        self._f.readinto(buf)

    def _write(self, pos, data, repeat):
        if self.dead:
            return -_EIO
        self._f.seek(pos)
        if self._tear and self.writes + 1 == self.cut_at:
            repeat = (repeat + 1) // 2
            if repeat == 1:
                data = memoryview(data)[: (len(data) + 1) // 2]
        for _ in range(repeat):
            self._f.write(data)
        self.writes += 1
        if self._on_write:
            self._on_write(self.writes)
        if self.writes == self.cut_at:
            self.dead = True
            if self._on_cut:
                self._on_cut(self.writes)
        return 0

    def writeblocks(self, block, buf, offset=0):
        self.programmed += len(buf)
        return self._write(block * BLOCK_SIZE + offset, buf, 1)

    def ioctl(self, op, arg):
        if op == _IOCTL_BLOCK_COUNT:
            return self.block_count
        if op == _IOCTL_BLOCK_SIZE:
            return BLOCK_SIZE
        if op == _IOCTL_ERASE:
            # NOR flash erases to 0xFF. An erase is one write: the power may go right after it.
            self.erases += 1
            return self._write(arg * BLOCK_SIZE, _ERASED, BLOCK_SIZE // len(_ERASED))
        return 0

    def close(self):
        self._f.close()


def mkfs(dev):
    vfs.VfsLfs2.mkfs(dev, progsize=PROG_SIZE)


def filesystem(dev):
    return vfs.VfsLfs2(dev, progsize=PROG_SIZE)
