"""The BLE GATT layout of SPEC §6."""

from typing import Final

SERVICE_UUID: Final = "5ea10000-5ea1-4c1d-8e5e-a15ea1000000"
RX_UUID: Final = "5ea10001-5ea1-4c1d-8e5e-a15ea1000000"
TX_UUID: Final = "5ea10002-5ea1-4c1d-8e5e-a15ea1000000"
ATT_MTU_MIN: Final = 23
ATT_MTU_WANTED: Final = 247
ATT_HEADER: Final = 3
NAME_MAX: Final = 26

def chunk_size(att_mtu: int) -> int: ...
