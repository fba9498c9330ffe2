# heapsize: 160k  (test code: the peer host, mpy/peer.py with the sealproto.messages names and
# every record it stores, 41 unfreed ones here, and the in-memory wire run in this interpreter
# beside the firmware, which alone fits in 96k; each journal file opened needs 1.2 KB in one
# piece, its littlefs cache)
# Enrolment and signed acknowledgements (SPEC §5.11): the seal frees journal space only on an
# acknowledgement its chip verified under the enrolled gateway's key, and is enrolled only by a
# certificate of the authority built into its firmware. The host side here holds the link key
# throughout: what is refused is refused for want of the gateway's or the authority's key.
import binascii
import struct

from mp_link import Wire
from mpyunit import equal
from peer import Peer
from rig import KEY, NOW_S
from sealproto import messages as M
from testchip import AUTHORITY, GATEWAY, certificate, stored_proof

from seal.enrol import Enrolment

_DEVICE = "seal-test"
_OTHER = b"O" * 64  # a key the seal was never enrolled with


def _session(name, prove=stored_proof):
    w = Wire(name, peer=Peer(KEY, NOW_S * 1000, prove=prove))
    w.link.start(0)
    w.run(2)
    return w


def _prove_as(gateway):
    return lambda device, counter, head: stored_proof(device, counter, head, gateway)


def messages_of_kind(w, kind):
    # The seal's records of one kind, as the peer stored them.
    return [e for e in map(M.decode, w.peer.events) if e[M.EV_KIND] == kind]


def _enrol(w, cert):
    # The ENROL command, session-authenticated by the peer; the seal's RESULT code.
    results = len(w.peer.of_type(M.RESULT))
    w.link.feed(w.peer.command(dict(cert)), w.now)
    w.run()
    answers = w.peer.of_type(M.RESULT)
    equal(len(answers), results + 1, "one RESULT")
    return answers[-1][M.RE_CODE]


def test_the_enrolled_gateways_signed_ack_frees_the_journal():
    w = _session("freed")
    w.stamp(40)
    w.run(20)
    equal(w.link.acked, 40)
    equal(w.rig.journal.acked >= 32, True, "freed in 16-record steps")
    equal(w.peer.of_type(M.ALARM), [])


def test_an_impostor_with_the_link_key_frees_nothing_and_is_alarmed_once():
    # Everything a gateway host or a copy of the seal's flash holds: the link key. The ACKs
    # flow (the window moves on), but not one record is freed, and the seal says so.
    w = _session("impostor", prove=_prove_as(_OTHER))
    w.stamp(40)
    w.run(20)
    # 41 records: the first refusal is journaled too (an ALARM record), so the gateway the
    # seal is enrolled with learns of the impostor when it is back.
    made = w.rig.journal.next_counter - 1
    equal((made, w.link.acked, w.rig.journal.acked), (41, 41, 0))
    equal(w.rig.journal.backlog, 41, "every record still on flash for the real gateway")
    alarm = messages_of_kind(w, M.KIND_ALARM)
    equal([(e[M.EV_CAUSE]) for e in alarm], [M.AL_UNVERIFIED_ACK], "journaled once a boot")
    codes = [m[M.AL_CODE] for m in w.peer.of_type(M.ALARM)]
    equal(codes.count(M.AL_UNVERIFIED_ACK), 1, "one check at the end of the burst")
    # The next check is 16 records on (SPEC §5.11), and raises the alarm again.
    w.stamp(16)
    w.run(10)
    codes = [m[M.AL_CODE] for m in w.peer.of_type(M.ALARM)]
    equal(codes.count(M.AL_UNVERIFIED_ACK), 2, "one check and one alarm per 16 records")
    equal(w.rig.journal.acked, 0)


