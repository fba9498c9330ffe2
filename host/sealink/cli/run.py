"""`sealink run`: the gateway service, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from sealink.cli.common import add_command, load, with_config
from sealink.logs import configure_logging

__all__ = ["register"]

log = logging.getLogger("sealink.cli")


def cmd_run(args: argparse.Namespace) -> int:
    config = load(args, check_key=True)
    configure_logging(args.log_level or config.log.level, args.log_json or config.log.json)
    from sealink.gateway.service import Gateway

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with Gateway(config) as gateway:
            waiter = asyncio.create_task(stop.wait())
            main = asyncio.create_task(gateway.wait_closed())
            await asyncio.wait({waiter, main}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if main.done():
                main.result()
            log.info("stopping")

    asyncio.run(serve())
    return 0


def register(sub: Any) -> None:
    p = add_command(sub, "run", cmd_run, "run the gateway service")
    with_config(p)
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
