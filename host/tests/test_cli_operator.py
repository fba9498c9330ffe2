"""The operator's terminal commands (issue 12): `sealink events list` and `sealink alarms list`,
each as a snapshot and with `--follow`, on a ledger the real gateway wrote (a simulated seal
over an in-process pipe, a real Mosquitto for its outbox)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import provisioning_file, run, sealink, until
from sealink.cli.main import build_parser, main
from sealink.config import load_config
from sealink.gateway.service import Gateway
from sealink_sim.broker import Mosquitto
from sealink_sim.pipe import pipe_pair
from sealink_sim.simdevice import SimDevice
from sealproto import messages
from sealproto.messages import K_TYPE

_WAIT_S = 30.0


@pytest.fixture
def conf(tmp_path: Path, broker: Mosquitto) -> Path:
    path = tmp_path / "sealink.toml"
    path.write_text(
        '[gateway]\nid = "gw-op"\nkey_file = "keys/gateway.key"\nledger = "ledger.sqlite"\n'
        f'[mqtt]\nport = {broker.port}\nprefix = "op"\n'
    )
    assert main(["ledger", "init", "--config", str(path)]) == 0
    assert main(["keys", "init", "--config", str(path)]) == 0
    key_file = tmp_path / "seal-1.json"
    provisioning_file(key_file, "seal-1")
    assert (
        main(["devices", "add", "--config", str(path), "seal-1", "--key-file", str(key_file)]) == 0
    )
    return path


def test_help_of_the_operator_commands() -> None:
    parser = build_parser()
    for words in (["alarms"], ["alarms", "list"], ["events", "list"]):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*words, "--help"])
        assert exit_.value.code == 0, words
    for words in (["alarms", "list"], ["events", "list"]):
        args = parser.parse_args([*words, "-c", "x.toml", "--follow", "--json"])
        assert args.follow and args.json


def _device_key(conf: Path) -> bytes:
    return bytes.fromhex(json.loads((conf.parent / "seal-1.json").read_text())["key"])


def _alarm(code: int, detail: int) -> dict[int, Any]:
    return {
        K_TYPE: messages.ALARM,
        messages.AL_CODE: code,
        messages.AL_TIME: 1_700_000_000,
        messages.AL_DETAIL: detail,
    }


def _lines(*args: str) -> list[dict[str, Any]]:
    done = sealink(*args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def _stamp_and_alarm(conf: Path, sim_work: Callable[[SimDevice], Any]) -> None:
    async with Gateway(load_config(conf)) as gateway:
        host, dev = pipe_pair("op")
        gateway.attach(host)
        async with SimDevice("seal-1", _device_key(conf), dev) as sim:
            await sim_work(sim)


def test_events_and_alarms_are_listed_decoded_from_the_ledger(conf: Path) -> None:
    async def work(sim: SimDevice) -> None:
        await sim.stamp(2, permit=3, operator=42, time_s=1_700_000_000)
        await sim.stamp(1, kind=messages.KIND_TAMPER)
        await sim.wait_acked(3)
        await sim.send_session(_alarm(messages.AL_TAMPER, 5))
        ledger = load_config(conf).ledger_path
        await until(lambda: _has_alarm(ledger), _WAIT_S, "the ALARM stored in the outbox")

    run(_stamp_and_alarm(conf, work))
    config = ("--config", str(conf))
    events = _lines("events", "list", *config, "--json")
    assert [(e["counter"], e["kind"], e["permit"], e["operator"]) for e in events] == [
        (1, "impression", 3, 42),
        (2, "impression", 3, 42),
        (3, "tamper", 0, 0),
    ]
    assert all(e["device"] == "seal-1" and e["boot"] == 1 for e in events)
    assert events[0]["time_s"] == 1_700_000_000 and events[2]["time_s"] == 0
    assert _lines("events", "list", *config, "--json", "--since", "3") == events[2:]
    assert _lines("events", "list", *config, "--json", "--device", "seal-2") == []

    shown = sealink("events", "list", *config)
    header, *rows = shown.stdout.splitlines()
    assert header.split() == [
        "received", "device", "counter", "kind", "permit", "operator", "boot", "time"
    ]  # fmt: skip
    assert rows[0].split()[1:] == ["seal-1", "1", "impression", "3", "42", "1",
                                   "2023-11-14T22:13:20.000Z"]  # fmt: skip
    assert rows[2].split()[1:] == ["seal-1", "3", "tamper", "-", "-", "1", "unset"]

    alarms = _lines("alarms", "list", *config, "--json")
    device = [a for a in alarms if a["source"] == "device"]
    assert len(device) == 1, alarms
    assert device[0]["device"] == "seal-1" and device[0]["gateway"] == "gw-op"
    assert (device[0]["code"], device[0]["code_name"], device[0]["detail"]) == (
        messages.AL_TAMPER,
        "tamper",
        5,
    )
    assert _lines("alarms", "list", *config, "--json", "--device", "seal-2") == []
    table = sealink("alarms", "list", *config).stdout.splitlines()
    assert table[0].split() == ["time", "device", "source", "code", "code_name", "reason", "detail"]
    assert any(line.split()[1:] == ["seal-1", "device", "2", "tamper", "-", "5"] for line in table)


def _has_alarm(ledger: Path) -> bool:
    with contextlib.closing(sqlite3.connect(f"{ledger.as_uri()}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/alarms'").fetchone()
    return bool(row[0])


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Follower:
    """`sealink ... --follow` in a process of its own, its lines read by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sealink.cli", *args, "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent,
            # As a terminal's foreground command gets it: a suite started in the background by
            # a non-interactive shell ignores SIGINT, and a child inherits that (Python then
            # installs no KeyboardInterrupt handler, and Ctrl-C would do nothing).
            preexec_fn=_default_sigint,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, out: IO[str]) -> None:
        for line in out:
            self._lines.put(line)

    def _drain(self) -> None:
        while not self._lines.empty():
            self.seen.append(self._lines.get_nowait())

    @property
    def rows(self) -> list[dict[str, Any]]:
        self._drain()
        return [json.loads(line) for line in self.seen]

    def has(self, predicate: Callable[[dict[str, Any]], bool]) -> bool:
        return any(predicate(row) for row in self.rows)

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C, as a terminal sends it; (exit status, stderr)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"still running {_WAIT_S} s after Ctrl-C") from None
        return self.proc.returncode, err


