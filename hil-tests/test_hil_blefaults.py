"""The fault engine on a BLE link (sealink_hil.blefaults): whole ATT chunks dropped, duplicated,
delayed or held, never corrupted. Sans-IO: a made-up clock, no radio.
"""

from __future__ import annotations

import random

import pytest
from sealink_hil.blefaults import BLE_FAULT_KINDS, BleFaults
from sealink_hil.linkfaults import D2H, H2D, LinkFaults, WireFault


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _seeded(request: pytest.FixtureRequest) -> random.Random:
    seed = random.SystemRandom().randrange(2**32)
    print(f"{request.node.name} seed={seed}")
    return random.Random(seed)


def test_chunks_pass_untouched_without_a_fault(request: pytest.FixtureRequest) -> None:
    faults = BleFaults(LinkFaults(_seeded(request)), Clock())
    assert faults(D2H, b"abc") == [(0.0, b"abc")]
    assert faults(H2D, b"xyz") == [(0.0, b"xyz")]
    assert faults.effects == []


def test_a_drop_loses_every_chunk_it_touches_whole(request: pytest.FixtureRequest) -> None:
    faults = BleFaults(LinkFaults(_seeded(request)), Clock())
    faults.arm(WireFault("drop", D2H, 5))
    assert faults(D2H, b"abc") == []  # 3 of the 5 bytes
    assert faults(H2D, b"other way") == [(0.0, b"other way")]
    assert faults(D2H, b"defgh") == []  # the last 2: the whole chunk still goes
    assert faults(D2H, b"ijk") == [(0.0, b"ijk")]
    assert [e.kind for e in faults.effects] == ["drop", "drop"]


def test_duplicate_delay_and_stall_keep_chunks_whole(request: pytest.FixtureRequest) -> None:
    clock = Clock()
    faults = BleFaults(LinkFaults(_seeded(request)), clock)
    faults.arm(WireFault("duplicate", H2D))
    assert faults(H2D, b"twice") == [(0.0, b"twice"), (0.0, b"twice")]
    faults.arm(WireFault("delay", D2H, 250))
    assert faults(D2H, b"late") == [(0.25, b"late")]
    faults.arm(WireFault("stall", D2H, 500))
    clock.now += 0.1
    assert faults(H2D, b"held") == [(pytest.approx(0.4), b"held")]
    clock.now += 0.4
    assert faults(D2H, b"free") == [(0.0, b"free")]


def test_while_the_link_is_down_chunks_are_lost_and_one_hang_up_is_asked(
    request: pytest.FixtureRequest,
) -> None:
    clock = Clock()
    faults = BleFaults(LinkFaults(_seeded(request)), clock)
    faults.arm(WireFault("disconnect", D2H, 300))
    assert faults.take_hang_up() and not faults.take_hang_up()
    assert faults(D2H, b"gone") == [] and faults(H2D, b"gone too") == []
    clock.now += 0.3
    assert faults(D2H, b"back") == [(0.0, b"back")]


def test_corruption_is_refused_and_never_drawn(request: pytest.FixtureRequest) -> None:
    faults = BleFaults(LinkFaults(_seeded(request)), Clock())
    with pytest.raises(ValueError, match="not a BLE fault"):
        faults.arm(WireFault("corrupt", D2H, 1))
    with pytest.raises(ValueError, match="not a BLE fault"):
        faults.draw(("corrupt", "drop"))
    drawn = {faults.draw().kind for _ in range(200)}
    assert "corrupt" not in drawn and drawn <= set(BLE_FAULT_KINDS)


def test_seeded_faults_deliver_only_whole_chunks_in_order(request: pytest.FixtureRequest) -> None:
    clock = Clock()
    faults = BleFaults(LinkFaults(_seeded(request)), clock)
    sent = [i.to_bytes(2, "big") * (1 + i % 10) for i in range(300)]
    delivered: list[bytes] = []
    for i, chunk in enumerate(sent):
        if i % 10 == 0:
            faults.draw(("drop", "duplicate", "delay"))
        clock.now += 0.01
        delivered += [data for _, data in faults(D2H, chunk)]
    # Every delivery is one whole chunk sent, in the order sent (a duplicate right behind).
    at = 0
    for data in delivered:
        at = sent.index(data, max(0, at - 1))
        assert sent[at] == data
