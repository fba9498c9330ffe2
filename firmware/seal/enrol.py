# The gateway this seal is enrolled with (SPEC §5.11). The enrolment authority (the organisation's
# key platform, never a gateway host) signs a certificate naming one gateway's P-256 key for this
# seal; the seal frees journal space only on an acknowledgement that key signed, checked by the
# security chip. The link key alone (which every gateway host and a copy of the seal's flash
# hold) can no longer make the seal delete a record.
#
# The certificate is kept in one file on flash. The flash is not trusted: the certificate is
# checked against the authority's key again at every load, so a file written by anyone else
# enrols nobody.
import binascii
import os
import struct
from micropython import const

from sealproto import auth

# Wire numbers of sealproto (SPEC §4, §7) as const: a name imported from there costs RAM.
# firmware/tests/test_wire_constants.py checks them against sealproto.
_ENROL = const(12)
_EN_DEVICE = const(4)
_EN_GATEWAY = const(2)
_EN_SERIAL = const(1)
_EN_SIG = const(3)
_K_TYPE = const(0)
_R_BAD_FIELD = const(1)
_R_BAD_SIGNATURE = const(6)
_R_BUSY = const(5)
_R_OK = const(0)
_SIG_LEN = const(64)

# serial u32 | gateway key (64 bytes, all zero: revoked) | authority signature | CRC-32.
_FILE_SIZE = const(136)
_NO_KEY = bytes(64)


class Enrolment:
    def __init__(self, path, device_id, authority, chip):
        self._path = path
        self._device_id = device_id
        # The authority's P-256 public key (X || Y), built into the firmware image; None: this
        # build trusts no authority, so nothing is ever enrolled and nothing compacted.
        self._authority = authority
        self._chip = chip
        self.serial = 0
        # The enrolled gateway's public key, None if none is (never enrolled, or revoked).
        self.gateway = None

    def load(self):
        # Raises OSError if the chip fails; a missing, torn or forged file enrols nobody.
        self.serial = 0
        self.gateway = None
        buf = bytearray(_FILE_SIZE)
        try:
            with open(self._path, "rb") as f:
                n = f.readinto(buf)
        except OSError:
            return
        crc = struct.unpack_from("<I", buf, _FILE_SIZE - 4)[0]
        if n != _FILE_SIZE or binascii.crc32(memoryview(buf)[: _FILE_SIZE - 4]) != crc:
            return
        serial = struct.unpack_from("<I", buf)[0]
        gateway = bytes(buf[4:68])
        msg = {_K_TYPE: _ENROL, _EN_SERIAL: serial,
               _EN_GATEWAY: b"" if gateway == _NO_KEY else gateway,
               _EN_SIG: bytes(buf[68:132]), _EN_DEVICE: self._device_id}
        if self._signed(msg):
            self.serial = serial
            self.gateway = msg[_EN_GATEWAY] or None

    def _signed(self, msg):
        authority = self._authority
        return authority is not None and self._chip.verify_digest(
            auth.enrolment_digest(msg), msg[_EN_SIG], authority)

    def command(self, kind, msg):
        # An ENROL from the link (session-authenticated already), as the guard takes the other
        # commands: the RESULT code. A newer certificate replaces the one held; the same one
        # again is OK (a resent command).
        gateway = msg[_EN_GATEWAY]
        serial = msg[_EN_SERIAL]
        if msg[_EN_DEVICE] != self._device_id or len(gateway) not in (0, _SIG_LEN):
            return _R_BAD_FIELD
        if serial < self.serial or (serial == self.serial and (gateway or None) != self.gateway):
            return _R_BAD_FIELD
        if serial == self.serial:
            return _R_OK
        try:
            if not self._signed(msg):
                return _R_BAD_SIGNATURE
            self._store(serial, gateway, msg[_EN_SIG])
        except OSError:
            return _R_BUSY
        self.serial = serial
        self.gateway = gateway or None
        return _R_OK

    def _store(self, serial, gateway, sig):
        buf = bytearray(_FILE_SIZE)
        struct.pack_into("<I", buf, 0, serial)
        if gateway:
            buf[4:68] = gateway
        buf[68:132] = sig
        crc = binascii.crc32(memoryview(buf)[: _FILE_SIZE - 4])
        struct.pack_into("<I", buf, _FILE_SIZE - 4, crc)
        tmp = self._path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(buf)
        # littlefs renames atomically: a cut leaves the old certificate or the new one.
        os.rename(tmp, self._path)

    def stored(self, counter, head, sig):
        # Did the enrolled gateway sign that it stored the records up to `counter` (head: the
        # hash of record `counter`)? Raises OSError if the chip fails.
        gateway = self.gateway
        if gateway is None or len(sig) != _SIG_LEN:
            return False
        return self._chip.verify_digest(auth.stored_digest(self._device_id, counter, head), sig,
                                        gateway)
