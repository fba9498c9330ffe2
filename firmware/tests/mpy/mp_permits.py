# The permit (SPEC §5.7): one installed at a time, count, validity window, increasing ids, revoke.
from mpyunit import equal
from sealproto import messages as M

from seal.permits import Permits

_NOW = 1700000000


class _Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def test_window_needs_a_clock_no_window_does_not():
    p = Permits(_Clock(0))
    equal(p.grant(1, 5, 0, 10, 7), M.R_NO_TIME)
    equal(p.active(), 0)
    equal(p.grant(2, 5, 0, 0, 7), M.R_OK, "both 0: no window")
    equal(p.active(), 2)


def test_window_and_count():
    clock = _Clock(_NOW)
    p = Permits(clock)
    equal(p.grant(9, 2, _NOW + 10, _NOW + 20, 77), M.R_OK)
    equal(p.active(), 0, "before not_before")
    equal(p.installed(), True, "installed, waiting for its window")
    clock.t = _NOW + 10
    equal(p.active(), 9)
    equal(p.operator, 77)
    p.use()
    equal(p.left, 1)
    p.use()
    equal(p.active(), 0, "count used up")
    equal(p.installed(), False)


def test_expiry_closes():
    clock = _Clock(_NOW)
    p = Permits(clock)
    p.grant(1, 5, _NOW, _NOW + 5, 1)
    clock.t = _NOW + 5
    equal(p.active(), 1, "not_after is inclusive")
    clock.t = _NOW + 6
    equal(p.active(), 0)
    equal(p.installed(), False)


def test_bad_and_expired_grants():
    p = Permits(_Clock(_NOW))
    equal(p.grant(1, 5, _NOW + 10, _NOW, 1), M.R_BAD_FIELD)
    equal(p.grant(1, 5, 0, _NOW - 1, 1), M.R_EXPIRED)
    equal(p.active(), 0)


def test_same_id_is_idempotent_lower_id_unknown_higher_replaces():
    p = Permits(_Clock(_NOW))
    equal(p.grant(5, 3, 0, 0, 1), M.R_OK)
    p.use()
    equal(p.grant(5, 3, 0, 0, 1), M.R_OK, "a resend")
    equal(p.left, 2, "a resend keeps the remaining count")
    equal(p.grant(4, 9, 0, 0, 1), M.R_UNKNOWN_PERMIT)
    equal(p.grant(6, 9, 0, 0, 2), M.R_OK)
    equal((p.active(), p.left, p.operator), (6, 9, 2))


def test_revoke():
    p = Permits(_Clock(_NOW))
    p.grant(3, 5, 0, _NOW + 100, 1)
    equal(p.revoke(3), M.R_OK)
    equal(p.active(), 0)
    equal(p.revoke(3), M.R_OK, "already revoked")
    equal(p.revoke(2), M.R_OK, "an older id")
    equal(p.revoke(4), M.R_UNKNOWN_PERMIT, "never installed")
