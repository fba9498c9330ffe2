# The security chip: an ATECC608 over I2C, driven with the chip's published command set (the
# opcodes, modes and sizes of CryptoAuthLib's calib_command.h, its I/O flow of calib_execution.c).
# The private key is made inside the chip and never leaves it; records are signed there. What
# only a provisioning station does (make the key, lock its slot) is in seal/chipsetup.py, which
# the firmware never imports: its code and RAM are not spent on every boot.
#
# One command group: wake() (the chip answers 04 11 33 43), commands, idle() (keeps TempKey and
# stops the ~1.3 s watchdog, which would put the chip to sleep and lose TempKey). A command is
#   [0x03 word address][count][opcode][param1][param2 LE16][data][CRC-16 LE]
# where count covers count..CRC; the response is [count][data][CRC-16 LE], 4 bytes for a status.
# The chip NACKs its address while it executes: poll until its maximum time. The buffers are
# made once here; signing a record allocates only views of them.
from micropython import const
from time import sleep_ms as _sleep_ms

_ADDRESS = const(0x60)  # default 7-bit address (0xC0 as CryptoAuthLib writes it, 8-bit)
# Word addresses, the first byte of every write (calib_basic.c: calib_idle, calib_sleep):
# 0x00 reset (the next read starts again at the response's count), 0x01 sleep, 0x02 idle (the
# one-byte writes below), 0x03 command.
_WA_COMMAND = const(0x03)

# Opcodes and modes (calib_command.h).
_NONCE = const(0x16)
_SIGN = const(0x41)
_VERIFY = const(0x45)
_COUNTER = const(0x24)
_NONCE_PASSTHROUGH = const(0x03)  # NONCE_MODE_PASSTHROUGH, 32 bytes into TempKey
_SIGN_EXTERNAL = const(0x80)  # SIGN_MODE_EXTERNAL, message from TempKey
_VERIFY_EXTERNAL = const(0x02)  # VERIFY_MODE_EXTERNAL, message from TempKey
_VERIFY_P256 = const(0x0004)  # VERIFY_KEY_P256 (param2)
_COUNTER_READ = const(0x00)
_COUNTER_INCREMENT = const(0x01)

# Status bytes of a 4-byte response (calib_command.h CMD_STATUS_*, isATCAError).
_OK = const(0x00)
_MISCOMPARE = const(0x01)  # Verify: the signature does not match
_WAKE = const(0x11)
_WATCHDOG = const(0xEE)  # the command could outlast the watchdog: it was not run
_BAD_CRC = const(0xFF)  # the chip received a corrupted command: it was not run

# Maximum execution times in ms: CryptoAuthLib calib_execution.c, device_execution_time_608_m0
# (the 608's default clock divider). The driver polls from the start, as CryptoAuthLib does
# (ATCA_POLLING_INIT_TIME_MSEC, then every ATCA_POLLING_FREQUENCY_TIME_MSEC): a command takes
# what the chip takes, and the chip's typical times live in its model (sealink_sim.atecc).
_NONCE_MAX_MS = const(20)
_SIGN_MAX_MS = const(115)
_VERIFY_MAX_MS = const(105)
_COUNTER_MAX_MS = const(25)
# tWHI: from the wake pulse until the chip listens (CryptoAuthLib's wake_delay, 1500 us).
_WAKE_MS = const(2)
_POLL_INIT_MS = const(1)  # ATCA_POLLING_INIT_TIME_MSEC
_POLL_MS = const(2)  # ATCA_POLLING_FREQUENCY_TIME_MSEC
# Bounded retries (CryptoAuthLib's rx_retries is 20; a bad bus needs few, a dead one none).
_RETRIES = const(3)

# Command sizes (count byte to CRC): bare, with a 32-byte digest, with signature + public key.
_CMD = const(7)
_CMD_DIGEST = const(39)
_CMD_VERIFY = const(135)


class ChipError(OSError):
    # args[0] is the chip's status byte; an OSError, so every fail-closed path that catches
    # OSError (the journal's, the recorder's) treats a chip failure as the I/O fault it is.
    pass


def _crc16(buf, start, end):
    # CRC-16, polynomial 0x8005, bits taken LSB first, register not reflected: atCRC of
    # calib_command.c. A loop, no table: 512 bytes of table would cost more RAM than time.
    crc = 0
    for i in range(start, end):
        b = buf[i]
        for _ in range(8):
            feedback = (b ^ (crc >> 15)) & 1
            crc = (crc << 1) & 0xFFFF
            if feedback:
                crc ^= 0x8005
            b >>= 1
    return crc


