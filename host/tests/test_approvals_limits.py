"""Approval refusal limits (SPEC §11.5): a flood of forged requests over a real Mosquitto to a
running gateway is recorded only up to the limits and counted in one signed summary beyond
them; a valid request in the middle of it is served; refusals a registered key signed are all
recorded and answered; the limits' config. The limiter's clock is the test's (frozen, moved by
hand), so no bucket refill or summary interval is waited for."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from pathlib import Path
from typing import Any

from approvals_rig import TIMEOUT_S, _body
from conftest import GW, PREFIX, Approvers, GatewayFiles, run, running, until
from sealink.approvals import ApproverKey, build_request, verify_result
from sealink.config import ApprovalsConfig, Config, load_config
from sealink.gateway.limits import REFUSAL_SUMMARY_MS, SUMMARY_NAMES, RefusalLimiter
from sealink.ledger.approvals import ApprovalRow
from sealink_sim.broker import Mosquitto
from sealink_verify.mqtt import verify_message
from tap_rig import Tap

REQUEST_TOPIC = f"{PREFIX}/cmd/{GW}/request"
RESULTS = f"{PREFIX}/cmd/{GW}/result/#"
T0_MS = 1_800_000_000_000
FLOOD = 2000


# the limiter alone (sans-IO) -----------------------------------------------------------------


def test_refusals_beyond_the_buckets_are_counted_into_one_summary_that_adds_up(seed: int) -> None:
    rng = random.Random(seed)
    limiter = RefusalLimiter(per_name_per_min=3, per_min=10)
    names = [f"n{k}" for k in range(40)] + [None]
    admitted: Counter[str | None] = Counter()
    folded = 0
    for _ in range(500):
        name = rng.choice(names)
        if limiter.admit(name, T0_MS):
            admitted[name] += 1
        else:
            limiter.fold("unknown_approver", name, False, T0_MS + 1)
            folded += 1
    assert sum(admitted.values()) == 10 and max(admitted.values()) <= 3
    assert limiter.take(T0_MS + REFUSAL_SUMMARY_MS) is None  # not due: the first was at T0 + 1
    summary = limiter.take(T0_MS + 1 + REFUSAL_SUMMARY_MS)
    assert summary is not None and limiter.take(T0_MS + 10 * REFUSAL_SUMMARY_MS) is None
    assert summary["count"] == folded == 490 and summary["by_reason"] == {"unknown_approver": 490}
    assert len(summary["names"]) == SUMMARY_NAMES
    assert sum(summary["names"].values()) + summary["other_names"] == 490
    assert (summary["first_ms"], summary["last_ms"], summary["recorded"]) == (
        T0_MS + 1,
        T0_MS + 1,
        0,
    )
    # A minute later both buckets are full again.
    assert limiter.admit("n0", T0_MS + 60_000)


def test_the_per_name_buckets_stay_bounded_under_ever_new_names() -> None:
    limiter = RefusalLimiter(per_name_per_min=2, per_min=5)
    for i in range(100_000):
        limiter.admit(f"name-{i}", T0_MS + i * 10)  # 100 names a second, each new
    assert len(limiter) <= 4 * 5


# a running gateway ---------------------------------------------------------------------------


def _send(tap: Tap, sends: list[tuple[str, bytes]]) -> None:
    for correlation, payload in sends:
        tap.publish(
            REQUEST_TOPIC,
            payload,
            ResponseTopic=f"{PREFIX}/cmd/{GW}/result/whoever",
            CorrelationData=correlation.encode(),
        )


def _results(tap: Tap, key: bytes) -> dict[str, dict[str, Any]]:
    got = {}
    for m in list(tap.got):
        correlation = getattr(m.properties, "CorrelationData", None)
        if correlation:
            got[correlation.decode()] = verify_result(bytes(m.payload), key, m.topic)
    return got


def _ledger_state(files: GatewayFiles) -> tuple[list[ApprovalRow], list[dict[str, Any]]]:
    """(every approval_requests row, the verified body of every approval alarm) of the ledger.
    Only the approval alarms: the gateway's others (say, its MQTT link's) are not counted."""
    ledger = files.ledger()
    try:
        rows = ledger.approval_requests()
        alarms = [
            verify_message(a.topic, a.payload, {GW: [files.key.public_raw()]}).body
            for a in ledger.alarms()
        ]
    finally:
        ledger.close()
    return rows, [a for a in alarms if str(a["reason"]).startswith("approval_")]


def _with_limits(config: Config, **limits: int) -> Config:
    return dataclasses.replace(config, approvals=dataclasses.replace(config.approvals, **limits))


def _forgeries(rng: random.Random) -> list[tuple[str, bytes, str | None]]:
    """FLOOD forged requests: (correlation, payload, the name it claims). Names are drawn from
    a pool that holds the registered approvers' names too (signed by another key: a bad
    signature) and unregistered ones; some payloads are not a request at all."""
    forger = ApproverKey.generate()
    pool = ["erp", "viewer"] + [f"forger-{rng.randrange(10**6)}" for _ in range(60)]
    sends: list[tuple[str, bytes, str | None]] = []
    for i in range(FLOOD):
        if rng.random() < 0.1:
            sends.append((f"f{i}", rng.randbytes(rng.randrange(1, 200)), None))
            continue
        name = rng.choice(pool)
        payload = build_request(forger, name, REQUEST_TOPIC, _body(f"r{i}"), seq=i + 1)
        sends.append((f"f{i}", payload, name))
    return sends


def _individually_handled(
    sends: list[tuple[str, bytes, str | None]], limits: ApprovalsConfig
) -> set[str]:
    """Which refusals get tokens with the clock frozen (no refill): the oracle."""
    total = limits.refusals_per_min
    per_name: Counter[str | None] = Counter()
    handled = set()
    for correlation, _, name in sends:
        if total and per_name[name] < limits.refusals_per_approver_per_min:
            total -= 1
            per_name[name] += 1
            handled.add(correlation)
    return handled


def test_a_flood_of_forged_requests_is_summarised_and_a_valid_permit_in_it_is_served(
    files: GatewayFiles,
    approvers: Approvers,
    conf: Path,
    broker: Mosquitto,
    tap_factory: Any,
    seed: int,
) -> None:
    rng = random.Random(seed)
    config = load_config(conf)
    limits = config.approvals  # the defaults
    tap = tap_factory(broker.port, [RESULTS])
    gw_key = files.key.public_raw()
    forged = _forgeries(rng)
    handled = _individually_handled(forged, limits)
    named = {c for c, _, n in forged if c in handled and n is not None}  # these get results
    valid = build_request(approvers.erp, "erp", REQUEST_TOPIC, _body("valid"))
    # Requests are handled one at a time in arrival order: once the result of `end` (valid
    # too) is in, every request of the flood has been handled.
    end = build_request(approvers.erp, "erp", REQUEST_TOPIC, _body("end"))
    closer = build_request(ApproverKey.generate(), "closer", REQUEST_TOPIC, _body("closer"))
    middle = FLOOD // 2
    sends = [(c, p) for c, p, _ in forged[:middle]] + [("valid", valid)]
    sends += [(c, p) for c, p, _ in forged[middle:]] + [("end", end)]
    clock = [T0_MS]

    async def body() -> None:
        async with running(config) as gateway:
            gateway.approvals.clock = lambda: clock[0]
            await gateway.approvals.ready(TIMEOUT_S)
            await asyncio.to_thread(_send, tap, sends)
            await until(lambda: "end" in _results(tap, gw_key), 120, "the flood handled")
            # The summary's minute passes; the next refusal closes it (and is itself handled
            # one by one: the buckets are full again).
            clock[0] += REFUSAL_SUMMARY_MS
            await asyncio.to_thread(_send, tap, [("closer", closer)])
            await until(lambda: "closer" in _results(tap, gw_key), 120, "the closer's result")
            # Results go to many topics: each one's order is kept, not their order among them.
            await until(lambda: len(_results(tap, gw_key)) >= len(named) + 3, 120, "all results")

    run(body(), timeout=300)
    results = _results(tap, gw_key)
    assert results["valid"]["state"] == results["end"]["state"] == "queued"
    rows, alarms = _ledger_state(files)
    by_outcome = Counter(r.outcome for r in rows)
    assert by_outcome == {"refused": len(handled) + 1, "accepted": 2, "suppressed": 1}
    assert len(handled) <= limits.refusals_per_min
    refused = [r for r in rows if r.outcome == "refused"]
    assert (
        max(Counter(r.approver for r in refused).values()) <= limits.refusals_per_approver_per_min
    )
    # Results were signed for the refusals handled one by one, only (none to no name).
    assert {c for c in results if c.startswith("f")} == named
    (summary_row,) = [r for r in rows if r.outcome == "suppressed"]
    summary = summary_row.body
    assert summary["count"] == FLOOD - len(handled) and summary["recorded"] == 0
    assert sum(summary["by_reason"].values()) == summary["count"]
    assert set(summary["by_reason"]) <= {"bad_signature", "unknown_approver"}
    assert len(summary["names"]) <= SUMMARY_NAMES
    assert sum(summary["names"].values()) + summary["other_names"] == summary["count"]
    assert summary["first_ms"] == summary["last_ms"] == T0_MS
    # Exactly one summary alarm; it and the individual alarms account for every refusal sent.
    kinds = Counter(a["reason"] for a in alarms)
    assert kinds == {"approval_refused": len(handled) + 1, "approval_refusals_suppressed": 1}
    (alarm,) = [a for a in alarms if a["reason"] == "approval_refusals_suppressed"]
    assert {k: alarm[k] for k in summary} == summary
    assert kinds["approval_refused"] + alarm["count"] == FLOOD + 1


def test_refusals_a_registered_key_signed_are_all_recorded_and_answered_beyond_the_limits(
    files: GatewayFiles, approvers: Approvers, conf: Path, broker: Mosquitto, tap_factory: Any
) -> None:
    config = _with_limits(load_config(conf), refusals_per_approver_per_min=3, refusals_per_min=5)
    tap = tap_factory(broker.port, [RESULTS])
    gw_key = files.key.public_raw()
    # viewer may only fetch bundles: each permit it asks for is `not_allowed`, each a new seq.
    accountable = [
        (f"v{i}", build_request(approvers.viewer, "viewer", REQUEST_TOPIC, _body(f"v{i}")))
        for i in range(6)
    ]
    nobody = ApproverKey.generate()
    forged = [
        (f"n{i}", build_request(nobody, "nobody", REQUEST_TOPIC, _body(f"n{i}"))) for i in range(4)
    ]
    end = [("end", build_request(approvers.erp, "erp", REQUEST_TOPIC, _body("end")))]
    clock = [T0_MS]

    async def body() -> None:
        async with running(config) as gateway:
            gateway.approvals.clock = lambda: clock[0]
            await gateway.approvals.ready(TIMEOUT_S)
            await asyncio.to_thread(_send, tap, accountable + forged + end)
            await until(lambda: "end" in _results(tap, gw_key), TIMEOUT_S, "all handled")
            await until(lambda: len(_results(tap, gw_key)) >= 9, TIMEOUT_S, "all results")
        # The gateway stopped with the summary still open: it was recorded and alarmed then.

    run(body())
    results = _results(tap, gw_key)
    assert results.pop("end")["state"] == "queued"
    assert {c: (r["state"], r["reason"]) for c, r in results.items()} == {
        **{c: ("refused", "not_allowed") for c, _ in accountable},
        **{c: ("refused", "unknown_approver") for c, _ in forged[:2]},  # the total's last two
    }
    rows, alarms = _ledger_state(files)
    assert sorted(r.request for r in rows if r.outcome == "refused") == sorted(
        [c for c, _ in accountable] + ["n0", "n1"]
    )
    (summary_row,) = [r for r in rows if r.outcome == "suppressed"]
    summary = summary_row.body
    assert (summary["count"], summary["recorded"]) == (5, 3)
    assert summary["by_reason"] == {"not_allowed": 3, "unknown_approver": 2}
    assert summary["names"] == {"viewer": 3, "nobody": 2}
    individual = [a for a in alarms if a["reason"] == "approval_refused"]
    assert sorted(a["request"] for a in individual) == ["n0", "n1", "v0", "v1", "v2"]
    assert [a["count"] for a in alarms if a["reason"] == "approval_refusals_suppressed"] == [5]


def test_copies_of_a_signed_request_are_replays_and_limited_like_forgeries(
    files: GatewayFiles, approvers: Approvers, conf: Path, broker: Mosquitto, tap_factory: Any
) -> None:
    """A captured request is validly signed, and anybody on the broker can send it again: its
    copies are `replay`s, recorded only within the limits."""
    config = _with_limits(load_config(conf), refusals_per_approver_per_min=3, refusals_per_min=10)
    tap = tap_factory(broker.port, [RESULTS])
    gw_key = files.key.public_raw()
    captured = build_request(approvers.erp, "erp", REQUEST_TOPIC, _body("captured"))
    copies = [(f"c{i}", captured) for i in range(8)]  # c0 is the original
    end = [("end", build_request(approvers.erp, "erp", REQUEST_TOPIC, _body("end")))]

    async def body() -> None:
        async with running(config) as gateway:
            gateway.approvals.clock = lambda: T0_MS
            await gateway.approvals.ready(TIMEOUT_S)
            await asyncio.to_thread(_send, tap, copies + end)
            await until(lambda: "end" in _results(tap, gw_key), TIMEOUT_S, "all handled")
            await until(lambda: len(_results(tap, gw_key)) >= 5, TIMEOUT_S, "all results")

    run(body())
    results = _results(tap, gw_key)
    assert {c: (r["state"], r.get("reason")) for c, r in results.items()} == {
        "c0": ("queued", None),
        **{f"c{i}": ("refused", "replay") for i in (1, 2, 3)},
        "end": ("queued", None),
    }
    rows, alarms = _ledger_state(files)
    assert Counter(r.outcome for r in rows) == {"accepted": 2, "refused": 3, "suppressed": 1}
    (summary_row,) = [r for r in rows if r.outcome == "suppressed"]
    assert summary_row.body["by_reason"] == {"replay": 4} and summary_row.body["recorded"] == 0
    assert summary_row.body["names"] == {"erp": 4}
    assert Counter((a["reason"], a.get("count")) for a in alarms) == {
        ("approval_refused", None): 3,
        ("approval_refusals_suppressed", 4): 1,
    }
