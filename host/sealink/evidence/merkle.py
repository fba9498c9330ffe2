"""RFC 9162 §2.1 Merkle tree hashing, proofs and their verification, over a store of nodes.

    leaf  = SHA-256(0x00 || data)          node = SHA-256(0x01 || left || right)
    MTH({}) = SHA-256("")                  MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n])), k the
                                           largest power of two < n

The ledger keeps every *perfect* subtree's hash (level l, index i covers leaves
[i * 2**l, (i + 1) * 2**l)); any MTH of the RFC's recursion is then a few look-ups, and appending
needs only the *frontier*: the perfect subtrees that the tree of size n decomposes into (one per
set bit of n), so a group commit appends its leaves in memory after reading at most 64 nodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "Frontier",
    "NodeLookup",
    "consistency_path",
    "frontier_positions",
    "inclusion_path",
    "leaf_hash",
    "node_hash",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()

# (level, index) -> the hash of that perfect subtree
NodeLookup = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """k: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def frontier_positions(size: int) -> list[tuple[int, int]]:
    """(level, index) of the perfect subtrees a tree of `size` leaves decomposes into, left to
    right (largest first)."""
    out = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, start >> level))
            start += 1 << level
    return out


class Frontier:
    """The right edge of the tree: enough to append leaves and to compute the root."""

    def __init__(self, size: int, hashes: Sequence[bytes]) -> None:
        levels = [level for level, _ in frontier_positions(size)]
        if len(levels) != len(hashes):
            raise ValueError(f"a tree of size {size} has {len(levels)} frontier nodes")
        self.size = size
        self._stack = list(zip(levels, hashes, strict=True))

    @classmethod
    def load(cls, size: int, node: NodeLookup) -> Frontier:
        return cls(size, [node(level, index) for level, index in frontier_positions(size)])

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; returns the perfect subtrees it completes, (level, index, hash),
        the leaf itself first."""
        index = self.size
        created = [(0, index, leaf)]
        level, value = 0, leaf
        stack = self._stack
        while stack and stack[-1][0] == level:
            _, left = stack.pop()
            value = node_hash(left, value)
            level += 1
            created.append((level, index >> level, value))
        stack.append((level, value))
        self.size += 1
        return created

    def extend(self, leaves: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        created: list[tuple[int, int, bytes]] = []
        for leaf in leaves:
            created.extend(self.append(leaf))
        return created

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        value = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            value = node_hash(left, value)
        return value


def subtree_root(node: NodeLookup, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for a range of the RFC's recursion (start is a multiple of the largest
    power of two not above end - start)."""
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0:
        level = n.bit_length() - 1
        return node(level, start >> level)
    k = _split(n)
    return node_hash(subtree_root(node, start, start + k), subtree_root(node, start + k, end))


def inclusion_path(node: NodeLookup, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, from the leaf's sibling up."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(subtree_root(node, start + k, end))
            end = start + k
        else:
            path.append(subtree_root(node, start, start + k))
            start += k
    path.reverse()
    return path


def consistency_path(node: NodeLookup, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 §2.1.4.1 (empty when the sizes are equal or the
    old tree is empty: nothing to prove)."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    path: list[bytes] = []
    start, m, n, complete = 0, old_size, new_size, True
    while m != n:
        k = _split(n)
        if m <= k:
            path.append(subtree_root(node, start + k, start + n))
            n = k
        else:
            path.append(subtree_root(node, start, start + k))
            start, m, n, complete = start + k, m - k, n - k, False
    if not complete:
        path.append(subtree_root(node, start, start + n))
    path.reverse()
    return path


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2; equal sizes prove equal roots with an empty path, and the empty tree
    is consistent with every tree."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not path and old_root == new_root
    if old_size == 0:
        return not path and old_root == EMPTY_ROOT
    if not path:
        return False
    proof = list(path)
    if old_size & (old_size - 1) == 0:
        proof.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
