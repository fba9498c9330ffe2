"""Approvals (SPEC §11.5) end to end: an approver's signed requests over a real Mosquitto to a
running gateway with a simulated seal; the results it signs; every refusal the gateway MUST
make, recorded, alarmed and with nothing queued; results kept across a restart and a broker
outage; a bundle that sealink-verify accepts; the CLI on both sides."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

from approvals_rig import TIMEOUT_S, _body, _seal, _window
from conftest import DEVICE, GW, PREFIX, Approvers, GatewayFiles, run, running, sealink, until
from sealink.approvals import ACTIONS, ApprovalClient, ApproverKey, build_request, verify_result
from sealink.config import Config, load_config
from sealink.gateway.actions import CommandDone
from sealink.ledger.approvals import ApprovalEntry
from sealink_sim.broker import Mosquitto
from sealink_sim.simdevice import SimChip
from sealink_verify.cli import EXIT_VERIFIED
from sealink_verify.cli import main as verify
from sealink_verify.mqtt import verify_message
from sealproto import messages
from tap_rig import Tap

REQUEST_TOPIC = f"{PREFIX}/cmd/{GW}/request"
ALARMS = f"{PREFIX}/gateway/{GW}/alarms"


@asynccontextmanager
async def _client(
    config: Config, files: GatewayFiles, key: ApproverKey, name: str = "erp"
) -> AsyncIterator[ApprovalClient]:
    async with ApprovalClient(config.mqtt, key, name, PREFIX, GW, files.key.public_raw()) as client:
        await client.wait_connected(TIMEOUT_S)
        yield client


async def _collect(
    client: ApprovalClient, request: str, state: str, n: int
) -> list[dict[str, Any]]:
    """Every result of `request` until the n-th in `state` (each result is an event)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT_S), aclosing(client.results(request)) as results:
        async for result in results:
            seen.append(result)
            if sum(r["state"] == state for r in seen) == n:
                return seen
    raise AssertionError("unreachable: results() ends only by the timeout")


def test_a_permit_requested_while_the_seal_is_away_is_delivered_used_and_waited_for(
    files: GatewayFiles, approvers: Approvers, conf: Path
) -> None:
    config = load_config(conf)
    digest = "ab" * 32

    async def body() -> None:
        async with running(config) as gateway, _client(config, files, approvers.erp) as client:
            await gateway.approvals.ready(TIMEOUT_S)
            request = await client.request("permit", DEVICE, **_window(2, document_sha256=digest))
            queued = await client.wait(request, {"queued"}, TIMEOUT_S)
            assert queued["permit"] == 1 and queued["document_sha256"] == digest
            async with _seal(gateway, files) as sim:
                delivered = await client.wait(request, {"delivered"}, TIMEOUT_S)
                assert delivered["command"] == queued["command"]
                await sim.stamp(2, permit=1)
                await sim.stamp(1, permit=0)  # another permit's: not counted
                results = await _collect(client, request, "used", 2)
                used = [r for r in results if r["state"] == "used"]
                assert [(r["used"], r["count"]) for r in used] == [(1, 2), (2, 2)]
                # The CLI on the gateway host waits for the seal's answer in the ledger.
                waited = await asyncio.to_thread(
                    sealink, "permits", "issue", "--config", str(conf), DEVICE, "--count", "1",
                    "--wait", "--timeout", str(TIMEOUT_S),
                )  # fmt: skip
                assert waited.returncode == 0, waited.stderr
                assert json.loads(waited.stdout.splitlines()[-1])["state"] == "done"
            assert [r["state"] for r in results] == ["queued", "delivered", "used", "used"]

    run(body())
    ledger = files.ledger()
    try:
        (row,) = ledger.approval_requests()
        assert (row.outcome, row.state, row.approver, row.permit) == ("accepted", "used", "erp", 1)
        assert row.body["requested_by"] == "erp" and row.body["document_sha256"] == digest
        assert not ledger.pending_approval_results()  # every result acknowledged by the broker
    finally:
        ledger.close()


