# The emulated board's `bluetooth` stand-in (boards/emulated/bluetooth.py): how it reads the
# frames its radio bridge (sealink_sim.air) sends, at the edges of its receive buffer.
import bluetooth
from mpyunit import equal

_FREED = ord("f")
_IGNORED = ord("z")  # a kind the stand-in does not know: read past, as any future one


def test_a_freed_frame_ending_the_receive_buffer_is_read():
    # Found by `tools/bench.py ble`'s long drain: the two-byte `f` frame was read as if it
    # carried a connection handle, one byte past the buffer when it ended it.
    ble = bluetooth._BLE(None)
    rx = ble._rx
    size = len(rx)
    filler = size - 4 - 2
    rx[0] = filler & 0xFF
    rx[1] = filler >> 8
    rx[2] = _IGNORED
    rx[size - 4 : size] = bytes((2, 0, _FREED, 3))
    ble._rxn = size
    ble._free = 0
    ble._pump()
    equal(ble._free, 3)
    equal(ble._rxn, 0)
