"""A BLE port's URL, read without importing a BLE stack (the config checks it at load).

ble://<device id>                                 the system's stack (BlueZ, CoreBluetooth, WinRT)
ble://<device id>?adapter=hci1                    BlueZ: that adapter
ble://<device id>?backend=bumble&hci=usb:0        bumble's own host on an HCI controller
ble://<device id>?backend=bumble&hci=virtual:lab  bumble, a virtual link in this process
&mtu=23..517                                      bumble: the ATT MTU asked for (default 247)
&scan_s=0.5..300                                  how long one search for the seal lasts
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from sealproto.gatt import ATT_MTU_MIN, ATT_MTU_WANTED

__all__ = ["BACKENDS", "BleUrl", "parse_ble_url"]

BACKENDS = ("system", "bumble")
_DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")
_KEYS = ("adapter", "backend", "hci", "mtu", "scan_s")
_ATT_MTU_MAX = 517


@dataclass(frozen=True)
class BleUrl:
    device_id: str
    backend: str = "system"
    adapter: str | None = None
    hci: str | None = None
    mtu: int = ATT_MTU_WANTED
    scan_s: float = 10.0


def parse_ble_url(url: str) -> BleUrl:
    """The parts of a `ble://` URL; ValueError says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme != "ble":
        raise ValueError(f"a BLE port URL starts with ble://, got {url!r}")
    if not _DEVICE_ID.fullmatch(parts.netloc) or parts.path:
        raise ValueError(f"ble://<device id>: the id is 1..32 of [A-Za-z0-9._-], got {url!r}")
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in _KEYS:
            raise ValueError(f"unknown BLE URL option {key!r} (known: {', '.join(_KEYS)})")
        if key in query:
            raise ValueError(f"BLE URL option {key!r} given twice")
        query[key] = value
    backend = query.get("backend", "system")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    hci = query.get("hci")
    if (backend == "bumble") != bool(hci):
        raise ValueError("backend=bumble needs hci=<bumble transport>, and only it takes hci")
    if backend == "bumble" and "adapter" in query:
        raise ValueError("adapter= names a system adapter; with backend=bumble use hci=")
    try:
        mtu = int(query.get("mtu", ATT_MTU_WANTED))
        scan_s = float(query.get("scan_s", 10.0))
    except ValueError:
        raise ValueError(f"mtu must be an integer and scan_s a number, in {url!r}") from None
    if not ATT_MTU_MIN <= mtu <= _ATT_MTU_MAX:
        raise ValueError(f"mtu must be {ATT_MTU_MIN}..{_ATT_MTU_MAX}, got {mtu}")
    if not 0.5 <= scan_s <= 300:
        raise ValueError(f"scan_s must be 0.5..300, got {scan_s}")
    return BleUrl(parts.netloc, backend, query.get("adapter"), hci, mtu, scan_s)
