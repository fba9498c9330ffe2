# heapsize: 128k  (test code: the peer host, mpy/peer.py with the sealproto.messages names and
# every record it stores, 175 bytes each since seal signatures, and the in-memory wire run in
# this interpreter beside the firmware, which alone fits in 96k)
# The link state machine (SPEC §4.2, §5) against a peer host written with sealproto, through an
# in-memory wire: handshake, window, cumulative ACK, fast retransmit, RTO, resume, commands.
import os
import random

from mpyunit import equal
from peer import Peer
from rig import KEY, NOW_S, Rig
from sealproto import auth, cobs, messages
from sealproto import messages as M
from sealproto.framing import encode_frame
from testchip import stored_proof

from seal.events import Uptime
from seal.link import HELLO_SENT, UP, Link

_SEED = 4242


def kind_of(frame):
    # [0x00][COBS(payload || crc)][0x00]: the seal sends a 0x00 before every frame.
    equal(frame[0], 0, "leading 0x00")
    return messages.decode(cobs.decode(frame[1:-1])[:-4])


class Wire:
    # Device <-> peer through lists of frames; the test decides what gets lost. After every
    # tick() it checks the link's deadline: tick() leaves nothing due (no spin for a sender).
    def __init__(self, name, rig=None, peer=None):
        self.rig = rig or Rig(name, blocks=128)
        self.peer = peer or Peer(KEY, NOW_S * 1000, prove=stored_proof)
        self.to_host = []
        self.now = 0
        self.drop = None
        self.deaf = False
        self.unheard = []  # frames sent while the host was deaf
        self.link = self.new_link()

    def new_link(self):
        rig = self.rig
        # The link lends its frame buffer to send(): a copy is what a port keeps.
        return Link("seal-test", KEY, "seal-test/0", rig.journal, rig.guard,
                    rig.enrolment("seal-test"), lambda: 3700, os.urandom,
                    lambda frame: self.to_host.append(bytes(frame)), rig.wake)

    def run(self, rounds=1, step_ms=10):
        for _ in range(rounds):
            self.now += step_ms
            self.link.tick(self.now)
            due = self.link.next_deadline_ms(self.now)
            if not due:
                raise AssertionError(f"tick() left work due now: {due!r}")
            frames = self.to_host[:]
            del self.to_host[:]
            for frame in frames:
                if self.deaf:
                    self.unheard.append(frame)
                    continue
                if self.drop and self.drop(kind_of(frame)):
                    continue
                answer = self.peer.feed(frame)
                if answer:
                    self.link.feed(answer, self.now)

    def sent(self, kind):
        return [m for m in (kind_of(f) for f in self.to_host) if m[M.K_TYPE] == kind]

    def stamp(self, n):
        for _ in range(n):
            self.rig.recorder.record(M.KIND_FORCED)


def test_handshake_and_status():
    w = Wire("hs")
    w.link.start(0)
    w.run()
    equal(w.link.state, UP)
    hello = w.peer.hellos[0]
    equal(hello[M.HE_DEVICE], "seal-test")
    equal(hello[M.HE_BOOT], w.rig.boot)
    equal(hello[M.HE_NEXT], 1)
    equal(hello[M.HE_VERSION], 3)
    equal(hello[M.HE_ENROLMENT], 1, "the serial of the certificate the rig enrolled")
    w.run()
    status = w.peer.of_type(M.STATUS)
    equal(len(status), 1)
    equal(status[0][M.ST_NEXT], 1)
    equal(status[0][M.ST_BATTERY], 3700)
    equal(w.peer.errors, [])
    equal(w.rig.clock.t, NOW_S, "WELCOME set the clock")


def test_events_flow_in_order_and_are_acked():
    w = Wire("flow")
    w.link.start(0)
    w.run()
    verified = w.rig.chip.verified
    w.stamp(20)
    w.run(5)
    equal(w.peer.counters(), list(range(1, 21)))
    equal(w.link.acked, 20)
    # Compaction follows the gateway's signed acknowledgements, checked by the chip once per
    # 16 records (SPEC §5.11), at the end of a burst: 16 or more of the 20 are freed, with one
    # Verify.
    equal((w.rig.journal.acked >= 16, w.rig.chip.verified - verified), (True, 1))
    equal(w.peer.errors, [])


