# hal.py for ESP32-DevKitC: the board HAL contract over `machine` (shared part: seal.mcu).
# Pin numbers and scaling come from board.py; littlefs is already mounted at "/" by the port.
from machine import ADC, UART, Pin

from board import (
    BATTERY_ADC_PIN,
    BATTERY_DIVIDER,
    UART_BAUD,
    UART_ID,
    UART_RX_PIN,
    UART_TX_PIN,
)

from seal.mcu import *  # noqa: F403

_adc = ADC(Pin(BATTERY_ADC_PIN), atten=ADC.ATTN_11DB)
_uart = None


def battery_mv():
    # read_uv() applies the chip's eFuse ADC calibration.
    return _adc.read_uv() * BATTERY_DIVIDER[0] // BATTERY_DIVIDER[1] // 1000


def uart():
    global _uart
    if _uart is None:
        _uart = UART(UART_ID, baudrate=UART_BAUD, tx=UART_TX_PIN, rx=UART_RX_PIN, timeout=0,
                     rxbuf=1024)
    return _uart
