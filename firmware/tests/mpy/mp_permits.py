# heapsize: 96k  (test code: the cut sweeps mount a flash image and open two journals for every
# cut, each taking its segment list's storage, beside the firmware; the firmware with permits in
# 64k is the emulated board's: host/tests/test_emulated.py, the firmware bench)
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


# --- Durable permits: stored in the journal's `state`, used count from the records ----------

import flashimg  # noqa: E402
from rig import KEY  # noqa: E402
from testchip import TestChip  # noqa: E402

from seal.events import Recorder, Uptime  # noqa: E402
from seal.journal import Journal  # noqa: E402

_IMG = flashimg.tmpdir() + "/permits-unit.img"


class _Seal:
    # One boot of a seal on the test image: journal, recorder, durable permits.
    def __init__(self, seg=16, fresh=False):
        if fresh:
            flashimg.fresh(_IMG)
        else:
            flashimg.mount(_IMG)
        self.journal = Journal(flashimg.root(), segment_events=seg).open()
        self.journal.new_boot()
        self.clock = _Clock(_NOW)
        self.permits = Permits(self.clock, self.journal)
        self.recorder = Recorder(self.journal, KEY, TestChip(), self.clock, Uptime())

    def impression(self):
        p = self.permits
        permit = p.active()
        if not permit:
            raise AssertionError("impression without an active permit")
        self.recorder.record(M.KIND_IMPRESSION, permit, p.operator)
        p.use()

    def forced(self):
        self.recorder.record(M.KIND_FORCED)


def test_used_count_survives_reboot_and_resend():
    s = _Seal(fresh=True)
    equal(s.permits.grant(5, 2, 0, 0, 9), M.R_OK)
    s.impression()
    equal(s.permits.left, 1)
    s = _Seal()
    equal((s.permits.id, s.permits.left, s.permits.operator), (5, 1, 9), "after a reboot")
    equal(s.permits.grant(5, 2, 0, 0, 9), M.R_OK, "the host resends it")
    equal(s.permits.left, 1, "a resend after a reboot keeps the remaining count")
    s.impression()
    equal(s.permits.active(), 0, "used up")
    s = _Seal()
    equal(s.permits.grant(5, 2, 0, 0, 9), M.R_OK)
    equal((s.permits.active(), s.permits.left), (0, 0), "a resend never re-grants")
    equal(s.permits.grant(4, 9, 0, 0, 9), M.R_UNKNOWN_PERMIT, "lower id across boots")
    equal(s.permits.revoke(6), M.R_UNKNOWN_PERMIT, "never installed, across boots")
    equal(s.permits.grant(6, 3, 0, 0, 1), M.R_OK)
    equal(s.permits.left, 3)


def test_forced_and_other_permits_records_do_not_count():
    s = _Seal(fresh=True)
    s.permits.grant(5, 3, 0, 0, 9)
    s.impression()
    s.forced()
    s.recorder.record(M.KIND_TAMPER)
    equal(s.permits.left, 2)
    s.permits.grant(6, 2, 0, 0, 9)
    equal(s.permits.left, 2, "a new permit counts from its install")
    s.impression()
    s = _Seal()
    equal((s.permits.id, s.permits.left), (6, 1))


def test_used_count_survives_compaction():
    # Segments of 2 records and every record acked: compaction deletes the records of the
    # impressions; the count must live on in `state`.
    s = _Seal(seg=2, fresh=True)
    s.permits.grant(3, 9, 0, 0, 1)
    for _ in range(6):
        s.impression()
        s.journal.ack(s.journal.next_counter - 1)
    equal(s.permits.left, 3)
    first = min(int(n[1:], 16) for n in __import__("os").listdir(flashimg.root())
                if n.startswith("s0"))
    equal(first > 1, True, "compaction deleted impression records")
    s = _Seal(seg=2)
    equal(s.permits.left, 3, "after compaction and a reboot")
    s.impression()
    s.journal.ack(s.journal.next_counter - 1)
    s = _Seal(seg=2)
    equal(s.permits.left, 2)


