"""The console's approval clients keep an MQTT 5 session (a fixed client id, the [mqtt]
session_expiry_s): a result the gateway signs while the console is away waits at the broker and
arrives when it is back, without asking again (the re-ask stays the fallback for a session
that expired).

A real gateway and a real Mosquitto; the seal is simulated (SimDevice) on an in-process pipe.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from approvals_rig import TIMEOUT_S, _seal, _window
from conftest import DEVICE, GW, PREFIX, Approvers, GatewayFiles, run, running
from sealink.approvals import ApprovalClient
from sealink.config import load_config
from sealink.console.config import parse_console_config
from sealink.gateway.service import Gateway


async def _published(gateway: Gateway, request: str, state: str) -> None:
    """Until the gateway holds `state` for the request and the broker acknowledged its result
    (so the broker has queued it for an absent session)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while True:
        rows = await gateway.db(gateway.ledger.approval_requests)
        pending = await gateway.db(gateway.ledger.pending_approval_results)
        if any(r.request == request and r.state == state for r in rows) and not pending:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {TIMEOUT_S} s: {request} not {state}")
        await asyncio.sleep(0.05)


def test_a_result_sent_while_the_console_is_away_arrives_when_it_is_back(
    files: GatewayFiles, approvers: Approvers, conf: Path
) -> None:
    config = load_config(conf)
    pem = files.root / "gw.pem"
    pem.write_bytes(files.key.public_pem())
    console = parse_console_config(
        {
            "console": {"listen": "127.0.0.1:0", "data_dir": "d", "secret_key_file": "s",
                        "approver": "erp", "approver_key_file": "erp.key"},
            "mqtt": {"port": config.mqtt.port, "prefix": PREFIX},
            "gateways": [{"id": GW, "public_key": str(pem)}],
        },
        check_files=False,
    )  # fmt: skip
    client_id = console.approver_client_id(GW)
    assert client_id == f"sealink-console-erp-approver-{GW}"  # the same on every start

    def client() -> ApprovalClient:
        return ApprovalClient(
            console.mqtt, approvers.erp, "erp", PREFIX, GW, files.key.public_raw(),
            client_id=client_id, persistent=True,
        )  # fmt: skip

    async def body() -> None:
        async with running(config) as gateway:
            await gateway.approvals.ready(TIMEOUT_S)
            async with client() as first:
                await first.wait_connected(TIMEOUT_S)
                request = await first.request("permit", DEVICE, **_window(1))
                await first.wait(request, {"queued"}, TIMEOUT_S)
            # The console is away; the seal connects and takes the permit.
            async with _seal(gateway, files):
                await _published(gateway, request, "delivered")
                async with client() as back:  # nothing asked again
                    delivered = await back.wait(request, {"delivered"}, TIMEOUT_S)
                    assert delivered["request"] == request

    run(body(), timeout=90)
