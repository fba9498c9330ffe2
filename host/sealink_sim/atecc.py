"""A model of the ATECC608 security chip at the I2C command level, for the emulated board.

The firmware's own driver (firmware/seal/atecc.py) talks to it byte for byte as to the chip:

    model = ChipModel(workdir / "chip.state", latency="typical")
    model.write(0x60, b"\\x03" + packet) -> bool (ACK)    model.read(0x60, n) -> bytes | None (NACK)
    thread = serve(sock, model)   # the emulated board's bus (boards/emulated/i2cbus.py) on a socket

Modelled as the chip does it (CryptoAuthLib calib_command.h / calib_execution.c, the ATECC608A
data sheets):
- Wake: a write to address 0x00 (SDA held low) wakes a sleeping or idle chip, which answers
  04 11 33 43 after tWHI (1.5 ms). Asleep or idle it NACKs everything else. Word addresses:
  0x00 reset (rewinds the response buffer), 0x01 sleep, 0x02 idle, 0x03 command.
- Watchdog: 1.3 s after the wake the chip goes to sleep on its own. Sleep loses TempKey; idle
  keeps it and stops the watchdog. A command that might outlast the watchdog (its maximum time
  past the time left) is not run: status 0xEE.
- Packets: count, opcode, param1, param2 (LE), data, CRC-16 (polynomial 0x8005, atCRC's bit
  order, LE). A bad CRC or a count that does not match the bytes written: status 0xFF, nothing
  run. An unknown opcode, mode, parameter or data length: 0x03 (parse error).
- Busy: the chip NACKs its address until the command's execution time has passed on the wall
  clock: the typical time (latency="typical"), the maximum ("max") or none ("none", for tests).
- Commands: Info revision (00 00 60 02, an ATECC608A); Random (32 bytes); Nonce pass-through
  (32 bytes into TempKey); GenKey private (mode 0x04: a new P-256 key, public key X||Y out)
  and public (mode 0x00); Sign external (mode 0x80, TempKey, raw R||S) and Verify external
  (mode 0x02, key type P-256 = param2 0x0004, data R||S||X||Y; 0x01 on a miscompare), both
  consuming TempKey and refusing (0x0F) without a pass-through TempKey; Counter read and
  increment (counters 0 and 1, up to 2,097,151, then 0x0F); Lock of one slot (mode 0x02, slot
  in bits 2..5), after which GenKey on that slot fails with 0x0F.

Simplified:
- The configuration and data zones count as locked at the factory, with one configuration:
  slot 0 is the P-256 private key slot (GenKey, Sign) and no other slot holds a key (key
  commands on slots 1..15 fail with 0x0F). No Read/Write/config zone, no encrypted I/O, no
  other Nonce modes, no message digest buffer, no SHA, ECDH, AES or MAC commands.
- Errors come back at once; a success costs the whole execution time.
- A bad public key given to Verify (not on the curve) gives 0x0F.

The chip's non-volatile memory (private keys, counters, slot locks, serial number) is the file
`state_path`, created mode 0600 and written atomically (temp file, fsync, rename) before the
response to any command that changes it; it never enters the board's flash image.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "ADDRESS",
    "COUNTER_MAX",
    "EXECUTION_MS",
    "ChipModel",
    "Device",
    "Latency",
    "crc16",
    "public_key_of",
    "serve",
]

Latency = Literal["typical", "max", "none"]

ADDRESS = 0x60
COUNTER_MAX = 2097151  # calib_command.h COUNTER_MAX_VALUE
WATCHDOG_S = 1.3  # tWATCHDOG, typical
WAKE_S = 0.0015  # tWHI: CryptoAuthLib's default wake_delay (1500 us)
WAKE_RESPONSE = bytes((0x04, 0x11, 0x33, 0x43))
REVISION = bytes((0x00, 0x00, 0x60, 0x02))

_INFO = 0x30
_RANDOM = 0x1B
_NONCE = 0x16
_GENKEY = 0x40
_SIGN = 0x41
_VERIFY = 0x45
_COUNTER = 0x24
_LOCK = 0x17

_OK = 0x00
_MISCOMPARE = 0x01
_PARSE = 0x03
_EXECUTION = 0x0F
_WATCHDOG = 0xEE
_BAD_CRC = 0xFF

# (typical, max) ms. Max: CryptoAuthLib calib_execution.c device_execution_time_608_m0.
# Typical: the 608 column of Zerynth's ateccx08a driver table (the 608's complete data sheet,
# its source, is under NDA). The same figures as firmware/seal/atecc.py.
EXECUTION_MS: dict[int, tuple[int, int]] = {
    _INFO: (1, 5),
    _RANDOM: (15, 23),
    _NONCE: (17, 20),
    _GENKEY: (59, 115),
    _SIGN: (60, 115),
    _VERIFY: (27, 105),
    _COUNTER: (1, 25),
    _LOCK: (15, 35),
}

_KEY_SLOTS = frozenset({0})


def crc16(data: bytes | bytearray | memoryview) -> bytes:
    """CryptoAuthLib's atCRC: polynomial 0x8005, data bits LSB first, result little-endian."""
    crc = 0
    for byte in bytes(data):
        for bit in range(8):
            feedback = ((byte >> bit) ^ (crc >> 15)) & 1
            crc = (crc << 1) & 0xFFFF
            if feedback:
                crc ^= 0x8005
    return crc.to_bytes(2, "little")