# every refusal the gateway MUST make -----------------------------------------------------------


def _refusal_cases(approvers: Approvers, old: ApproverKey) -> list[tuple[str, bytes, str, str]]:
    """(case = the correlation data, payload, refusal reason, the approver its result goes to)."""
    erp, now_ms = approvers.erp, int(time.time() * 1000)
    other_gateway = f"{PREFIX}/cmd/gw-other/request"

    def signed(key: ApproverKey, name: str, body: dict[str, Any], **kw: Any) -> bytes:
        return build_request(key, name, kw.pop("topic", REQUEST_TOPIC), body, **kw)

    return [
        ("forged", signed(ApproverKey.generate(), "erp", _body("forged")), "bad_signature", "erp"),
        ("unknown", signed(erp, "nobody", _body("unknown")), "unknown_approver", "nobody"),
        ("revoked", signed(old, "old", _body("revoked")), "unknown_approver", "old"),
        ("not-allowed", signed(approvers.viewer, "viewer", _body("not-allowed")), "not_allowed",
         "viewer"),
        ("stale", signed(erp, "erp", _body("stale"), now_ms=now_ms - 600_000), "stale", "erp"),
        ("wrong-topic", signed(erp, "erp", _body("wrong-topic"), topic=other_gateway), "invalid",
         "erp"),
        ("zero-count", signed(erp, "erp", _body("zero-count", count=0)), "invalid", "erp"),
        ("window", signed(erp, "erp", _body("window", not_before_s=2_000_000_000)), "invalid",
         "erp"),
        ("no-device", signed(erp, "erp", _body("no-device", device="seal-nowhere")), "invalid",
         "erp"),
    ]  # fmt: skip


def _by_correlation(tap: Tap, key: bytes) -> dict[str, dict[str, Any]]:
    got = {}
    for m in list(tap.got):
        correlation = getattr(m.properties, "CorrelationData", None)
        if m.topic.startswith(f"{PREFIX}/cmd/{GW}/result/") and correlation:
            got[correlation.decode()] = verify_result(bytes(m.payload), key, m.topic)
    return got