def test_unsigned_acks_free_nothing():
    w = _session("unsigned", prove=None)
    w.stamp(20)
    w.run(10)
    # The 21st record: the refusal, journaled (a gateway without an acknowledgement key looks
    # like an impostor to an enrolled seal, and is one as far as compaction goes).
    equal((w.link.acked, w.rig.journal.acked), (21, 0))


def test_a_full_journal_checks_every_ack():
    w = Wire("full", peer=Peer(KEY, NOW_S * 1000, prove=stored_proof))
    w.rig.journal.capacity_events = 4
    w.link.start(0)
    w.run(2)
    w.stamp(4)
    equal(w.rig.journal.full, True)
    w.run(5)
    equal(w.rig.journal.full, False, "freed below 16 records: the journal was full")


def test_enrol_needs_the_authoritys_signature():
    w = _session("forged-cert")
    forged = certificate(_DEVICE, serial=2, gateway=_OTHER, authority=_OTHER)
    equal(_enrol(w, forged), M.R_BAD_SIGNATURE)
    equal(w.link._enrolment.gateway, GATEWAY, "the enrolment stays")
    equal(_enrol(w, certificate("seal-other", serial=3, gateway=_OTHER)), M.R_BAD_FIELD,
          "a certificate for another seal")
    equal(_enrol(w, certificate(_DEVICE, serial=1)), M.R_OK, "the same one again")
    equal(_enrol(w, certificate(_DEVICE, serial=1, gateway=_OTHER)), M.R_BAD_FIELD,
          "another key under the same serial")


def test_re_enrolment_moves_the_seal_to_the_new_gateway():
    w = _session("moved", prove=_prove_as(_OTHER))
    equal(_enrol(w, certificate(_DEVICE, serial=2, gateway=_OTHER)), M.R_OK)
    w.stamp(20)
    w.run(10)
    freed = w.rig.journal.acked
    equal(freed >= 16, True, "the new gateway's signature frees")
    # The gateway it moved away from, in a new session.
    w.peer = Peer(KEY, NOW_S * 1000, prove=stored_proof)
    w.peer.stored = w.link.acked
    w.peer.last_hash = w.rig.journal.last_hash
    w.link.start(w.now)
    w.run(2)
    w.stamp(20)
    w.run(20)
    equal(w.rig.journal.acked, freed, "the old gateway's signature frees nothing now")
    equal(_enrol(w, certificate(_DEVICE, serial=1)), M.R_BAD_FIELD, "nor can it enrol again")


def test_revocation_stops_compaction_and_shows_in_status():
    w = _session("revoked")
    equal(_enrol(w, certificate(_DEVICE, serial=5, gateway=b"")), M.R_OK)
    w.stamp(20)
    w.run(10)
    equal(w.rig.journal.acked, 0)
    flags = w.peer.of_type(M.STATUS)[-1][M.ST_FLAGS]
    equal(flags & M.F_NOT_ENROLLED, M.F_NOT_ENROLLED)


def test_the_enrolment_survives_a_reboot_and_a_forged_file_enrols_nobody():
    w = _session("reboot")
    equal(_enrol(w, certificate(_DEVICE, serial=7, gateway=_OTHER)), M.R_OK)
    path = w.rig.journal.root + ".enrol"
    again = Enrolment(path, _DEVICE, AUTHORITY, w.rig.chip)
    again.load()
    equal((again.serial, again.gateway), (7, _OTHER))
    # Whoever writes the seal's flash: another key in the file, CRC made good.
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[4:68] = GATEWAY
    struct.pack_into("<I", data, len(data) - 4, binascii.crc32(memoryview(data)[:-4]))
    with open(path, "wb") as f:
        f.write(data)
    again.load()
    equal((again.serial, again.gateway), (0, None))
    unbuilt = Enrolment(path + ".none", _DEVICE, None, w.rig.chip)
    unbuilt.load()
    equal(unbuilt.command(M.ENROL, certificate(_DEVICE)), M.R_BAD_SIGNATURE,
          "a build without an authority enrols nobody")
