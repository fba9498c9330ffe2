"""`sealink run`: the gateway service, until SIGTERM or SIGINT.

SIGHUP reloads the config file: ports added are opened, ports removed (or changed) closed,
unchanged ports keep their links and sessions, and the log level and format follow the file
(unless given on the command line). A file that does not load is logged and the running
config kept. Other settings take effect at the next start, and the reload says which.

Under systemd (tools/sealink.service, Type=notify) it says READY=1 once every port has been
tried and the broker answered, or after _READY_WAIT_S whatever came up: a seal on a working port
must not wait for an unplugged adapter or a broker outage (events are stored and acked while
the broker is away), and STATUS= tells what is up. WATCHDOG=1 comes from the event loop, so a
wedged loop is killed (SIGABRT, whose faulthandler dump names where it hung) and restarted.
SIGUSR1 dumps every thread's stack to stderr without stopping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import faulthandler
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

from sealink.cli.common import add_command, load, with_config
from sealink.config import Config
from sealink.errors import SealinkError
from sealink.logs import configure_logging
from sealink.sdnotify import Notifier

if TYPE_CHECKING:
    from sealink.gateway.service import Gateway

__all__ = ["register"]

log = logging.getLogger("sealink.cli")

_READY_WAIT_S = 10.0
_STATUS_EVERY_S = 5.0
# What a reload applies; every other setting is read at start only.
_RELOADED = {"ports", "log", "source"}
_AT_START = tuple(f.name for f in dataclasses.fields(Config) if f.name not in _RELOADED)


def cmd_run(args: argparse.Namespace) -> int:
    config = load(args, check_key=True)
    _configure_logging(args, config)
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    asyncio.run(_serve(args, config, Notifier.from_environ()))
    return 0


def _configure_logging(args: argparse.Namespace, config: Config) -> None:
    configure_logging(args.log_level or config.log.level, args.log_json or config.log.json)


async def _serve(args: argparse.Namespace, config: Config, notifier: Notifier) -> None:
    from sealink.gateway.service import Gateway

    loop = asyncio.get_running_loop()
    stop, reload = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Before the gateway starts: a SIGHUP while it starts is a reload once it has, not its end.
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    notifier.notify(STATUS="starting")
    try:
        async with Gateway(config) as gateway:
            await _until_stopped(_Service(args, gateway, notifier), stop, reload)
    except SealinkError as exc:
        notifier.notify(STATUS=f"failed: {exc}")
        raise


async def _until_stopped(service: _Service, stop: asyncio.Event, reload: asyncio.Event) -> None:
    waiter = asyncio.create_task(stop.wait())
    up = asyncio.create_task(service.until_up())
    # A SIGTERM while the ports and the broker come up stops it at once.
    await asyncio.wait({waiter, up}, return_when=asyncio.FIRST_COMPLETED)
    up.cancel()
    service.notifier.notify(READY=1, STATUS=service.status())
    helpers = {
        asyncio.create_task(service.keep_alive(), name="sd-notify"),
        asyncio.create_task(service.reloads(reload), name="reload"),
    }
    main = asyncio.create_task(service.gateway.wait_closed())
    await asyncio.wait({waiter, main}, return_when=asyncio.FIRST_COMPLETED)
    for task in (waiter, *helpers):
        task.cancel()
    await asyncio.wait(helpers)
    if main.done():
        main.result()
    service.notifier.notify(STOPPING=1, STATUS="stopping")
    log.info("stopping")


class _Service:
    """What `sealink run` adds around the gateway: reloads, and what systemd is told."""

    def __init__(self, args: argparse.Namespace, gateway: Gateway, notifier: Notifier) -> None:
        self.args = args
        self.gateway = gateway
        self.notifier = notifier

    async def until_up(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_READY_WAIT_S):
                await self.gateway.ports_tried()
                await self.gateway.publisher.wait_connected(_READY_WAIT_S)

    def status(self) -> str:
        up, ports = self.gateway.ports_open
        seals = sum(1 for session in self.gateway.sessions if session.device is not None)
        broker = "connected" if self.gateway.publisher.connected else "not connected"
        return f"{up}/{ports} ports open, {seals} seals in session, broker {broker}"

    async def keep_alive(self) -> None:
        """WATCHDOG=1 each half watchdog period, and STATUS= whenever it changed."""
        interval = self.notifier.watchdog_interval_s
        every = min(interval, _STATUS_EVERY_S) if interval is not None else _STATUS_EVERY_S
        said = ""
        while True:
            fields: dict[str, str | int] = {"WATCHDOG": 1} if interval is not None else {}
            status = self.status()
            if status != said:
                fields["STATUS"] = said = status
            if fields:
                self.notifier.notify(**fields)
            await asyncio.sleep(every)

    async def reloads(self, requested: asyncio.Event) -> None:
        while True:
            await requested.wait()
            requested.clear()
            self.notifier.notify(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)
            try:
                await self.reload()
            except Exception:
                # A reload must never stop the service: what it did not apply is logged.
                log.exception("reload failed")
            self.notifier.notify(READY=1, STATUS=self.status())

    async def reload(self) -> None:
        path = self.args.config
        try:
            config = load(self.args, check_key=True)
        except SealinkError as exc:
            log.error(
                "reload refused, the running config is kept",
                extra={"fields": {"config": path, "why": str(exc)}},
            )
            return
        _configure_logging(self.args, config)
        running = self.gateway.config
        later = [name for name in _AT_START if getattr(config, name) != getattr(running, name)]
        if later:
            log.warning(
                "reload: these settings take effect at the next start",
                extra={"fields": {"settings": ", ".join(later)}},
            )
        added, removed = await self.gateway.apply_ports(config.ports)
        fields = {
            "config": path,
            "added": [port.url for port in added],
            "removed": [port.url for port in removed],
            "log_level": logging.getLevelName(logging.getLogger("sealink").level).lower(),
        }
        log.info("reloaded", extra={"fields": fields})


def register(sub: Any) -> None:
    p = add_command(sub, "run", cmd_run, "run the gateway service")
    with_config(p)
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