class Atecc608:
    def __init__(self, i2c, address=_ADDRESS, sleep_ms=_sleep_ms):
        self._i2c = i2c
        self._address = address
        self._sleep_ms = sleep_ms
        # Word address + the longest command (Verify).
        self._tx = bytearray(1 + _CMD_VERIFY)
        self._txv = memoryview(self._tx)
        # The longest response: 64 bytes of data (GenKey, Sign).
        self._rx = bytearray(67)
        self._rxv = memoryview(self._rx)

    # -- bus states

    def wake(self):
        # SDA held low >= 60 us (tWLO) wakes the chip: a write to address 0x00 at 100 kHz does
        # it with its 8 zero bits (80 us). Nobody answers there; the NACK is expected. The
        # answer is 04 11 and its CRC, 33 43.
        rx = self._rx
        for _ in range(_RETRIES):
            try:
                self._i2c.writeto(0, b"")
            except OSError:
                pass
            self._sleep_ms(_WAKE_MS)
            try:
                self._i2c.readfrom_into(self._address, self._rxv[:1])
                self._i2c.readfrom_into(self._address, self._rxv[1:4])
            except OSError:
                continue
            if rx[0] == 4 and rx[1] == _WAKE and rx[2] == 0x33 and rx[3] == 0x43:
                return
            # Awake already, an older response in its buffer: let it idle, then wake it.
            try:
                self.idle()
            except OSError:
                pass
        raise OSError("atecc: no wake response")

    def idle(self):
        self._i2c.writeto(self._address, b"\x02")

    def sleep(self):
        # Also clears TempKey and the chip's other volatile state.
        self._i2c.writeto(self._address, b"\x01")

    # -- commands: each wakes the chip first and lets it idle after

    def sign_digest(self, slot, digest, out):
        # R || S (32 bytes each, big-endian) of `digest` (32 bytes) into `out` (64 bytes).
        if len(out) != 64:
            raise ValueError("out")
        self.wake()
        try:
            self.nonce(digest)
            self.sign(slot, out)
        finally:
            self.idle()

    def verify_digest(self, digest, signature, public_key):
        # Lengths checked first: a slice assignment of another length would resize _tx.
        if len(signature) != 64 or len(public_key) != 64:
            raise ValueError("signature, public key")
        self.wake()
        try:
            self.nonce(digest)
            tx = self._tx
            tx[6:70] = signature
            tx[70:134] = public_key
            try:
                self._run(
                    _VERIFY,
                    _VERIFY_EXTERNAL,
                    _VERIFY_P256,
                    _CMD_VERIFY,
                    _VERIFY_MAX_MS,
                )
            except ChipError as e:
                if e.args[0] == _MISCOMPARE:
                    return False
                raise
            return True
        finally:
            self.idle()

    def counter(self, n):
        return self._counter(_COUNTER_READ, n)

    def increment_counter(self, n):
        # The new value. Past 2,097,151 (COUNTER_MAX_VALUE) the chip refuses: no wrap.
        return self._counter(_COUNTER_INCREMENT, n)

    # -- single commands, for use inside a wake() ... idle() group (seal/chipsetup.py adds the
    # provisioning station's)

    def nonce(self, digest):
        # Pass-through Nonce: the 32 bytes become TempKey, the message Sign and Verify use.
        if len(digest) != 32:
            raise ValueError("digest")
        self._tx[6:38] = digest
        self._run(_NONCE, _NONCE_PASSTHROUGH, 0, _CMD_DIGEST, _NONCE_MAX_MS)

    def sign(self, slot, out):
        # Signs TempKey (loaded by nonce() in this same group; the chip consumes it).
        self._run(_SIGN, _SIGN_EXTERNAL, slot, _CMD, _SIGN_MAX_MS)
        out[:] = self._rxv[1:65]

    def _counter(self, mode, n):
        self.wake()
        try:
            self._run(_COUNTER, mode, n, _CMD, _COUNTER_MAX_MS)
            rx = self._rx
            return rx[1] | rx[2] << 8 | rx[3] << 16 | rx[4] << 24
        finally:
            self.idle()

    # -- the I/O flow of calib_execute_command

    def _run(self, opcode, param1, param2, count, max_ms):
        # Sends the command in _tx (data already at _tx[6:]), waits, reads the response into
        # _rx; returns its count, or raises ChipError(status). Data, if any, is left in place,
        # so a command the chip did not run (bad CRC, watchdog) is sent again as it was.
        tx = self._tx
        tx[0] = _WA_COMMAND
        tx[1] = count
        tx[2] = opcode
        tx[3] = param1
        tx[4] = param2 & 0xFF
        tx[5] = param2 >> 8
        crc = _crc16(tx, 1, count - 1)
        tx[count - 1] = crc & 0xFF
        tx[count] = crc >> 8
        for _ in range(_RETRIES):
            self._i2c.writeto(self._address, self._txv[: 1 + count])
            self._sleep_ms(_POLL_INIT_MS)
            n = self._response(max_ms)
            if n == 4:
                status = self._rx[1]
                if status == _BAD_CRC:
                    continue
                if status == _WATCHDOG:
                    # Idle keeps TempKey and restarts the watchdog: the command runs in time.
                    self.idle()
                    self.wake()
                    continue
                if status != _OK:
                    raise ChipError(status)
            return n
        raise ChipError(_BAD_CRC)

    def _response(self, wait_ms):
        # The chip NACKs while busy: poll every _POLL_MS until its maximum time is up. A
        # response that fails its count or CRC is read again from the start of the chip's
        # buffer (word address 0x00): running the command again could count or sign twice.
        polls = wait_ms // _POLL_MS + 1
        rx = self._rx
        bad = 0
        while True:
            try:
                self._i2c.readfrom_into(self._address, self._rxv[:1])
            except OSError:
                if polls == 0:
                    break
                polls -= 1
                self._sleep_ms(_POLL_MS)
                continue
            n = rx[0]
            # The response sizes of the commands used: a status, 4 bytes of counter, 32 and
            # 64 bytes of data. A view per read: a few bytes of garbage, no RAM kept.
            if n == 4 or n == 7 or n == 35 or n == 67:
                self._i2c.readfrom_into(self._address, self._rxv[1:n])
                crc = _crc16(rx, 0, n - 2)
                if rx[n - 2] == crc & 0xFF and rx[n - 1] == crc >> 8:
                    return n
            bad += 1
            if bad >= _RETRIES:
                raise ChipError(_BAD_CRC)
            self._i2c.writeto(self._address, b"\x00")
        raise OSError("atecc: no response")

