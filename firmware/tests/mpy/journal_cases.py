# Journal unit tests, run under MicroPython by firmware/tests/test_journal.py.
# Each test builds its own flash image; remounting it is the reboot.
import hashlib
import os

import flashimg

from seal.journal import GENESIS, Journal, JournalCorrupt, JournalFull

_IMG = flashimg.tmpdir() + "/journal-unit.img"


def payload(counter, size=110):
    b = bytearray(size)
    for i in range(size):
        b[i] = (counter * 7 + i) & 0xFF
    return bytes(b)


def journal(capacity=1000, seg=4):
    j = Journal(flashimg.root(), capacity_events=capacity, segment_events=seg).open()
    j.new_boot()
    return j


def reboot(capacity=1000, seg=4):
    flashimg.mount(_IMG)
    return journal(capacity, seg)


def seg_files():
    return sorted(n for n in os.listdir(flashimg.root()) if n.startswith("s0"))


def fill(j, n):
    for _ in range(n):
        j.append(j.next_counter, payload(j.next_counter))


def test_new_journal():
    flashimg.fresh(_IMG)
    j = Journal(flashimg.root()).open()
    assert j.next_counter == 1 and j.last_hash == GENESIS and j.acked == 0
    assert j.backlog == 0 and j.free == 1000 and not j.full
    try:
        j.append(1, payload(1))
    except ValueError:
        pass
    else:
        raise AssertionError("append before new_boot")
    assert j.new_boot() == 1


def test_append_read_reopen():
    flashimg.fresh(_IMG)
    j = journal()
    fill(j, 10)
    assert seg_files() == ["s00000001", "s00000005", "s00000009"], seg_files()
    for c in range(1, 11):
        assert j.read(c) == payload(c)
    assert j.read(0) is None and j.read(11) is None
    j2 = reboot()
    assert j2.next_counter == 11 and j2.backlog == 10
    assert j2.last_hash == hashlib.sha256(payload(10)).digest()
    assert j2.read(7) == payload(7)


def test_boot_id_strictly_increasing():
    flashimg.fresh(_IMG)
    seen = []
    for _ in range(4):
        seen.append(reboot().boot_id)
    assert seen == [1, 2, 3, 4]
    assert "state.tmp" not in os.listdir(flashimg.root())


def test_append_rejects_wrong_counter_and_size():
    flashimg.fresh(_IMG)
    j = journal()
    for counter, data in ((2, payload(2)), (1, b""), (1, bytes(481))):
        try:
            j.append(counter, data)
        except ValueError:
            pass
        else:
            raise AssertionError(f"accepted {counter}/{len(data)}")
    assert j.next_counter == 1 and seg_files() == []


def test_full_refuses_and_never_overwrites():
    flashimg.fresh(_IMG)
    j = journal(capacity=5)
    fill(j, 5)
    assert j.full and j.free == 0
    try:
        j.append(6, payload(6))
    except JournalFull:
        pass
    else:
        raise AssertionError("append past capacity")
    assert j.read(1) == payload(1) and j.next_counter == 6
    j.ack(2)
    assert j.free == 2 and not j.full
    fill(j, 2)
    assert j.full and reboot(capacity=5).full


def test_ack_compacts_but_keeps_newest():
    flashimg.fresh(_IMG)
    j = journal()
    fill(j, 10)
    j.ack(6)
    assert seg_files() == ["s00000005", "s00000009"], seg_files()
    assert j.read(4) is None and j.read(5) == payload(5)
    j.ack(10)
    assert seg_files() == ["s00000009"] and j.backlog == 0
    j.ack(3)
    assert j.acked == 10
    try:
        j.ack(11)
    except ValueError:
        pass
    else:
        raise AssertionError("ack beyond the newest record")
    j2 = reboot()
    assert j2.acked == 10 and j2.next_counter == 11 and j2.boot_id == 2
    assert j2.last_hash == hashlib.sha256(payload(10)).digest()
    j2.append(11, payload(11))
    assert j2.backlog == 1


def test_torn_tail_record_is_discarded():
    flashimg.fresh(_IMG)
    j = journal()
    fill(j, 6)
    tail = flashimg.root() + "/s00000005"
    with open(tail, "ab") as f:
        f.write(b"\x6e\x00\x07\x00\x00\x00\x01\x02")
    j2 = reboot()
    assert j2.discarded == 1 and j2.next_counter == 7
    assert j2.last_hash == hashlib.sha256(payload(6)).digest()
    j2.append(7, payload(7))
    assert reboot().read(7) == payload(7)


def test_torn_record_with_bad_crc_is_discarded():
    flashimg.fresh(_IMG)
    j = journal()
    fill(j, 3)
    path = flashimg.root() + "/s00000001"
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[-1] ^= 0x40
    with open(path, "wb") as f:
        f.write(data)
    j2 = reboot()
    assert j2.discarded == 1 and j2.next_counter == 3 and j2.read(3) is None


def test_empty_new_segment_is_removed():
    flashimg.fresh(_IMG)
    j = journal()
    fill(j, 4)
    open(flashimg.root() + "/s00000005", "wb").close()
    j2 = reboot()
    assert seg_files() == ["s00000001"] and j2.next_counter == 5
    fill(j2, 1)
    assert seg_files() == ["s00000001", "s00000005"]


def test_damage_before_the_tail_is_a_fault():
    flashimg.fresh(_IMG)
    j = journal()
    fill(j, 6)
    path = flashimg.root() + "/s00000001"
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[20] ^= 1
    with open(path, "wb") as f:
        f.write(data)
    try:
        reboot()
    except JournalCorrupt:
        pass
    else:
        raise AssertionError("a damaged acknowledged-path record went unnoticed")


