# hal.py for Raspberry Pi Pico W: the board HAL contract over `machine` (shared part: seal.mcu).
# Pin numbers and scaling come from board.py; littlefs is already mounted at "/" by the port.
from machine import ADC, UART, Pin

from board import (
    ADC_VREF_MV,
    BATTERY_ADC_PIN,
    BATTERY_DIVIDER,
    UART_BAUD,
    UART_ID,
    UART_RX_PIN,
    UART_TX_PIN,
)

from seal.mcu import *  # noqa: F403

_adc = ADC(Pin(BATTERY_ADC_PIN))
_uart = None


def battery_mv():
    # read_u16() spans 0..65535 over 0..VREF; the RP2040 has no ADC calibration to apply.
    return _adc.read_u16() * ADC_VREF_MV * BATTERY_DIVIDER[0] // BATTERY_DIVIDER[1] // 65535


def uart():
    global _uart
    if _uart is None:
        _uart = UART(UART_ID, baudrate=UART_BAUD, tx=Pin(UART_TX_PIN), rx=Pin(UART_RX_PIN),
                     timeout=0, rxbuf=1024)
    return _uart