def test_every_refusal_is_named_recorded_alarmed_and_queues_nothing(
    files: GatewayFiles, approvers: Approvers, conf: Path, broker: Mosquitto, tap_factory: Any
) -> None:
    old = ApproverKey.generate()
    ledger = files.ledger()
    ledger.add_approver("old", old.public_raw(), ACTIONS)
    ledger.revoke_approver("old")
    ledger.close()
    config = load_config(conf)
    tap = tap_factory(broker.port, [f"{PREFIX}/cmd/{GW}/result/#", ALARMS])
    gw_key = files.key.public_raw()
    cases = _refusal_cases(approvers, old)
    good = build_request(approvers.erp, "erp", REQUEST_TOPIC, _body("good"))
    again = build_request(approvers.erp, "erp", REQUEST_TOPIC, _body("good", count=5))

    def send(sends: list[tuple[str, bytes]]) -> None:
        for case, payload in sends:
            tap.publish(
                REQUEST_TOPIC,
                payload,
                ResponseTopic=f"{PREFIX}/cmd/{GW}/result/whoever",  # not the approver's
                CorrelationData=case.encode(),
            )

    async def body() -> None:
        first = [(c, p) for c, p, _, _ in cases] + [("good", good)]
        async with running(config) as gateway:
            await gateway.approvals.ready(TIMEOUT_S)
            send(first)
            await until(
                lambda: len(_by_correlation(tap, gw_key)) == len(first),
                TIMEOUT_S,
                "a result for every request",
            )
        # The next run still knows the seq and the request id it accepted (the ledger's).
        async with running(config) as gateway:
            await gateway.approvals.ready(TIMEOUT_S)
            send([("replayed", good), ("duplicate", again)])
            await until(
                lambda: len(_by_correlation(tap, gw_key)) == len(first) + 2,
                TIMEOUT_S,
                "the replay's and the duplicate's results",
            )
            await until(lambda: len(tap.on(ALARMS)) >= len(cases) + 1, TIMEOUT_S, "an alarm each")

    run(body())
    results = _by_correlation(tap, gw_key)
    for case, _, reason, _ in cases:
        assert (results[case]["state"], results[case]["reason"]) == ("refused", reason), case
    assert [results[c]["field"] for c in ("wrong-topic", "zero-count", "window", "no-device")] == [
        "topic",
        "count",
        "not_before_s",
        "device",
    ]
    assert "revoked" in results["revoked"]["detail"]
    assert results["replayed"]["reason"] == "replay"
    # The same request id with a fresh seq: the first one's state, and its command, not a second.
    assert results["duplicate"]["state"] == "queued"
    assert results["duplicate"]["command"] == results["good"]["command"]
    assert results["duplicate"]["count"] == 1
    # Results go to the approver's own result topic: "whoever" was not the approver's.
    topics = {m.topic for m in tap.got if m.topic != ALARMS}
    assert topics == {f"{PREFIX}/cmd/{GW}/result/{a}" for a in ("erp", "nobody", "old", "viewer")}
    alarms = [verify_message(ALARMS, p, {GW: [gw_key]}).body for p in tap.on(ALARMS)]
    refused = sorted((a["request"], a["refusal"]) for a in alarms)
    expected = [(c, r) for c, _, r, _ in cases] + [("good", "replay")]
    assert refused == sorted(expected)
    assert {a["reason"] for a in alarms} == {"approval_refused"}
    ledger = files.ledger()
    try:
        rows = ledger.approval_requests()
        outcomes = sorted((r.request, r.outcome, r.refusal.reason if r.refusal else None)
                          for r in rows)  # fmt: skip
        assert outcomes == sorted(
            [(c, "refused", r) for c, _, r, _ in cases]
            + [("good", "accepted", None), ("good", "refused", "replay"),
               ("good", "duplicate", None)]
        )  # fmt: skip
        assert [c.body["count"] for c in ledger.commands(DEVICE)] == [1]  # the good one only
    finally:
        ledger.close()


# what survives ------------------------------------------------------------------------------


def test_results_survive_a_gateway_restart_and_a_broker_outage(
    files: GatewayFiles, approvers: Approvers, conf: Path, broker: Mosquitto
) -> None:
    """Queued in one run, delivered in the next (the ledger ties the seal's RESULT to the
    request); a `used` made while the broker is down, the gateway stopped before it came back,
    is sent by the next run."""
    config = load_config(conf)

    async def body() -> None:
        async with _client(config, files, approvers.erp) as client:
            async with running(config) as gateway:
                await gateway.approvals.ready(TIMEOUT_S)
                request = await client.request("permit", DEVICE, **_window(2))
                await client.wait(request, {"queued"}, TIMEOUT_S)
            async with running(config) as gateway, _seal(gateway, files) as sim:
                await client.wait(request, {"delivered"}, TIMEOUT_S)
                broker.stop()
                await sim.stamp(1, permit=1)
                await sim.wait_acked(1)
                await until(
                    lambda: bool(files_pending()), TIMEOUT_S, "the `used` result kept unsent"
                )
            broker.start()
            await client.wait_connected(TIMEOUT_S)
            async with running(config):
                used = await client.wait(request, {"used"}, TIMEOUT_S)
                assert (used["used"], used["count"]) == (1, 2)

    def files_pending() -> list[Any]:
        ledger = files.ledger()
        try:
            return ledger.pending_approval_results()
        finally:
            ledger.close()

    run(body())
    assert not files_pending()


def test_a_request_sent_while_the_gateway_is_away_waits_at_the_broker_and_is_answered(
    files: GatewayFiles, approvers: Approvers, conf: Path
) -> None:
    """The desk's session is persistent: once it has subscribed, a request published while
    the gateway is stopped is queued by the broker and judged by the next run (with a clean
    session the broker would drop it and the approver would have to send it again)."""
    config = load_config(conf)

    async def body() -> None:
        async with _client(config, files, approvers.erp) as client:
            async with running(config) as gateway:
                await gateway.approvals.ready(TIMEOUT_S)
            request = await client.request("permit", DEVICE, **_window(1))
            async with running(config):
                result = await client.wait(request, {"queued"}, TIMEOUT_S)
                assert result["permit"] == 1

    run(body())


