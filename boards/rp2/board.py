# board.py for Raspberry Pi Pico W (RP2040 + CYW43439): pins and limits as data, read by
# hal.py, seal.mcu and seal.app. Switches pull the pin to GND (internal pull-up): "active low"
# means 0 V = pressed / case open.
NAME = "rp2"

STAMP_PIN = 15  # GP15, stamp sensor switch to GND
STAMP_ACTIVE_LOW = True
TAMPER_PIN = 14  # GP14, case switch: closed to GND while the case is shut, so open = high
TAMPER_ACTIVE_LOW = False
LOCK_PIN = 16  # GP16, lock actuator driver (MOSFET gate): high = unlocked
LED_PIN = "LED"  # the on-board LED, wired to the CYW43 chip

# Battery through a 100k/100k divider into ADC0 (GP26). VSYS/3 on GP29 is shared with the
# CYW43 SPI clock on the Pico W, so it is not used.
BATTERY_ADC_PIN = 26
BATTERY_DIVIDER = (200, 100)  # (R_top + R_bottom, R_bottom): battery mV = pin mV * 200 / 100
ADC_VREF_MV = 3300
LOW_BATTERY_MV = 3400

# UART0 on GP0/GP1 to the gateway (the REPL is on USB).
UART_ID = 0
UART_TX_PIN = 0
UART_RX_PIN = 1
UART_BAUD = 115200

# An ATECC608A breakout (3.3 V, address 0x60) on I2C0: SDA GP4, SCL GP5 (pins 6 and 7), free
# of the UART, the switches and the CYW43's pins.
CHIP_I2C_ID = 0
CHIP_SDA_PIN = 4
CHIP_SCL_PIN = 5

# How the seal reaches its gateway, in order of preference (SPEC §6): over BLE while a central
# is connected, else over the UART. ("uart",) for a seal that is always cabled.
LINKS = ("ble", "uart")

# Operator identity at the seal (SPEC §5.7): a 3x4 matrix keypad on GP6..GP12 (rows driven,
# columns with pull-ups) and a PN532 NFC breakout in I2C mode on I2C1 (GP2/GP3), its IRQ line
# on GP13. () for a seal without them. Not yet tried on hardware.
INPUTS = ("keypad", "nfc")
KEYPAD_ROW_PINS = (6, 7, 8, 9)
KEYPAD_COL_PINS = (10, 11, 12)
NFC_I2C_ID = 1
NFC_SDA_PIN = 2
NFC_SCL_PIN = 3
NFC_IRQ_PIN = 13

# The Pico W's littlefs is ~848 KiB (212 blocks); 8-event journal segments of ~1.5 KiB each use
# one 4 KiB block, so 1000 events take ~125 blocks and leave littlefs room for copy-on-write.
JOURNAL_CAPACITY = 1000
