# The permit from the host (SPEC §5.7): one installed at a time, `count` impressions inside
# [not_before_s, not_after_s] (both 0: no window); ids only ever increase, across reboots too.
# Durable (SPEC §10.1, §12): the journal keeps the permit in `state` and counts its use from
# the IMPRESSION records, so neither a reboot nor a power cut gives an impression back.
from micropython import const

# Wire numbers of sealproto (SPEC §4, §7) as const: a name imported from there costs RAM.
# firmware/tests/test_wire_constants.py checks them against sealproto.
_R_BAD_FIELD = const(1)
_R_EXPIRED = const(2)
_R_NO_TIME = const(4)
_R_OK = const(0)
_R_UNKNOWN_PERMIT = const(3)

# The journal stores the permit's fields as u32: a larger count or time is clamped to this,
# which only ever allows less (fewer impressions, a later start, 2106 as the end).
_U32 = const(0xFFFFFFFF)


class Permits:
    def __init__(self, clock, journal=None):
        self._clock = clock
        # The journal keeps the permit; without one (the permit unit tests, no flash)
        # this object keeps the same two fields in RAM and use() counts.
        self._ram = journal is None
        self._store = self if journal is None else journal
        self.permit = (0, 0, 0, 0, 0)
        self.permit_used = 0
        self.permit_ops = ()

    def set_permit(self, permit, used=0, ops=None):
        # The RAM-only store (no journal); the journal's own set_permit writes `state`.
        self.permit = permit
        self.permit_used = used
        if ops is not None:
            self.permit_ops = ops

    @property
    def id(self):
        # The installed permit, 0 if none was ever installed.
        return self._store.permit[0]

    @property
    def left(self):
        s = self._store
        left = s.permit[1] - s.permit_used
        return left if left > 0 else 0

    @property
    def operator(self):
        return self._store.permit[4]

    @property
    def operators(self):
        # The operators the permit names (SPEC §5.7): () lets anyone use it, as before.
        return self._store.permit_ops

    def grant(self, permit, count, not_before_s, not_after_s, operator, ops=b""):
        # Raises OSError when the permit could not be stored: it is then not installed.
        # ops: PERMIT key 6 as sent, big-endian u32 ids (absent: b"").
        if not_before_s > not_after_s:
            return _R_BAD_FIELD
        ids = tuple(int.from_bytes(ops[i:i + 4], "big") for i in range(0, len(ops), 4))
        if 0 in ids:
            return _R_BAD_FIELD
        installed = self.id
        if permit == installed:
            return _R_OK  # a resend after a lost RESULT or a reboot: the remaining count stays
        if permit < installed:
            return _R_UNKNOWN_PERMIT
        if not_after_s:
            now = self._clock()
            if now == 0:
                return _R_NO_TIME
            if not_after_s < now:
                return _R_EXPIRED
        self._store.set_permit((permit, min(count, _U32), min(not_before_s, _U32),
                                min(not_after_s, _U32), operator), 0, ids)
        return _R_OK

    def revoke(self, permit):
        # Durable as a grant is: the count shrinks to what was used. Raises OSError if not stored.
        s = self._store
        if permit > s.permit[0] or permit == 0:
            return _R_UNKNOWN_PERMIT
        if permit == s.permit[0] and self.left:
            p = s.permit
            s.set_permit((p[0], s.permit_used, p[2], p[3], p[4]), s.permit_used)
        return _R_OK

    def installed(self):
        # The permit is installed and neither exhausted, expired nor revoked.
        if self.left == 0:
            return False
        not_after_s = self._store.permit[3]
        return not_after_s == 0 or self._clock() <= not_after_s

    def active(self):
        # The permit id if it allows an impression right now, else 0.
        if not self.installed():
            return 0
        p = self._store.permit
        if p[3]:
            now = self._clock()
            if now == 0 or now < p[2]:
                return 0
        return p[0]

    def use(self):
        # After an IMPRESSION's append returned. The journal counted it in that append already.
        if self._ram and self.left:
            self._store.permit_used += 1
