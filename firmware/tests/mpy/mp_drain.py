# heapsize: 128k  (test code: the peer host, mpy/peer.py with the sealproto.messages names and
# every record it stores, 175 bytes each since seal signatures, and the in-memory wire run in
# this interpreter beside the firmware, which alone fits in 96k)
# Host absent: 1,000 impressions recorded with no host at all, then drained in order to a peer
# that speaks the protocol, over an in-memory wire, under micropython.
import time
from micropython import const

from mp_link import Wire, check_all_delivered
from mpyunit import equal
from peer import Peer
from rig import KEY, NOW_S, Rig
from sealproto import messages as M
from testchip import stored_proof

from seal.link import HELLO_SENT

_IMPRESSIONS = const(1000)


async def test_thousand_impressions_without_host_then_drained_in_order():
    rig = Rig("absent", capacity=_IMPRESSIONS, blocks=256)
    equal(rig.grant(permit=3, count=_IMPRESSIONS, operator=11), M.R_OK)
    w = Wire("absent", rig=rig, peer=Peer(KEY, NOW_S * 1000, keep=False, prove=stored_proof))
    seen = []

    def on_event(msg):
        # The peer accepts only counter = stored + 1 with a matching chain: order is checked.
        equal((msg[M.EV_KIND], msg[M.EV_PERMIT], msg[M.EV_OPERATOR]), (M.KIND_IMPRESSION, 3, 11))
        if len(seen) < 3:
            seen.append(msg[M.EV_COUNTER])

    w.peer.on_event = on_event
    w.deaf = True
    w.link.start(0)
    t0 = time.ticks_ms()
    for i in range(_IMPRESSIONS):
        await rig.guard.on_press(1)
        await rig.guard.on_press(0)
        if i % 100 == 0:
            # Hours without a host: the link only ever says HELLO, nothing is lost meanwhile.
            w.run(1, 2000)
            del w.unheard[:]
    print("recorded", _IMPRESSIONS, "in", time.ticks_diff(time.ticks_ms(), t0), "ms")
    equal(w.link.state, HELLO_SENT)
    equal(rig.journal.backlog, _IMPRESSIONS)
    equal(rig.journal.full, True)
    equal(rig.lock.v, 0, "all permit count used (and the journal is full)")
    w.deaf = False
    t0 = time.ticks_ms()
    rounds = 0
    while w.link.backlog and rounds < 5000:
        w.run(1, 10)
        rounds += 1
    print("drained in", rounds, "rounds,", time.ticks_diff(time.ticks_ms(), t0), "ms")
    check_all_delivered(w, _IMPRESSIONS)
    equal(seen, [1, 2, 3])
    equal(w.peer.duplicates, 0, "a peer that answers at once never sees a resend")
