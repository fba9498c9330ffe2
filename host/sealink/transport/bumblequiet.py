"""bumble's Host and Controller, formatting packets only when debug logging is on.

bumble (0.0.236) logs every HCI packet with an f-string that formats the packet (colours and
every field) even when debug logging is off: in a cProfile of `tools/bench.py ble`'s simulated
drain that formatting was a fifth of the gateway's CPU, and most of the Air thread's in
test_air's notification stream. These send and dispatch exactly as bumble's do, and hand the
packet to bumble's own methods (which log it) whenever debug logging or a snooper is on.
"""

from __future__ import annotations

import asyncio
import logging

from bumble import hci
from bumble.controller import Controller
from bumble.host import Host

__all__ = ["QuietController", "QuietHost"]

_controller_log = logging.getLogger("bumble.controller")
_host_log = logging.getLogger("bumble.host")


class QuietController(Controller):
    def on_hci_packet(self, packet: hci.HCI_Packet) -> None:
        if _controller_log.isEnabledFor(logging.DEBUG):
            super().on_hci_packet(packet)
        elif isinstance(packet, hci.HCI_AclDataPacket):
            self.on_hci_acl_data_packet(packet)
        elif isinstance(packet, hci.HCI_Command):
            self.on_hci_command_packet(packet)
        else:
            super().on_hci_packet(packet)

    def send_hci_packet(self, packet: hci.HCI_Packet) -> None:
        if _controller_log.isEnabledFor(logging.DEBUG):
            super().send_hci_packet(packet)
        elif self.host:
            asyncio.get_running_loop().call_soon(self.host.on_packet, bytes(packet))


class QuietHost(Host):
    def send_hci_packet(self, packet: hci.HCI_Packet) -> None:
        if _host_log.isEnabledFor(logging.DEBUG) or self.snooper:
            super().send_hci_packet(packet)
        elif self.hci_sink:
            self.hci_sink.on_packet(bytes(packet))

    def on_hci_packet(self, packet: hci.HCI_Packet) -> None:
        if _host_log.isEnabledFor(logging.DEBUG) or self.snooper:
            super().on_hci_packet(packet)
        elif isinstance(packet, hci.HCI_AclDataPacket):
            self.on_hci_acl_data_packet(packet)
        elif isinstance(packet, hci.HCI_Event):
            self.on_hci_event_packet(packet)
        else:
            super().on_hci_packet(packet)