def test_a_bundle_request_returns_a_bundle_sealink_verify_accepts(
    files: GatewayFiles, approvers: Approvers, conf: Path, tmp_path: Path
) -> None:
    config = load_config(conf)

    async def body() -> dict[str, Any]:
        async with running(config) as gateway, _seal(gateway, files) as sim:
            await sim.stamp(2)
            await sim.wait_acked(2)
            await gateway.checkpoints.make()
            async with _client(config, files, approvers.viewer, "viewer") as client:
                await gateway.approvals.ready(TIMEOUT_S)
                missing = await client.request("bundle", DEVICE, counter=9)
                refused = await client.wait(missing, {"done", "refused"}, TIMEOUT_S)
                assert refused["reason"] == "not_found", refused
                request = await client.request("bundle", DEVICE, counter=2)
                return await client.wait(request, {"done", "refused"}, TIMEOUT_S)

    done = run(body())
    assert done["state"] == "done", done
    path = tmp_path / "seal-2.bundle.json"
    path.write_bytes(base64.b64decode(done["bundle"]))
    pem = tmp_path / "gateway.pem"
    pem.write_bytes(files.key.public_pem())
    seal_key = SimChip.of(files.device_keys[DEVICE]).public.hex()
    pinned = ["--gateway-key", str(pem), "--seal-key", seal_key]
    assert verify(["bundle", str(path), *pinned]) == EXIT_VERIFIED


# the command lines ----------------------------------------------------------------------------


