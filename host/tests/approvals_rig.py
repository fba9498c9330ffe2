"""Shared by the approval tests (SPEC §11.5): the test seal attached to a running gateway,
a permit's window and a permit request's body. The names are those they had in
test_approvals, kept so that moving them here changed no test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from conftest import DEVICE, GatewayFiles
from sealink.gateway.service import Gateway
from sealink_sim.pipe import pipe_pair
from sealink_sim.simdevice import SimDevice

TIMEOUT_S = 20.0


@asynccontextmanager
async def _seal(gateway: Gateway, files: GatewayFiles) -> AsyncIterator[SimDevice]:
    host, dev = pipe_pair("approvals")
    gateway.attach(host)
    async with SimDevice(DEVICE, files.device_keys[DEVICE], dev) as sim:
        async with asyncio.timeout(TIMEOUT_S):
            await sim.welcomed.wait()
        yield sim


def _window(count: int = 2, **fields: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"count": count, "not_before_s": now - 60, "not_after_s": now + 3600, **fields}


def _body(request: str, **fields: Any) -> dict[str, Any]:
    """A request body: a permit of one impression for the test seal."""
    return {
        "request": request,
        "action": "permit",
        "device": DEVICE,
        "requested_by": "A. Approver",
        **_window(1),
        **fields,
    }
