# i2cbus.py for the emulated board: machine.I2C's writeto/readfrom_into over a byte stream to
# the launcher, which plays the devices on the bus (sealink_sim.atecc serves the security chip).
# The security chip's secrets live on the launcher's side, never in the flash image.
#
# Each transfer is one request and its answer, so the stream is never out of step:
#   write: ["W"][7-bit address][n][n bytes]  ->  [1 = ACK | 0 = NACK]
#   read:  ["R"][7-bit address][n]           ->  [1][n bytes] | [0]
# A NACK of the address raises OSError(ENODEV), as machine.I2C does on the ESP32.
import os
from micropython import const

_ENV_I2C_FD = const("SEAL_I2C_FD")
_WRITE = const(0x57)  # "W"
_READ = const(0x52)  # "R"
_ENODEV = const(19)


class I2C:
    def __init__(self):
        # The launcher's socket, blocking: a transfer waits for the device, as a bus does.
        self._bus = open(int(os.getenv(_ENV_I2C_FD)), "r+b")  # noqa: SIM115
        self._head = bytearray(3)
        self._ack = bytearray(1)

    def _request(self, op, addr, n):
        head = self._head
        head[0] = op
        head[1] = addr
        head[2] = n
        self._bus.write(head)

    def _acked(self):
        if self._bus.readinto(self._ack) != 1:
            raise OSError(_ENODEV)
        return self._ack[0] == 1

    def writeto(self, addr, buf, stop=True):
        n = len(buf)
        if n > 255:
            raise ValueError("i2cbus: at most 255 bytes a transfer")
        self._request(_WRITE, addr, n)
        if n:
            self._bus.write(buf)
        if not self._acked():
            raise OSError(_ENODEV)
        # machine.I2C.writeto returns the number of bytes the device ACKed.
        return n

    def readfrom_into(self, addr, buf, stop=True):
        n = len(buf)
        self._request(_READ, addr, n)
        if not self._acked():
            raise OSError(_ENODEV)
        got = self._bus.readinto(buf)
        if got != n:
            # A socket may deliver the answer in parts: only then a view is made.
            view = memoryview(buf)
            while got < n:
                more = self._bus.readinto(view[got:])
                if not more:
                    raise OSError(_ENODEV)
                got += more
