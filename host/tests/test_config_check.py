"""`sealink config check`: the config, its files' modes and owners, the ledger and a real
MQTT CONNECT to a real Mosquitto, while the gateway on that config keeps running undisturbed."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

from conftest import GatewayFiles, run, running, sealink
from sealink_sim.broker import Mosquitto


def _toml(path: Path, files: GatewayFiles, port: int) -> Path:
    path.write_text(
        f'[gateway]\nid = "gw-test"\nkey_file = "{files.key_file}"\n'
        f'ledger = "{files.ledger_path}"\nlink_keys = "{files.link_keys}"\n'
        f'[mqtt]\nport = {port}\nprefix = "sealink-test"\n'
    )
    return path


def _checks(conf: Path) -> tuple[int, dict[str, dict[str, object]]]:
    done = sealink("config", "check", "--json", "--config", str(conf))
    report = json.loads(done.stdout)
    assert report["ok"] is (done.returncode == 0)
    return done.returncode, {c["check"]: c for c in report["checks"]}


def test_a_good_config_passes_while_its_gateway_runs_undisturbed(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto
) -> None:
    conf = _toml(tmp_path / "sealink.toml", files, broker.port)

    async def body() -> None:
        async with running(files.config(broker.port)) as gateway:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while not gateway.publisher.connected:
                assert loop.time() < deadline, "the gateway never reached the broker"
                await asyncio.sleep(0.02)
            code, checks = await asyncio.to_thread(_checks, conf)
            assert code == 0, checks
            assert checks["mqtt.connect"]["ok"] and "sealink-check-gw-test" in str(
                checks["mqtt.connect"]["detail"]
            )
            # The probe had an id of its own: the gateway's session was never taken over.
            assert gateway.publisher.connected

    run(body())
    log = broker.log_path.read_text()
    assert "New client connected" in log and "sealink-check-gw-test" in log
    assert "already connected" not in log  # Mosquitto's words for a session taken over


def test_each_problem_is_named_and_the_exit_is_2(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto
) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        closed_port = spare.getsockname()[1]  # nobody listens there once it is closed
    conf = _toml(tmp_path / "sealink.toml", files, closed_port)
    os.chmod(files.key_file, 0o644)
    os.chmod(files.link_keys, 0o640)
    files.ledger_path.rename(tmp_path / "elsewhere.sqlite")
    done = sealink("config", "check", "--config", str(conf))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    problems = [line for line in done.stderr.splitlines() if line.startswith("sealink: error: ")]
    assert len(problems) == 4, done.stderr
    text = done.stderr
    assert "gateway.key_file" in text and "chmod 600" in text
    assert "gateway.link_keys" in text
    assert "ledger" in text and "sealink ledger init" in text
    assert f"mqtt.tcp: 127.0.0.1:{closed_port}" in text
    assert not files.ledger_path.exists()  # the check created nothing


def test_a_config_that_does_not_parse_is_one_named_problem(tmp_path: Path) -> None:
    conf = tmp_path / "sealink.toml"
    conf.write_text('[gateway]\nid = "gw-test"\n')
    code, checks = _checks(conf)
    assert code == 2 and list(checks) == ["config"]
    assert "gateway" in str(checks["config"]["detail"])
