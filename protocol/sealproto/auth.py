# sealproto.auth: HMAC-SHA256, the session key, the record hash chain and the digest the seal's
# chip signs (SPEC §4.1, §4.2).
# Built on hashlib.sha256 alone: MicroPython has no hmac module.
import hashlib

from sealproto import cbor, codec
from sealproto.errors import DecodeError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# The numbers of sealproto.errors and .messages as private consts: no name table on a device.
_MAC = const(9)
_REPLAY = const(10)
_EV_SIG = const(9)
_EN_SIG = const(3)
_STORED = const(13)
_SD_DEVICE = const(1)
_SD_COUNTER = const(2)
_SD_HEAD = const(3)
_K_SEQ = const(14)
_K_MAC = const(15)
_NONCE_LEN = const(16)
_BLOCK = const(64)
# The HMAC pads as integers: one big-int XOR makes a padded key in C, not in a Python loop
_IPAD = int.from_bytes(b"\x36" * 64, "big")
_OPAD = int.from_bytes(b"\x5c" * 64, "big")
_SESSION_LABEL = b"sealink/session/v1"

GENESIS = bytes(32)


def hmac_sha256(key, data):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    padded = int.from_bytes(key, "big") << (8 * (_BLOCK - len(key)))
    inner = hashlib.sha256((padded ^ _IPAD).to_bytes(_BLOCK, "big"))
    inner.update(data)
    outer = hashlib.sha256((padded ^ _OPAD).to_bytes(_BLOCK, "big"))
    outer.update(inner.digest())
    return outer.digest()


def equal(a, b):
    # Constant time for equal lengths; a length is never secret here.
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def sign(msg, key):
    body = dict(msg)
    body.pop(_K_MAC, None)
    msg[_K_MAC] = hmac_sha256(key, codec.encode(body))
    return msg


def verify(msg, key):
    mac = msg.get(_K_MAC)
    if not isinstance(mac, bytes):
        raise DecodeError(_MAC, "no MAC")
    body = dict(msg)
    del body[_K_MAC]
    if not equal(hmac_sha256(key, codec.encode(body)), mac):
        raise DecodeError(_MAC, "MAC does not verify")


def accept(msg, key, last_seq):
    # A session message counts only if its MAC verifies and its seq moves forward (SPEC §4.2);
    # MAC first, so a message from another session reports MAC, a repeat in this one REPLAY.
    verify(msg, key)
    seq = msg.get(_K_SEQ)
    if not isinstance(seq, int) or seq <= last_seq:
        raise DecodeError(_REPLAY, "seq " + str(seq) + " not after " + str(last_seq))
    return seq


def session_key(device_key, device_nonce, host_nonce):
    if len(device_nonce) != _NONCE_LEN or len(host_nonce) != _NONCE_LEN:
        raise ValueError("nonces must be 16 bytes")
    return hmac_sha256(device_key, _SESSION_LABEL + bytes(device_nonce) + bytes(host_nonce))


def record_hash(payload):
    return hashlib.sha256(payload).digest()


def seal_digest(event):
    # What the seal's chip signs (SPEC §4.1): the record without its signature and MAC. ECDSA
    # itself is not here: the seal's chip computes it, hosts and verifiers check it with
    # their own crypto libraries.
    body = dict(event)
    body.pop(_EV_SIG, None)
    body.pop(_K_MAC, None)
    return hashlib.sha256(cbor.dumps(body)).digest()


def enrolment_digest(msg):
    # What the enrolment authority signs (SPEC §5.11): the ENROL message without its signature,
    # seq and MAC. Its device key binds the certificate to one seal.
    body = dict(msg)
    body.pop(_EN_SIG, None)
    body.pop(_K_SEQ, None)
    body.pop(_K_MAC, None)
    return hashlib.sha256(cbor.dumps(body)).digest()


def stored_digest(device, counter, head):
    # What a gateway signs when it acknowledges (SPEC §5.11): that it durably stored the seal's
    # records up to `counter`, the last of them hashing to `head`.
    msg = {0: _STORED, _SD_DEVICE: device, _SD_COUNTER: counter, _SD_HEAD: head}
    return hashlib.sha256(cbor.dumps(msg)).digest()