def test_a_burst_is_checked_once_at_its_end():
    # The chip's wait stops the link: while records wait to be sent, no Verify (SPEC §5.11).
    w = Wire("burst", rig=Rig("burst", blocks=256))
    w.link.start(0)
    w.run()
    verified = w.rig.chip.verified
    w.stamp(64)
    w.run(20)
    equal(w.link.acked, w.rig.journal.next_counter - 1)
    # Checked at the first ACK once the last record is sent: a window before the end at most.
    equal((w.rig.journal.acked >= 64 - 8, w.rig.chip.verified - verified), (True, 1))


def test_window_of_eight_in_flight():
    w = Wire("window")
    w.link.start(0)
    w.run()
    w.deaf = True
    w.stamp(20)
    w.link.tick(w.now + 1)
    equal(len(w.sent(M.EVENT)), 8)
    equal([m[M.EV_COUNTER] for m in w.sent(M.EVENT)], list(range(1, 9)))


def test_lost_frames_are_resent_in_order():
    random.seed(_SEED)
    print("seed", _SEED)
    w = Wire("loss")
    w.link.start(0)
    w.run()
    lost = []

    def drop(msg):
        if msg[M.K_TYPE] == M.EVENT and random.getrandbits(3) == 0:
            lost.append(msg[M.EV_COUNTER])
            return True
        return False

    w.drop = drop
    w.stamp(60)
    w.run(400)
    check_all_delivered(w, 60)
    equal(len(lost) > 0, True, "the seed must lose some frames")
    equal(w.link.retransmits > 0, True)


def check_all_delivered(w, n):
    equal(w.peer.stored, n)
    if w.peer.keep:
        equal(w.peer.counters(), list(range(1, n + 1)))
    equal((w.link.acked, w.link.backlog), (n, 0))
    equal(n - 16 < w.rig.journal.acked <= n, True, "freed up to the last 16 (SPEC §5.11)")
    equal([e for e in w.peer.errors if e[0] != "session"], [])


def test_lost_acks_recovered_by_rto():
    w = Wire("rto")
    w.link.start(0)
    w.run()
    w.drop = lambda msg: False
    w.stamp(5)
    # The host stores the events but every ACK is lost: go-back-N after RTO, ACK then lands.
    acks = []
    orig = w.link.feed

    def lossy(data, now):
        if len(acks) < 5:
            acks.append(data)
            return
        orig(data, now)

    w.link.feed = lossy
    w.run(100)
    check_all_delivered(w, 5)
    equal(w.peer.duplicates > 0, True, "the window was resent after RTO")


def test_hello_repeats_with_fresh_nonce_until_welcome():
    w = Wire("hello")
    w.deaf = True
    w.link.start(0)
    w.run(350)
    hellos = [kind_of(f) for f in w.unheard]
    equal(len(hellos) >= 3, True, "HELLO resent")
    nonces = set(h[M.HE_NONCE] for h in hellos)
    equal(len(nonces), len(hellos), "a fresh nonce per HELLO")
    # A WELCOME answering an older HELLO does not verify against the current nonce.
    late = w.peer.welcome(hellos[0][M.HE_NONCE])
    w.link.feed(late, w.now)
    equal(w.link.state, HELLO_SENT)
    equal(w.link.rejected_mac, 1)
    w.link.feed(w.peer.welcome(hellos[-1][M.HE_NONCE]), w.now)
    equal(w.link.state, UP)


def test_sync_spam_makes_one_hello():
    w = Wire("sync")
    w.link.start(0)
    w.run(200)
    frame = encode_frame(messages.encode({M.K_TYPE: M.SYNC}))
    hellos = len(w.peer.hellos)
    for _ in range(20):
        w.link.feed(frame, w.now)
        w.run(1, 10)
    equal(len(w.peer.hellos), hellos + 1, "200 ms of SYNC spam: one HELLO")
    w.run(300)
    equal(len(w.peer.hellos), hellos + 1, "SYNCs within a HELLO interval are ignored")
    equal(w.link.state, UP)


