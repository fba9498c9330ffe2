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
    j = journal()
    fill(j, 3)
    dev = flashimg.mount(_IMG)
    j = journal()
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
    j2 = reboot()
    assert j2.next_counter in (4, 5)
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


