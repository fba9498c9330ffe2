# The security chip for firmware unit tests. A chip cannot exist under the unix port, and
# MicroPython has no ECDSA; these tests check what the firmware does around the chip (where
# the signature goes, what a chip fault does), not the signature itself: the real driver
# (seal/atecc.py) against the chip model, and real signatures, are tested in
# firmware/tests/test_atecc.py. Like the chip's Sign command, this writes 64 bytes for a
# 32-byte digest into the caller's buffer; `fail` makes it raise as a chip that NACKs.
import hashlib

_LABEL = b"sealink test chip"


class TestChip:
    def __init__(self):
        self.signed = 0
        self.fail = False

    def sign_digest(self, slot, digest, out):
        if self.fail:
            raise OSError(19)  # ENODEV: the chip does not answer its address
        if slot != 0 or len(digest) != 32 or len(out) != 64:
            raise ValueError("sign_digest(0, digest32, out64)")
        half = hashlib.sha256(_LABEL + digest).digest()
        out[:32] = half
        out[32:] = hashlib.sha256(half).digest()
        self.signed += 1


def signature_of(digest):
    half = hashlib.sha256(_LABEL + digest).digest()
    return half + hashlib.sha256(half).digest()