def test_approvers_cli_registers_lists_and_revokes_and_approve_waits_for_delivery(
    files: GatewayFiles, conf: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "erp.key"
    made = sealink("approvers", "keygen", "--out", str(key_file))
    assert made.returncode == 0 and key_file.stat().st_mode & 0o777 == 0o600
    public = json.loads(made.stdout)["public_key"]
    assert public not in key_file.read_text()  # PEM of the private key, not the hex printed
    c = ["--config", str(conf)]
    added = sealink("approvers", "add", *c, "erp", "--public-key", public, "--actions", "permit")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["kid"] == json.loads(made.stdout)["kid"]
    again = sealink("approvers", "add", *c, "erp", "--public-key", public)
    assert again.returncode == 2 and "already registered" in again.stderr
    bad = sealink("approvers", "add", *c, "e/rp", "--public-key", public)
    assert bad.returncode == 2 and "approver name" in bad.stderr
    config = load_config(conf)
    gateway_key = files.key.public_raw().hex()
    approve = ["approve", "permit", *c, "--key", str(key_file), "--approver", "erp"]
    approve += ["--gateway", GW, "--gateway-key", gateway_key, "--timeout", str(TIMEOUT_S)]

    async def body() -> None:
        async with running(config) as gateway, _seal(gateway, files):
            await gateway.approvals.ready(TIMEOUT_S)
            waited = await asyncio.to_thread(sealink, *approve, DEVICE, "--count", "3", "--wait")
            assert waited.returncode == 0, waited.stderr
            states = [json.loads(line)["state"] for line in waited.stdout.splitlines()]
            assert states == ["queued", "delivered"]
            bundle = approve.copy()
            bundle[1] = "bundle"
            refused = await asyncio.to_thread(
                sealink, *[a for a in bundle if a not in ("permit",)], DEVICE, "1"
            )
            assert refused.returncode == 1 and "not_allowed" in refused.stderr

    run(body())
    assert sealink("approvers", "revoke", *c, "erp").returncode == 0
    listed = json.loads(sealink("approvers", "list", *c, "--json").stdout)
    assert (listed["approver"], listed["actions"]) == ("erp", ["permit"])
    assert listed["revoked_ms"] is not None and listed["highest_seq"] > 0
    gone = sealink("approvers", "revoke", *c, "erp")
    assert gone.returncode == 2 and "no registered approver erp" in gone.stderr


# the other actions, the seal's refusal, a window that closes ---------------------------------


def test_revoke_release_expiry_and_the_seals_refusal_each_get_their_state(
    files: GatewayFiles, approvers: Approvers, conf: Path
) -> None:
    config = load_config(conf)

    async def body() -> None:
        async with running(config) as gateway, _client(config, files, approvers.erp) as client:
            await gateway.approvals.ready(TIMEOUT_S)
            async with _seal(gateway, files) as sim:
                now = int(time.time())
                short = {"count": 2, "not_before_s": now - 60, "not_after_s": now + 2}
                request = await client.request("permit", DEVICE, **short)
                await client.wait(request, {"delivered"}, TIMEOUT_S)
                await sim.stamp(1, permit=1)
                expired = await client.wait(request, {"expired"}, TIMEOUT_S)
                assert (expired["used"], expired["count"]) == (1, 2)
                revoke = await client.request("revoke", DEVICE, permit=1)
                assert (await client.wait(revoke, {"done", "refused"}, TIMEOUT_S))[
                    "state"
                ] == "done"
                # The simulated seal takes every command; what a real one answers EXPIRED to
                # (SPEC §7) is handed to the desk as the session would hand it.
                other = await client.request("permit", DEVICE, **_window(1))
                queued = await client.wait(other, {"queued"}, TIMEOUT_S)
                await client.wait(other, {"delivered"}, TIMEOUT_S)
            refused = await client.request("permit", DEVICE, **_window(1))
            command = (await client.wait(refused, {"queued"}, TIMEOUT_S))["command"]
            gateway.command_done(CommandDone(command, "failed", messages.R_EXPIRED))
            seal_said = await client.wait(refused, {"refused"}, TIMEOUT_S)
            assert (seal_said["reason"], seal_said["result"]) == ("expired", messages.R_EXPIRED)
            assert seal_said["result_name"] == "expired" and queued["command"] < command
            # release: refused while the seal is not quarantined, done once it is
            release = await client.request("release", DEVICE, note="checked the seal")
            not_held = await client.wait(release, {"done", "refused"}, TIMEOUT_S)
            assert (not_held["state"], not_held["field"]) == ("refused", "device")
            await gateway.db(gateway.ledger.quarantine_device, DEVICE, "tester", "held")
            release = await client.request("release", DEVICE, note="checked the seal")
            assert (await client.wait(release, {"done", "refused"}, TIMEOUT_S))["state"] == "done"

    run(body())
    ledger = files.ledger()
    try:
        actions = ledger.operator_actions()
        assert [(a.action, a.operator) for a in actions][-1] == ("release", "approver erp (erp)")
    finally:
        ledger.close()


def test_a_request_accepted_just_before_a_crash_is_answered_by_the_next_run(
    files: GatewayFiles, approvers: Approvers, conf: Path
) -> None:
    """The ledger row and its command are one transaction, the first result another: a gateway
    killed between them answers `queued` when it starts again, and delivers the permit."""
    ledger = files.ledger()
    try:
        row = ledger.record_request(
            ApprovalEntry(
                approver="erp",
                request="po-crash",
                body=_body("po-crash"),
                seq=1,
                response_topic=f"{PREFIX}/cmd/{GW}/result/erp",
                correlation=b"po-crash",
                refusal=None,
            )
        )
        assert (row.outcome, row.last) == ("accepted", None)
    finally:
        ledger.close()
    config = load_config(conf)

    async def body() -> None:
        async with _client(config, files, approvers.erp) as client, running(config) as gateway:
            assert (await client.wait("po-crash", {"queued"}, TIMEOUT_S))["permit"] == 1
            async with _seal(gateway, files):
                await client.wait("po-crash", {"delivered"}, TIMEOUT_S)

    run(body())