def test_resume_after_host_restart_without_duplicates():
    w = Wire("hostrestart")
    w.link.start(0)
    w.run()
    w.stamp(10)
    w.run(200)
    # The host restarts with its store intact: it knows nothing of the session and sends SYNC.
    stored = w.peer.events
    w.peer = Peer(KEY, NOW_S * 1000, prove=stored_proof)
    w.peer.events = stored
    w.peer.stored = len(stored)
    w.peer.last_hash = auth.record_hash(stored[-1])
    w.link.feed(encode_frame(messages.encode({M.K_TYPE: M.SYNC})), w.now)
    w.stamp(5)
    w.run(200)
    check_all_delivered(w, 15)
    equal(len(w.peer.hellos), 1, "one new HELLO")


def test_resume_after_reboot_resends_backlog():
    w = Wire("reboot")
    w.link.start(0)
    w.deaf = True
    w.stamp(12)
    w.run(50)
    # Power cut: a new journal on the same flash, a new boot, a new link.
    rig = w.rig
    j = rig.journal.__class__(rig.journal.root).open()
    rig.journal = j
    rig.boot = j.new_boot()
    rig.recorder.__init__(j, KEY, rig.chip, rig.clock, Uptime(rig.now_ms))
    rig.guard._journal = j
    w.link = w.new_link()
    w.deaf = False
    w.link.start(w.now)
    w.run(100)
    check_all_delivered(w, 12)
    equal(w.peer.hellos[-1][M.HE_NEXT], 13)
    equal(w.peer.hellos[-1][M.HE_BOOT], 2)


def test_dead_host_falls_back_to_hello():
    w = Wire("dead")
    w.link.start(0)
    w.run()
    w.deaf = True
    w.stamp(3)
    w.run(290, 100)
    equal(w.link.state, UP, "still within LINK_DEAD_MS")
    w.run(20, 100)
    equal(w.link.state, HELLO_SENT, "30 s without the host: a new handshake")
    w.deaf = False
    w.run(400, 100)
    check_all_delivered(w, 3)


def command_round(w, msg):
    frame = w.peer.command(msg)
    w.link.feed(frame, w.now)
    w.run()
    return frame


def test_permit_result_and_replay_rejected():
    w = Wire("permit")
    w.link.start(0)
    w.run(2)
    msg = {M.K_TYPE: M.PERMIT, M.PE_ID: 5, M.PE_COUNT: 1, M.PE_NOT_BEFORE: NOW_S - 1,
           M.PE_NOT_AFTER: NOW_S + 60, M.PE_OPERATOR: 9}
    frame = command_round(w, msg)
    results = w.peer.of_type(M.RESULT)
    equal(len(results), 1)
    equal(results[0][M.RE_CODE], M.R_OK)
    equal(w.rig.lock.v, 1)
    w.link.feed(frame, w.now)
    w.run()
    equal(len(w.peer.of_type(M.RESULT)), 1, "a replayed command gets no second RESULT")
    equal(w.link.rejected_replay, 1)
    command_round(w, {M.K_TYPE: M.REVOKE, M.RV_PERMIT: 5})
    equal(w.peer.of_type(M.RESULT)[-1][M.RE_CODE], M.R_OK)
    equal(w.rig.lock.v, 0)
    command_round(w, {M.K_TYPE: M.REVOKE, M.RV_PERMIT: 6})
    equal(w.peer.of_type(M.RESULT)[-1][M.RE_CODE], M.R_UNKNOWN_PERMIT)


def test_command_with_bad_mac_is_dropped():
    w = Wire("badmac")
    w.link.start(0)
    w.run(2)
    good_key = w.peer.session_key
    w.peer.session_key = bytes(32)
    w.link.feed(w.peer.command({M.K_TYPE: M.TIME, M.TI_TIME: 5000}), w.now)
    w.peer.session_key = good_key
    w.run()
    equal(w.link.rejected_mac, 1)
    equal(w.peer.of_type(M.RESULT), [])
    equal(w.rig.clock.t, NOW_S, "the forged TIME did not set the clock")