def _response(payload: bytes) -> bytes:
    body = bytes((len(payload) + 3,)) + payload
    return body + crc16(body)


class _State:
    """The chip's non-volatile memory, kept in one file."""

    serial: bytes
    keys: dict[int, int]  # slot -> private scalar
    locked: set[int]
    counters: list[int]

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            data = json.loads(path.read_text())
            self.serial = bytes.fromhex(data["serial"])
            self.keys = {int(k): int(v, 16) for k, v in data["keys"].items()}
            self.locked = set(data["locked"])
            self.counters = list(data["counters"])
        else:
            # 9 bytes, 01 23 .. EE as the chip's serial number: unique per state file.
            self.serial = b"\x01\x23" + secrets.token_bytes(6) + b"\xee"
            self.keys = {}
            self.locked = set()
            self.counters = [0, 0]
            self.save()

    def save(self) -> None:
        data = {
            "serial": self.serial.hex(),
            "keys": {str(k): f"{v:064x}" for k, v in sorted(self.keys.items())},
            "locked": sorted(self.locked),
            "counters": self.counters,
        }
        tmp = self.path.with_name(self.path.name + ".new")
        # Owner-only from the first byte: the file holds private keys.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def private_key(self, slot: int) -> ec.EllipticCurvePrivateKey:
        return ec.derive_private_key(self.keys[slot], ec.SECP256R1())


