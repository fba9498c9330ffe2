# sealproto.cbor: deterministic CBOR for the subset of SPEC §3 (RFC 8949 §4.2.1).
# Subset: ints (64-bit), bytes, text, arrays, maps with keys 0..23, true, false, null; depth <= 4.
from sealproto.errors import DecodeError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# Reason codes of sealproto.errors as private consts: no name table on a device.
_CBOR = const(5)
_NONCANONICAL = const(6)

MAX_DEPTH = const(4)
_MAX_KEY = const(23)
_U64 = 0xFFFFFFFFFFFFFFFF


def dumps(obj):
    out = bytearray()
    _encode(out, obj, 1)
    return bytes(out)


def _put_head(out, major, value):
    m = major << 5
    if value < 24:
        out.append(m | value)
    elif value < 0x100:
        out.append(m | 24)
        out.append(value)
    elif value < 0x10000:
        out.append(m | 25)
        out.extend(value.to_bytes(2, "big"))
    elif value < 0x100000000:
        out.append(m | 26)
        out.extend(value.to_bytes(4, "big"))
    elif value <= _U64:
        out.append(m | 27)
        out.extend(value.to_bytes(8, "big"))
    else:
        raise ValueError("integer outside the 64-bit range")


def _encode(out, obj, depth):
    if obj is None:
        out.append(0xF6)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif isinstance(obj, int):
        if obj >= 0:
            _put_head(out, 0, obj)
        else:
            _put_head(out, 1, -1 - obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _put_head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        _put_head(out, 3, len(raw))
        out.extend(raw)
    elif isinstance(obj, (list, tuple)):
        if depth > MAX_DEPTH:
            raise ValueError("nesting deeper than 4")
        _put_head(out, 4, len(obj))
        for item in obj:
            _encode(out, item, depth + 1)
    elif isinstance(obj, dict):
        if depth > MAX_DEPTH:
            raise ValueError("nesting deeper than 4")
        keys = sorted(obj)
        for key in keys:
            if not isinstance(key, int) or key is True or key is False or not 0 <= key <= 23:
                raise ValueError("map keys must be integers 0..23")
        _put_head(out, 5, len(keys))
        for key in keys:
            out.append(key)
            _encode(out, obj[key], depth + 1)
    else:
        raise TypeError("not in the CBOR subset: " + type(obj).__name__)


def loads(data):
    value, end = _decode(data, 0, len(data), 1)
    if end != len(data):
        raise DecodeError(_CBOR, "trailing bytes")
    return value


def _read_head(data, i, n):
    # Returns (major type, argument, index after the head); data[i] is below 0xC0.
    if i >= n:
        raise DecodeError(_CBOR, "truncated")
    initial = data[i]
    major = initial >> 5
    info = initial & 0x1F
    i += 1
    if info < 24:
        return major, info, i
    if info == 31:
        if major >= 2:
            raise DecodeError(_NONCANONICAL, "indefinite length")
        raise DecodeError(_CBOR, "reserved head")
    if info > 27:
        raise DecodeError(_CBOR, "reserved head")
    size = 1 << (info - 24)
    if i + size > n:
        raise DecodeError(_CBOR, "truncated")
    value = 0
    for k in range(i, i + size):
        value = (value << 8) | data[k]
    # Shortest form: a value that fits the next smaller head must use it
    if value < (24 if size == 1 else 1 << (4 * size)):
        raise DecodeError(_NONCANONICAL, "head not in shortest form")
    return major, value, i + size


def _decode(data, i, n, depth):
    if i >= n:
        raise DecodeError(_CBOR, "truncated")
    initial = data[i]
    if initial >= 0xC0:
        if initial == 0xF4:
            return False, i + 1
        if initial == 0xF5:
            return True, i + 1
        if initial == 0xF6:
            return None, i + 1
        if initial < 0xE0:
            raise DecodeError(_CBOR, "tag")
        if 0xF9 <= initial <= 0xFB:
            raise DecodeError(_CBOR, "float")
        raise DecodeError(_CBOR, "simple value outside false/true/null")
    major, value, i = _read_head(data, i, n)
    if major == 0:
        return value, i
    if major == 1:
        return -1 - value, i
    if major == 2 or major == 3:
        end = i + value
        if end > n:
            raise DecodeError(_CBOR, "truncated string")
        raw = bytes(data[i:end])
        if major == 2:
            return raw, end
        if not _utf8_ok(raw):
            raise DecodeError(_CBOR, "text is not UTF-8")
        return str(raw, "utf-8"), end
    if depth > MAX_DEPTH:
        raise DecodeError(_CBOR, "nesting deeper than 4")
    if major == 4:
        if value > n - i:
            raise DecodeError(_CBOR, "truncated array")
        items = []
        for _ in range(value):
            item, i = _decode(data, i, n, depth + 1)
            items.append(item)
        return items, i
    # major 5: a map
    if value > _MAX_KEY + 1:
        raise DecodeError(_CBOR, "map with more than 24 entries")
    if 2 * value > n - i:
        raise DecodeError(_CBOR, "truncated map")
    result = {}
    last = -1
    for _ in range(value):
        if i >= n:
            raise DecodeError(_CBOR, "truncated")
        key = data[i]
        if key > _MAX_KEY:
            # A key 0..23 written with a 1-, 2-, 4- or 8-byte head (0x18..0x1b) is well-formed
            # but not deterministic (SPEC §3); any other key is outside the subset.
            size = 1 << (key - 0x18) if 0x18 <= key <= 0x1B else 0
            if (
                size
                and i + size < n
                and int.from_bytes(data[i + 1 : i + 1 + size], "big") <= _MAX_KEY
            ):
                raise DecodeError(_NONCANONICAL, "head not in shortest form")
            raise DecodeError(_CBOR, "map key outside 0..23")
        i += 1
        if key <= last:
            raise DecodeError(_NONCANONICAL, "map keys unsorted or duplicated")
        last = key
        result[key], i = _decode(data, i, n, depth + 1)
    return result, i


def _utf8_ok(raw):
    # Strict RFC 3629: MicroPython's own decoder accepts overlongs and surrogates.
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        i += 1
        if b < 0x80:
            continue
        if 0xC2 <= b <= 0xDF:
            more, lo, hi = 1, 0x80, 0xBF
        elif b == 0xE0:
            more, lo, hi = 2, 0xA0, 0xBF
        elif b == 0xED:
            more, lo, hi = 2, 0x80, 0x9F
        elif 0xE1 <= b <= 0xEF:
            more, lo, hi = 2, 0x80, 0xBF
        elif b == 0xF0:
            more, lo, hi = 3, 0x90, 0xBF
        elif 0xF1 <= b <= 0xF3:
            more, lo, hi = 3, 0x80, 0xBF
        elif b == 0xF4:
            more, lo, hi = 3, 0x80, 0x8F
        else:
            return False
        if i + more > n or not lo <= raw[i] <= hi:
            return False
        for k in range(i + 1, i + more):
            if not 0x80 <= raw[k] <= 0xBF:
                return False
        i += more
    return True
