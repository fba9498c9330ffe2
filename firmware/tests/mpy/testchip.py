# The security chip for firmware unit tests. A chip cannot exist under the unix port, and
# MicroPython has no ECDSA; these tests check what the firmware does around the chip (where
# the signature goes, what a chip fault does), not the signature itself: the real driver
# (seal/atecc.py) against the chip model, and real signatures, are tested in
# firmware/tests/test_atecc.py. Like the chip's Sign command, this writes 64 bytes for a
# 32-byte digest into the caller's buffer; `fail` makes it raise as a chip that NACKs, and
# `fail_counting` makes only its counter commands fail. Its two monotonic counters stop at
# 2,097,151, as the chip's do; a test that reboots keeps its TestChip, as a seal keeps its chip.
#
# Verify (enrolment certificates, the gateway's signed acknowledgements, SPEC §5.11) takes the
# same stand-in: a "public key" is any 64 bytes, and `test_sign(public, digest)` is the only
# signature under it that verifies, so a test can sign as the authority or a gateway and an
# impostor's signature is refused.
import hashlib

from sealproto import auth

_LABEL = b"sealink test chip"
_VERIFY_LABEL = b"sealink test signer"
AUTHORITY = b"A" * 64
GATEWAY = b"G" * 64
COUNTER_MAX = 2097151


class TestChip:
    def __init__(self, counters=(0, 0)):
        self.signed = 0
        self.verified = 0
        self.fail = False
        self.fail_counting = False
        self.counters = list(counters)

    def counter(self, n):
        if self.fail or self.fail_counting:
            raise OSError(19)
        return self.counters[n]

    def increment_counter(self, n):
        if self.fail or self.fail_counting:
            raise OSError(19)
        if self.counters[n] >= COUNTER_MAX:
            raise OSError(5)  # the chip refuses (status 0x0F): no wrap
        self.counters[n] += 1
        return self.counters[n]

    def sign_digest(self, slot, digest, out):
        if self.fail:
            raise OSError(19)  # ENODEV: the chip does not answer its address
        if slot != 0 or len(digest) != 32 or len(out) != 64:
            raise ValueError("sign_digest(0, digest32, out64)")
        half = hashlib.sha256(_LABEL + digest).digest()
        out[:32] = half
        out[32:] = hashlib.sha256(half).digest()
        self.signed += 1

    def verify_digest(self, digest, signature, public_key):
        if self.fail:
            raise OSError(19)
        if len(digest) != 32 or len(signature) != 64 or len(public_key) != 64:
            raise ValueError("verify_digest(digest32, signature64, public64)")
        self.verified += 1
        return signature == test_sign(public_key, digest)


def signature_of(digest):
    half = hashlib.sha256(_LABEL + digest).digest()
    return half + hashlib.sha256(half).digest()


def test_sign(public, digest):
    half = hashlib.sha256(_VERIFY_LABEL + public + digest).digest()
    return half + hashlib.sha256(half).digest()


def certificate(device, serial=1, gateway=GATEWAY, authority=AUTHORITY):
    # An ENROL message (without seq and MAC) as the authority holding `authority` signs it.
    msg = {0: 12, 1: serial, 2: gateway, 3: b"", 4: device}
    msg[3] = test_sign(authority, auth.enrolment_digest(msg))
    return msg


def stored_proof(device, counter, head, gateway=GATEWAY):
    # The gateway's signature that it stored records 1..counter, the last hashing to head.
    return test_sign(gateway, auth.stored_digest(device, counter, head))
