"""The MQTT publisher runs in a child process: it must never outlive the gateway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import GatewayFiles
from sealink_sim.broker import Mosquitto

_GATEWAY = """
import asyncio, sys
from pathlib import Path
from sealink.config import Config, MqttConfig
from sealink.gateway.service import Gateway

async def main() -> None:
    config = Config(
        gateway_id="gw-orphan",
        key_file=Path(sys.argv[1]),
        ledger_path=Path(sys.argv[2]),
        link_keys=Path(sys.argv[2]).with_name("link-keys"),
        mqtt=MqttConfig(port=int(sys.argv[3]), prefix="sealink-test"),
    )
    async with Gateway(config) as gateway:
        await gateway.publisher.wait_connected(10)
        print("up", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_publisher_process_exits_when_the_gateway_is_killed(
    files: GatewayFiles, broker: Mosquitto
) -> None:
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _GATEWAY,
            str(files.key_file),
            str(files.ledger_path),
            str(broker.port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    children: list[int] = []
    try:
        assert gateway.stdout is not None
        assert gateway.stdout.readline().strip() == "up"
        children = _children(gateway.pid)
        assert children, "the gateway started no publisher process"
        gateway.send_signal(signal.SIGKILL)  # no cleanup code of the gateway runs
        gateway.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in children), "publisher outlived its gateway"
    finally:
        gateway.kill()
        gateway.wait(10)
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