def public_xy(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The public key as the chip reads it out: X || Y, 32 bytes each, big-endian."""
    numbers = key.public_key().public_numbers()
    return numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")


def raw_sign(key: ec.EllipticCurvePrivateKey, digest: bytes, deterministic: bool = False) -> bytes:
    """ECDSA P-256 of a 32-byte digest as the chip's Sign returns it: r || s, 32 bytes each.
    The chip draws k at random; `deterministic` (RFC 6979) gives reproducible bytes."""
    algorithm = ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=deterministic)
    r, s = decode_dss_signature(key.sign(digest, algorithm))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def public_key_of(state_path: str | os.PathLike[str], slot: int = 0) -> bytes | None:
    """The 64-byte public key (X||Y) of `slot` in a chip state file, or None if it has none."""
    path = Path(state_path)
    if not path.exists():
        return None
    state = _State(path)
    return public_xy(state.private_key(slot)) if slot in state.keys else None


class ChipModel:
    """One ATECC608 on the bus; see the module docstring. Thread-safe."""

    def __init__(
        self,
        state_path: str | os.PathLike[str],
        latency: Latency = "typical",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if latency not in ("typical", "max", "none"):
            raise ValueError(f"latency must be typical, max or none, not {latency!r}")
        self.latency = latency
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _State(Path(state_path))
        self._mode: Literal["sleep", "idle", "awake"] = "sleep"
        self._awake_at = 0.0
        self._busy_until = 0.0
        self._output = b""
        self._pointer = 0
        self._tempkey: bytes | None = None
        self._running: int | None = None  # the opcode executing, until its response is read
        # What the bus saw, for tests: reads NACKed while a command executed, and the last
        # commands as (opcode, status), status 0 for a response with data too.
        self.busy_nacks = 0
        self.commands: deque[tuple[int, int]] = deque(maxlen=256)

    @property
    def serial(self) -> bytes:
        return self._state.serial

    @property
    def awake(self) -> bool:
        with self._lock:
            self._tick()
            return self._mode == "awake"

    def _tick(self) -> None:
        if self._mode == "awake" and self._clock() - self._awake_at >= WATCHDOG_S:
            self._to_sleep()

    def _to_sleep(self) -> None:
        self._mode = "sleep"
        self._tempkey = None
        self._output = b""

    def _delay_s(self, opcode: int) -> float:
        if self.latency == "none":
            return 0.0
        typ, most = EXECUTION_MS[opcode]
        return (typ if self.latency == "typical" else most) / 1000

    # --- the bus ---------------------------------------------------------------------------

    def write(self, addr: int, data: bytes) -> bool:
        with self._lock:
            self._tick()
            if addr == 0:
                self._wake()
                return False  # nobody answers at address 0x00
            if addr != ADDRESS or not self._listening() or not data:
                return False
            word = data[0]
            if word == 0x00:
                self._pointer = 0
            elif word == 0x01:
                self._to_sleep()
            elif word == 0x02:
                self._mode = "idle"
            elif word == 0x03:
                self._command(data[1:])
            else:
                return False
            return True

    def read(self, addr: int, n: int) -> bytes | None:
        with self._lock:
            self._tick()
            if addr != ADDRESS:
                return None
            if self._mode == "awake" and self._clock() < self._busy_until:
                if self._running is not None:
                    self.busy_nacks += 1
                return None
            if not self._listening():
                return None
            out = self._output[self._pointer : self._pointer + n]
            self._pointer += n
            # Past the end of the response the chip clocks out 0xFF.
            return out + b"\xff" * (n - len(out))

    def _listening(self) -> bool:
        return self._mode == "awake" and self._clock() >= self._busy_until

    def _wake(self) -> None:
        if self._mode == "awake":
            return
        # From sleep TempKey is gone already; idle kept it.
        self._mode = "awake"
        now = self._clock()
        self._awake_at = now
        self._busy_until = now + (WAKE_S if self.latency != "none" else 0.0)
        self._running = None
        self._output = WAKE_RESPONSE
        self._pointer = 0

    # --- commands --------------------------------------------------------------------------

    def _command(self, packet: bytes) -> None:
        self._pointer = 0
        if len(packet) < 7 or packet[0] != len(packet) or crc16(packet[:-2]) != packet[-2:]:
            self._status(0, _BAD_CRC)
            return
        opcode, param1 = packet[1], packet[2]
        param2 = int.from_bytes(packet[3:5], "little")
        data = packet[5:-2]
        if opcode not in EXECUTION_MS:
            self._status(opcode, _PARSE)
            return
        left_s = WATCHDOG_S - (self._clock() - self._awake_at)
        if left_s < EXECUTION_MS[opcode][1] / 1000:
            self._status(opcode, _WATCHDOG)
            return
        handler = {
            _INFO: self._info,
            _RANDOM: self._random,
            _NONCE: self._nonce,
            _GENKEY: self._genkey,
            _SIGN: self._sign,
            _VERIFY: self._verify,
            _COUNTER: self._counter,
            _LOCK: self._lock_slot,
        }[opcode]
        result = handler(param1, param2, data)
        if isinstance(result, int):
            self._status(opcode, result)
            return
        self.commands.append((opcode, _OK))
        self._output = _response(result)
        self._run_for(opcode)

    def _status(self, opcode: int, status: int) -> None:
        self.commands.append((opcode, status))
        self._output = _response(bytes((status,)))
        # A success costs the execution time; a refusal comes back at once (simplified).
        if status in (_OK, _MISCOMPARE):
            self._run_for(opcode)
        else:
            self._running = None

    def _run_for(self, opcode: int) -> None:
        self._running = opcode
        self._busy_until = self._clock() + self._delay_s(opcode)

    def _info(self, mode: int, param2: int, data: bytes) -> bytes | int:
        if mode != 0x00 or param2 != 0 or data:
            return _PARSE
        return REVISION

    def _random(self, mode: int, param2: int, data: bytes) -> bytes | int:
        if mode not in (0x00, 0x01) or param2 != 0 or data:
            return _PARSE
        return secrets.token_bytes(32)

    def _nonce(self, mode: int, param2: int, data: bytes) -> bytes | int:
        # Pass-through only: mode 0x03, TempKey target (bits 6-7 zero), 32 bytes (bit 5 zero).
        if mode != 0x03 or param2 != 0 or len(data) != 32:
            return _PARSE
        self._tempkey = data
        return _OK

    def _key_slot(self, slot: int) -> int | None:
        if slot > 15:
            return _PARSE
        if slot not in _KEY_SLOTS:
            return _EXECUTION
        return None

    def _genkey(self, mode: int, slot: int, data: bytes) -> bytes | int:
        if mode not in (0x00, 0x04) or data:
            return _PARSE
        refused = self._key_slot(slot)
        if refused is not None:
            return refused
        state = self._state
        if mode == 0x04:
            if slot in state.locked:
                return _EXECUTION
            key = ec.generate_private_key(ec.SECP256R1())
            state.keys[slot] = key.private_numbers().private_value
            state.save()
            return public_xy(key)
        if slot not in state.keys:
            return _EXECUTION
        return public_xy(state.private_key(slot))

    def _take_tempkey(self) -> bytes | None:
        # Sign and Verify consume TempKey, valid or not.
        tempkey, self._tempkey = self._tempkey, None
        return tempkey

    def _sign(self, mode: int, slot: int, data: bytes) -> bytes | int:
        if mode != 0x80 or data:
            return _PARSE
        refused = self._key_slot(slot)
        if refused is not None:
            return refused
        digest = self._take_tempkey()
        if digest is None or slot not in self._state.keys:
            return _EXECUTION
        return raw_sign(self._state.private_key(slot), digest)

    def _verify(self, mode: int, key_type: int, data: bytes) -> bytes | int:
        if mode != 0x02 or key_type != 0x0004 or len(data) != 128:
            return _PARSE
        digest = self._take_tempkey()
        if digest is None:
            return _EXECUTION
        r = int.from_bytes(data[0:32], "big")
        s = int.from_bytes(data[32:64], "big")
        try:
            public = ec.EllipticCurvePublicNumbers(
                int.from_bytes(data[64:96], "big"),
                int.from_bytes(data[96:128], "big"),
                ec.SECP256R1(),
            ).public_key()
        except ValueError:
            return _EXECUTION
        try:
            public.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        except InvalidSignature:
            return _MISCOMPARE
        return _OK

    def _counter(self, mode: int, which: int, data: bytes) -> bytes | int:
        if mode not in (0x00, 0x01) or which not in (0, 1) or data:
            return _PARSE
        state = self._state
        if mode == 0x01:
            if state.counters[which] >= COUNTER_MAX:
                return _EXECUTION
            state.counters[which] += 1
            # On "disk" before the response: the chip's EEPROM write is part of the command.
            state.save()
        return state.counters[which].to_bytes(4, "little")

    def _lock_slot(self, mode: int, summary: int, data: bytes) -> bytes | int:
        # Zone bits 0-1: 0b00 config, 0b01 data (both locked at the factory here), 0b10 one
        # slot (number in bits 2-5); bit 7 = ignore the summary CRC (never checked here).
        zone = mode & 0x03
        if zone == 0x03 or mode & 0x40 or data:
            return _PARSE
        if zone != 0x02:
            return _EXECUTION
        slot = (mode >> 2) & 0x0F
        if slot not in _KEY_SLOTS or slot in self._state.locked or slot not in self._state.keys:
            return _EXECUTION
        self._state.locked.add(slot)
        self._state.save()
        return _OK


class Device(Protocol):
    """What sits on the emulated bus: ChipModel, or a test's wrapper around it."""

    def write(self, addr: int, data: bytes) -> bool: ...

    def read(self, addr: int, n: int) -> bytes | None: ...


def serve(sock: socket.socket, device: Device, name: str = "chip-bus") -> threading.Thread:
    """Serve boards/emulated/i2cbus.py's protocol on `sock` for `device`, in a daemon thread.

    Ends when the board closes its end (or dies): the thread closes `sock`.
    """
    thread = threading.Thread(target=_serve, args=(sock, device), daemon=True, name=name)
    thread.start()
    return thread


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _serve(sock: socket.socket, chip: Device) -> None:
    with contextlib.suppress(OSError), sock:
        while True:
            head = _recv_exact(sock, 3)
            if head is None:
                return
            op, addr, n = head
            if op == 0x57:  # "W"
                data = _recv_exact(sock, n) if n else b""
                if data is None:
                    return
                sock.sendall(b"\x01" if chip.write(addr, data) else b"\x00")
            elif op == 0x52:  # "R"
                out = chip.read(addr, n)
                sock.sendall(b"\x00" if out is None else b"\x01" + out)
            else:
                return