def test_revoke_is_durable():
    s = _Seal(fresh=True)
    s.permits.grant(4, 5, 0, 0, 1)
    s.impression()
    equal(s.permits.revoke(4), M.R_OK)
    equal(s.permits.active(), 0)
    s = _Seal()
    equal((s.permits.id, s.permits.left, s.permits.active()), (4, 0, 0), "revoked after reboot")
    equal(s.permits.grant(4, 5, 0, 0, 1), M.R_OK, "a resend does not undo the revocation")
    equal(s.permits.active(), 0)
    equal(s.permits.revoke(4), M.R_OK, "already revoked")
    equal(s.permits.revoke(3), M.R_OK, "an older id")


def test_old_state_without_permit_reads_as_none():
    # A `state` of the 12-byte form (before permits were durable): no permit installed.
    import binascii
    import os
    import struct

    s = _Seal(fresh=True)
    s.forced()
    st = struct.pack("<II", s.journal.boot_id, 0)
    with open(flashimg.root() + "/state", "wb") as f:
        f.write(st + struct.pack("<I", binascii.crc32(st)))
    s = _Seal()
    equal((s.permits.id, s.permits.left, s.journal.next_counter), (0, 0, 2))
    equal(os.stat(flashimg.root() + "/state")[6], 64, "rewritten in the new form at boot")


def test_install_cut_at_every_write_is_old_or_new():
    # A power cut at each block write of an install: after the reboot the seal holds either
    # the old permit with its use, or the new one, unused; never a mix.
    s = _Seal(fresh=True)
    s.permits.grant(2, 4, 0, 0, 1)
    s.impression()
    w0 = flashimg.mount(_IMG).writes
    base = flashimg.tmpdir() + "/permits-base.img"
    flashimg.copy(_IMG, base)
    cut = 1
    seen = set()
    while True:
        flashimg.copy(base, _IMG)
        dev = flashimg.mount(_IMG, cut_at=cut)
        j = Journal(flashimg.root()).open()
        done = False
        try:
            j.new_boot()
            Permits(_Clock(_NOW), j).grant(3, 7, 0, 0, 1)
            done = not dev.dead
        except OSError:
            if not dev.dead:
                raise
        s = _Seal()
        got = (s.permits.id, s.permits.left)
        if got not in ((2, 3), (3, 7)):
            raise AssertionError(f"cut {cut}: permit {got}")
        seen.add(got)
        if done:
            break
        cut += 1
    equal(seen, {(2, 3), (3, 7)})
    print(f"install cut at writes 1..{cut} (after {w0} setup writes)")


def impression_permit(rec):
    # The permit an IMPRESSION record was made under, as the journal reads it; 0 for any other.
    for permit in (1, 23, 24, 255, 256, 65535, 65536, 0xFFFFFFFF):
        j = Journal("/nowhere")
        j.permit = (permit, 1, 0, 0, 0)
        j._count(rec)
        if j.permit_used:
            return permit
    return 0


def test_impression_permit_reads_the_records_the_recorder_makes():
    # Against the reference decoder, over the boundaries of every CBOR uint head.
    s = _Seal(fresh=True)
    for permit in (1, 23, 24, 255, 256, 65535, 65536, 0xFFFFFFFF):
        for kind in (M.KIND_IMPRESSION, M.KIND_FORCED):
            s.recorder.record(kind, permit, permit)
            rec = s.journal.read(s.journal.next_counter - 1)
            msg = M.decode(rec)
            want = msg[M.EV_PERMIT] if msg[M.EV_KIND] == M.KIND_IMPRESSION else 0
            equal(impression_permit(memoryview(rec)), want, f"permit {permit} kind {kind}")
    for junk in (b"", b"\xaa", bytes(40), b"\xaa\x00\x04\x01\x01\x02\x01\x03\x01\x04\x01\x05",
                 b"\xa9\x00\x04\x01\x01\x02\x01\x03\x01\x04\x01\x05\x00\x06\x07"):
        equal(impression_permit(memoryview(junk)), 0, junk)