def test_missing_segment_is_a_fault():
    flashimg.fresh(_IMG)
    j = journal()
    fill(j, 10)
    os.remove(flashimg.root() + "/s00000005")
    try:
        reboot()
    except JournalCorrupt:
        pass
    else:
        raise AssertionError("a gap in the counters went unnoticed")


def test_leftover_tmp_files_are_dropped():
    flashimg.fresh(_IMG)
    j = journal()
    fill(j, 2)
    with open(flashimg.root() + "/state.tmp", "wb") as f:
        f.write(b"\x09\x00")
    j2 = reboot()
    assert j2.boot_id == 2 and "state.tmp" not in os.listdir(flashimg.root())


def test_flash_fault_fails_closed_until_reopened():
    flashimg.fresh(_IMG)
    # Past its first 512 bytes a segment is in a block of its own (littlefs keeps smaller
    # files inline in the directory), so an append there is several writes: an erase, the
    # programs, the commit. The flash dies at the second.
    j = journal(seg=8)
    fill(j, 5)
    dev = flashimg.mount(_IMG)
    j = journal(seg=8)
    dev.cut_at = dev.writes + 2
    try:
        fill(j, 1)
    except OSError:
        pass
    else:
        raise AssertionError("append returned on a dead flash")
    try:
        j.read(1)
    except OSError:
        pass
    else:
        raise AssertionError("journal used after a failed append")
    assert dev.dead
    j2 = reboot(seg=8)
    assert j2.next_counter in (6, 7)
    fill(j2, 1)


def test_no_allocation_grows_with_events():
    import gc

    flashimg.fresh(_IMG)
    j = journal(seg=16)
    data = payload(1)
    fill(j, 20)
    gc.collect()
    before = gc.mem_alloc()
    for _ in range(40):
        j.append(j.next_counter, data)
    gc.collect()
    assert gc.mem_alloc() - before < 512, gc.mem_alloc() - before




def record(counter, kind, cause=None, permit=0):
    # A record in the layout seal.events writes (record_fields reads it by position).
    from sealproto import codec

    msg = {0: 4, 1: counter, 2: 1, 3: 0, 4: 0, 5: kind, 6: permit, 7: 0, 8: bytes(32),
           9: bytes(64), 15: bytes(32)}
    if cause is not None:
        msg[10] = cause
    return codec.encode(msg)


def test_full_before_the_reserve_exhausted_after_it():
    # SPEC §10.2: full leaves the reserve (seal.events then makes no IMPRESSION, mp_durability
    # tests that); exhausted refuses every record.
    flashimg.fresh(_IMG)
    j = Journal(flashimg.root(), capacity_events=4, segment_events=4, reserve_events=2).open()
    j.new_boot()
    for c in (1, 2):
        j.append(c, record(c, 0, permit=9))
    assert j.full and not j.exhausted and j.free == 0
    j.append(3, record(3, 1))
    j.append(4, record(4, 2))
    assert j.exhausted
    try:
        j.append(5, record(5, 1))
    except JournalFull:
        pass
    else:
        raise AssertionError("a record past the reserve")
    assert j.next_counter == 5


def test_missed_records_are_kept_until_a_record_reports_them():
    # SPEC §10.1: presses without a record and alarms without one live in `state` (each missed()
    # one write); an UNRECORDED or ALARM record takes them back, also when the next `state`
    # write never came (the count is then taken back at open, from the record itself).
    flashimg.fresh(_IMG)
    j = journal()
    fill(j, 2)
    j.missed()
    j.missed()
    j.missed(8)
    j.missed(8)
    assert (j.unrecorded, j.pending) == (2, 1 << 8)
    j2 = reboot()
    assert (j2.unrecorded, j2.pending) == (2, 1 << 8), "kept across a reboot"
    j2.append(3, record(3, 6, cause=2))
    j2.append(4, record(4, 5, cause=8))
    assert (j2.unrecorded, j2.pending) == (0, 0)
    # No `state` write since: the records taken back at open.
    flashimg.mount(_IMG)
    j3 = Journal(flashimg.root(), segment_events=4).open()
    assert (j3.unrecorded, j3.pending) == (0, 0)
    j3.new_boot()
    j3.missed()
    j3.ack(4)
    assert reboot().unrecorded == 1, "compaction keeps the count"


def test_permit_state_of_40_bytes_reads_with_nothing_missed():
    import binascii
    import struct

    flashimg.fresh(_IMG)
    j = journal()
    fill(j, 1)
    st = struct.pack("<IIIIIIIII", j.boot_id, 0, 5, 3, 0, 0, 7, 2, 0)
    with open(flashimg.root() + "/state", "wb") as f:
        f.write(st + struct.pack("<I", binascii.crc32(st)))
    j2 = reboot()
    assert j2.permit == (5, 3, 0, 0, 7) and (j2.unrecorded, j2.pending) == (0, 0)
    assert os.stat(flashimg.root() + "/state")[6] == 64


def test_records_count_by_their_fields_read_by_position():
    j = Journal(flashimg.root())
    j.permit = (70000, 5, 0, 0, 1)
    j.unrecorded = 9
    j.pending = 1 << 4 | 1 << 8
    j._count(memoryview(record(1, 0, permit=70000)))
    j._count(record(2, 0, permit=70001))
    j._count(record(3, 1, permit=70000))
    assert j.permit_used == 1, "only an IMPRESSION under the permit"
    j._count(record(4, 6, cause=4))
    j._count(record(5, 5, cause=8))
    j._count(record(6, 4, cause=1 << 8 | 2))
    assert (j.unrecorded, j.pending) == (5, 1 << 4)
    for junk in (b"", bytes(40), record(7, 6, cause=5)[:-40]):
        j._count(junk)
    assert (j.permit_used, j.unrecorded, j.pending) == (1, 5, 1 << 4)
