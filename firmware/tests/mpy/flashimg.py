# flashimg: littlefs images for firmware tests, on the emulated board's own block device.
# Each test gets a fresh image file; remount() is what a reboot does to the flash.
import os
import vfs

# The emulated board's own block device: the tests cut power exactly where the board would.
from flashdev import BLOCK_SIZE, FileBlockDevice, filesystem, mkfs

_MOUNT = "/t"


_CHUNK = 512


def blank(path, blocks=64):
    chunk = b"\xff" * _CHUNK
    with open(path, "wb") as f:
        for _ in range(blocks * BLOCK_SIZE // _CHUNK):
            f.write(chunk)


def fresh(path, blocks=64):
    blank(path, blocks)
    dev = FileBlockDevice(path)
    mkfs(dev)
    dev.close()
    return mount(path)


def mount(path, cut_at=0, tear=False):
    try:
        vfs.umount(_MOUNT)
    except OSError:
        pass
    dev = FileBlockDevice(path, cut_at, tear=tear)
    vfs.mount(filesystem(dev), _MOUNT)
    return dev


def copy(src, dst):
    buf = bytearray(_CHUNK)
    with open(src, "rb") as a, open(dst, "wb") as b:
        while True:
            n = a.readinto(buf)
            if not n:
                break
            b.write(memoryview(buf)[:n])


def root():
    return _MOUNT + "/journal"


def tmpdir():
    return os.getenv("SEAL_TMP") or "/tmp"