def test_time_command_sets_clock():
    w = Wire("time")
    w.link.start(0)
    w.run(2)
    command_round(w, {M.K_TYPE: M.TIME, M.TI_TIME: (NOW_S + 500) * 1000})
    equal(w.rig.clock.t, NOW_S + 500)
    equal(w.peer.of_type(M.RESULT)[-1][M.RE_SEQ], 2)


async def test_forced_press_sends_event_and_alarm():
    w = Wire("alarm")
    w.link.start(0)
    w.run(2)
    await w.rig.guard.on_press(1)
    w.run(2)
    equal(w.peer.counters(), [1])
    alarms = w.peer.of_type(M.ALARM)
    equal([a[M.AL_CODE] for a in alarms], [M.AL_FORCED_STAMP])


def test_ack_beyond_newest_is_ignored():
    w = Wire("bogus")
    w.link.start(0)
    w.run()
    w.stamp(2)
    w.deaf = True
    w.run()
    w.link.feed(w.peer.command({M.K_TYPE: M.ACK, M.AK_COUNTER: 50, M.AK_STORED: b""}), w.now)
    equal((w.link.acked, w.link.rejected_ack), (0, 1), "ignored and counted (SPEC §5.5)")


def test_duplicate_acks_make_one_fast_retransmit():
    w = Wire("dupack")
    w.link.start(0)
    w.run()
    w.drop = lambda msg: msg[M.K_TYPE] == M.EVENT and msg[M.EV_COUNTER] == 1 and not w.peer.gaps
    w.stamp(5)
    w.run(1, 1)
    equal(w.peer.gaps, 4, "events 2..5 each revealed the gap")
    equal(w.link.retransmits, 5, "one go-back for four duplicate ACKs")
    w.run(3)
    check_all_delivered(w, 5)


def test_rto_doubles_while_the_host_is_silent():
    w = Wire("backoff")
    w.link.start(0)
    w.run()
    w.deaf = True
    w.stamp(1)
    w.run(400, 10)
    sends = [f for f in w.unheard if kind_of(f)[M.K_TYPE] == M.EVENT]
    # Sent at once, then after 0.5, 1, 2 s more (RTO doubling): four sends in 4 s.
    equal(len(sends), 4)


def test_next_deadline_follows_the_link_timers():
    # What a sender sleeps for (seal/ports.py): the HELLO retry while waiting for a WELCOME,
    # the STATUS interval when idle, the sooner of RTO and LINK_DEAD with events in flight,
    # 0 while there is something to send (SPEC §5.1, §5.2, §5.6, §5.7).
    w = Wire("deadline")
    equal(w.link.next_deadline_ms(0), None, "not started")
    w.deaf = True
    w.link.start(0)
    equal(w.link.next_deadline_ms(0), 1000)
    equal(w.link.next_deadline_ms(400), 600)
    w.run(1, 1000)  # the retry: the next one doubles
    equal(w.link.next_deadline_ms(w.now), 2000)
    w.deaf = False
    w.link.feed(w.peer.feed(w.unheard[-1]), w.now)  # the host answers the latest HELLO
    w.run()
    equal(w.link.state, UP)
    now = w.now
    equal(w.link.next_deadline_ms(now), 60000 - (now - w.link._status_ms))
    w.stamp(1)
    equal(w.link.next_deadline_ms(now), 0, "a new record: due now")
    w.deaf = True
    w.run(1, 1)
    equal(w.link.next_deadline_ms(w.now), 500, "in flight: RTO")
    w.run(1, 500)  # the RTO expired: resent, the timeout doubled
    equal(w.link.next_deadline_ms(w.now), 1000)
    w.link._host_ms = w.now - 29800  # the host silent for almost LINK_DEAD_MS
    equal(w.link.next_deadline_ms(w.now), 200, "LINK_DEAD sooner than RTO")
    w.rig.guard.raise_alarm(M.AL_TAMPER)
    equal(w.link.next_deadline_ms(w.now), 0, "an alarm to send")
