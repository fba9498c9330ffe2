"""systemd's service notifications (sd_notify(3)): readiness, status, watchdog pings.

    notifier = Notifier.from_environ()   # inert outside a Type=notify unit
    notifier.notify(READY=1, STATUS="serving 2/2 ports")
    notifier.watchdog_interval_s         # ping this often, or None: no watchdog asked for

Written here, not taken from PyPI: the protocol is one datagram of `KEY=VALUE` lines to the
AF_UNIX socket named by $NOTIFY_SOCKET (a leading '@' names an abstract socket), one of the
interfaces systemd keeps stable (newer sd_notify(3) pages show a standalone implementation).
`sdnotify` does the same in as many lines but has had no release since 2017; systemd-python and
cysystemd need libsystemd's headers and a compiler on the gateway, for one sendto().
"""

from __future__ import annotations

import contextlib
import os
import socket

__all__ = ["Notifier"]


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec

    @classmethod
    def from_environ(cls) -> Notifier:
        """What systemd gave this process; the variables are removed so that the processes it
        starts (the MQTT publisher) do not speak for the service."""
        address = os.environ.pop("NOTIFY_SOCKET", "") or None
        usec = os.environ.pop("WATCHDOG_USEC", "")
        pid = os.environ.pop("WATCHDOG_PID", "")
        watchdog = None
        # WATCHDOG_PID names the process the watchdog is for; absent, it is this one.
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec)
        return cls(address, watchdog)

    @property
    def watchdog_interval_s(self) -> float | None:
        """Half the watchdog's timeout, as sd_watchdog_enabled(3) advises; None: no watchdog."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2e6

    def notify(self, **fields: str | int) -> None:
        """Send one notification; best effort (a service outlives a manager that went away)."""
        if self._address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        # '@' is how the environment spells an abstract socket's leading NUL byte.
        address = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
            contextlib.suppress(OSError),
        ):
            sock.sendto(message, address)
