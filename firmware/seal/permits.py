# The permit from the host (SPEC §5.7): one installed at a time, `count` impressions inside
# [not_before_s, not_after_s] (both 0: no window); ids only ever increase.
# Kept in RAM only: after a reboot the lock stays shut until the host grants again (fail-closed).
from micropython import const

# Wire numbers of sealproto (SPEC §4, §7) as const: a name imported from there costs RAM.
# firmware/tests/test_wire_constants.py checks them against sealproto.
_R_BAD_FIELD = const(1)
_R_EXPIRED = const(2)
_R_NO_TIME = const(4)
_R_OK = const(0)
_R_UNKNOWN_PERMIT = const(3)


class Permits:
    def __init__(self, clock):
        self._clock = clock
        self.id = 0  # the installed permit, 0 if none was ever installed
        self.left = 0
        self._not_before_s = 0
        self._not_after_s = 0
        self.operator = 0

    def grant(self, permit, count, not_before_s, not_after_s, operator):
        if not_before_s > not_after_s:
            return _R_BAD_FIELD
        if permit == self.id:
            return _R_OK  # a resend after a lost RESULT: the remaining count stays
        if permit < self.id:
            return _R_UNKNOWN_PERMIT
        if not_after_s:
            now = self._clock()
            if now == 0:
                return _R_NO_TIME
            if not_after_s < now:
                return _R_EXPIRED
        self.id = permit
        self.left = count
        self._not_before_s = not_before_s
        self._not_after_s = not_after_s
        self.operator = operator
        return _R_OK

    def revoke(self, permit):
        if permit > self.id or permit == 0:
            return _R_UNKNOWN_PERMIT
        if permit == self.id:
            self.left = 0
        return _R_OK

    def installed(self):
        # The permit is installed and neither exhausted, expired nor revoked.
        if self.left == 0:
            return False
        return self._not_after_s == 0 or self._clock() <= self._not_after_s

    def active(self):
        # The permit id if it allows an impression right now, else 0.
        if not self.installed():
            return 0
        if self._not_after_s:
            now = self._clock()
            if now == 0 or now < self._not_before_s:
                return 0
        return self.id

    def use(self):
        if self.left:
            self.left -= 1
