"""Deterministic CBOR for the subset of SPEC §3 (RFC 8949 §4.2.1).

Subset: integers in the 64-bit range, bytes, text, arrays, maps whose keys are the integers
0..23, true, false, null; at most 4 nested containers. `dumps` output equals
`cbor2.dumps(obj, canonical=True)` for every value of the subset.
"""

from typing import Any, Final

MAX_DEPTH: Final = 4

def dumps(obj: object) -> bytes:
    """Encode; TypeError outside the subset, ValueError for an out-of-range int/key/depth."""

def loads(data: bytes | bytearray | memoryview) -> Any:
    """Decode strictly; raises only DecodeError (CBOR or NONCANONICAL)."""
