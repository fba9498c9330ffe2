"""`sealink demo`: an emulated seal, the gateway, a private Mosquitto and an independent
verifier on one machine. Registered through the `sealink.commands` entry point group."""

from __future__ import annotations

import argparse
from typing import Any

from sealink.errors import SealinkError
from sealink.logs import configure_logging

__all__ = ["register"]


def run(args: argparse.Namespace) -> int:
    try:
        from sealink_sim.demo import run_demo
    except ImportError as exc:
        raise SealinkError(
            f"the demo needs the emulator and test extras: pip install -e '.[emulator,test]' "
            f"({exc})"
        ) from None
    if not args.json:
        configure_logging("warning")
    return run_demo(
        args.stamps,
        as_json=args.json,
        workdir=args.workdir,
        heap=args.heap,
        transport=args.transport,
    )


def register(sub: Any) -> None:
    help_ = "emulated seal + gateway + local Mosquitto + independent verifier"
    p: argparse.ArgumentParser = sub.add_parser("demo", help=help_, description=help_)
    p.add_argument("--stamps", type=int, default=50, help="impressions to make (default 50)")
    p.add_argument("--json", action="store_true", help="print only the JSON summary")
    p.add_argument("--workdir", help="keep the demo's files here (default: a temp dir)")
    p.add_argument("--heap", help="the emulated seal's MicroPython heap (default: the board's)")
    p.add_argument(
        "--transport",
        choices=("serial", "ble"),
        default="serial",
        help="how the seal reaches the gateway: its UART (a pty) or BLE (bumble virtual "
        "controllers; default serial)",
    )
    p.set_defaults(fn=run)
