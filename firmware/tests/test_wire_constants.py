"""The firmware spells sealproto's wire numbers and link timers as local `_NAME = const(n)` (a
name imported from sealproto costs RAM on the board); each must equal the sealproto name it
copies (sealproto.timers for SPEC §5.1). The sealproto modules a device imports (codec, auth,
cbor, cobs, framing) keep such private copies too, so the public names live only in messages,
errors and timers, which the firmware never imports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sealproto
from sealproto import errors, framing, gatt, messages, timers

SEAL = Path(__file__).resolve().parents[1] / "seal"
SEALPROTO = Path(sealproto.__file__).resolve().parent
_DEVICE_SIDE = ("auth.py", "cbor.py", "cobs.py", "codec.py", "framing.py")
_CONST = re.compile(r"^_(\w+) = const\((\w+)\)", re.MULTILINE)
_SOURCES = (messages, errors, framing, timers, gatt, sealproto)
_TEXT_CONST = re.compile(r'^_(\w+) = const\("([^"]*)"\)', re.MULTILINE)


def _copies() -> list[tuple[str, str, int]]:
    found = []
    for path in [*sorted(SEAL.glob("*.py")), *(SEALPROTO / name for name in _DEVICE_SIDE)]:
        for name, value in _CONST.findall(path.read_text()):
            if any(hasattr(m, name) for m in _SOURCES):
                found.append((path.name, name, int(value, 0)))
    return found


@pytest.mark.parametrize(("module", "name", "value"), _copies())
def test_firmware_constant_matches_sealproto(module: str, name: str, value: int) -> None:
    want = next(getattr(m, name) for m in _SOURCES if hasattr(m, name))
    assert value == want, f"{module}: _{name} = {value}, sealproto says {want}"


def test_the_gatt_uuids_are_sealprotos() -> None:
    # SPEC §6's UUIDs and sizes as seal/ble.py spells them.
    text = (SEAL / "ble.py").read_text()
    uuids = {name: value for name, value in _TEXT_CONST.findall(text) if name.endswith("_UUID")}
    assert uuids == {
        "SERVICE_UUID": gatt.SERVICE_UUID,
        "RX_UUID": gatt.RX_UUID,
        "TX_UUID": gatt.TX_UUID,
    }
    names = {name for module, name, _ in _copies() if module == "ble.py"}
    assert {"ATT_MTU_MIN", "ATT_MTU_WANTED", "ATT_HEADER", "NAME_MAX"} <= names


def test_the_copies_are_found() -> None:
    names = {name for _, name, _ in _copies()}
    assert {"EVENT", "K_TYPE", "KIND_FORCED", "R_OK", "REPLAY", "EV_PREV", "CRC"} <= names
    # Every SPEC §5.1 timer the device runs.
    assert {"WINDOW", "RTO_MS", "RTO_MAX_MS", "HELLO_RETRY_MS", "HELLO_RETRY_MAX_MS",
            "LINK_DEAD_MS", "SYNC_INTERVAL_MS", "STATUS_INTERVAL_MS"} <= names


def test_the_firmware_never_imports_the_name_tables() -> None:
    # messages and errors hold the public names; importing them would load those tables.
    for path in [*sorted(SEAL.glob("*.py")), *(SEALPROTO / name for name in _DEVICE_SIDE)]:
        text = path.read_text()
        assert "import messages" not in text and "import timers" not in text, path.name
        assert re.search(r"^from sealproto\.(messages|errors|timers) import (?!DecodeError$)",
                         text, re.MULTILINE) is None, path.name