def test_follow_prints_what_the_ledger_stores_until_ctrl_c(conf: Path) -> None:
    config = ("--config", str(conf))
    events = _Follower("events", "list", *config, "--json")
    alarms = _Follower("alarms", "list", *config, "--device", "seal-1", "--json")
    try:

        async def work(sim: SimDevice) -> None:
            await sim.stamp(1)
            await until(lambda: events.has(lambda e: e["counter"] == 1), _WAIT_S, "event 1")
            await sim.stamp(1, kind=messages.KIND_LOW_BATTERY, permit=9, operator=4)
            await until(lambda: events.has(lambda e: e["counter"] == 2), _WAIT_S, "event 2")
            # The second of each is stored after the first was printed: only following shows it.
            for name, code in (
                ("tamper", messages.AL_TAMPER),
                ("journal_full", messages.AL_JOURNAL_FULL),
            ):
                await sim.send_session(_alarm(code, 0))
                await until(
                    lambda name=name: alarms.has(lambda a: a.get("code_name") == name),
                    _WAIT_S,
                    f"the ALARM {name} followed",
                )

        run(_stamp_and_alarm(conf, work))
        first, second = events.rows  # each once, in order
        assert (first["counter"], first["kind"]) == (1, "impression")
        assert (second["counter"], second["kind"]) == (2, "low_battery")
        assert (second["permit"], second["operator"]) == (9, 4)
        assert [a["code_name"] for a in alarms.rows] == ["tamper", "journal_full"]
        assert all(a["device"] == "seal-1" for a in alarms.rows)
    finally:
        results = [events.interrupt(), alarms.interrupt()]
    for code, err in results:
        assert code == 0 and err == "", err  # quiet: no traceback, no message


def test_follow_stops_quietly_on_ctrl_c_before_anything_is_stored(conf: Path) -> None:
    for noun in ("events", "alarms"):
        follower = _Follower(noun, "list", "--config", str(conf))

        def header_shown(follower: _Follower = follower) -> bool:
            follower._drain()
            return bool(follower.seen)

        # The header is printed once the command runs: from then on Ctrl-C is the follower's.
        run(until(header_shown, _WAIT_S, f"the {noun} header"))
        code, err = follower.interrupt()
        assert code == 0 and err == "", err
        assert follower.seen[0].split()[0] == ("received" if noun == "events" else "time")


def _on_terminal(*args: str) -> tuple[int, str]:
    """`sealink ARGS` with its stderr on a terminal (a pty), as an operator runs it:
    (exit status, what the terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sealink.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=Path(__file__).parent,
    )
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end of the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return proc.wait(timeout=_WAIT_S), shown.decode()


def test_export_and_verify_show_progress_on_a_terminal_only(conf: Path, tmp_path: Path) -> None:
    async def work(sim: SimDevice) -> None:
        await sim.stamp(3)
        await sim.wait_acked(3)

    run(_stamp_and_alarm(conf, work))
    config = ("--config", str(conf))
    out = tmp_path / "events.jsonl"
    code, shown = _on_terminal("events", "export", *config, "--out", str(out))
    assert code == 0, shown
    assert "\rexported events 1 of 3\x1b[K" in shown and shown.endswith("\r\x1b[K"), repr(shown)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["counter"] for r in rows] == [1, 2, 3]  # the file holds rows only

    piped = sealink("events", "export", *config, "--out", str(tmp_path / "piped.jsonl"))
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert (tmp_path / "piped.jsonl").read_text() == out.read_text()
    to_stdout = _on_terminal("events", "export", *config)
    assert to_stdout == (0, ""), to_stdout  # rows on stdout: no line beside them

    pem = tmp_path / "gateway.pub.pem"
    pem.write_text(sealink("keys", "show", *config, "--format", "pem").stdout)
    seal_keys = tmp_path / "seal-keys.jsonl"
    seal_keys.write_text(sealink("devices", "list", *config).stdout)
    verify = ("verify", str(out), "--public-key", str(pem), "--seal-keys", str(seal_keys))
    code, shown = _on_terminal(*verify)
    assert code == 0, shown
    # The first read is drawn at once, later ones at most five times a second; the line is
    # erased before the verdict.
    drawn = re.escape(f"\rsealink verify: {out}: ") + r"\d+% read\x1b\[K"
    assert re.search(drawn + re.escape("\r\x1b[Ksealink verify: 3 events of 1 devices"), shown)
    assert "all verified" in shown, repr(shown)
    piped = sealink(*verify)
    assert piped.returncode == 0 and "\x1b" not in piped.stderr and "% read" not in piped.stderr
