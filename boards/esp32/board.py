# board.py for ESP32-DevKitC with an ESP32-WROOM-32SE module (ESP32 + ATECC608A): pins and
# limits as data, read by hal.py, seal.mcu and seal.app. Switches pull the pin to GND
# (internal pull-up): "active low" means 0 V = pressed / case open.
NAME = "esp32"

STAMP_PIN = 32  # stamp sensor switch to GND
STAMP_ACTIVE_LOW = True
TAMPER_PIN = 33  # case switch: closed to GND while the case is shut, so open = high
TAMPER_ACTIVE_LOW = False
LOCK_PIN = 26  # lock actuator driver (MOSFET gate): high = unlocked
LED_PIN = 2  # status LED (DevKitC has none on board: LED + 330 ohm to GND)

# Battery through a 100k/100k divider into ADC1 channel 7 (ADC2 is unusable with the radio on).
BATTERY_ADC_PIN = 35
BATTERY_DIVIDER = (200, 100)  # (R_top + R_bottom, R_bottom): battery mV = pin mV * 200 / 100
LOW_BATTERY_MV = 3400

# UART2 to the gateway (UART0 stays the USB REPL that mpremote uses). Not on its usual
# GPIO17/GPIO16: inside the WROOM-32SE those carry the security chip's I2C (below).
UART_ID = 2
UART_TX_PIN = 27
UART_RX_PIN = 25
UART_BAUD = 115200

# The ATECC608A wired inside the WROOM-32SE module: SDA GPIO16, SCL GPIO17, the pins
# Espressif's esp-cryptoauthlib hard-coded for this module (hal_esp32_i2c.c SDA_PIN/SCL_PIN,
# before they became Kconfig options). Hardware I2C 0.
CHIP_I2C_ID = 0
CHIP_SDA_PIN = 16
CHIP_SCL_PIN = 17

# How the seal reaches its gateway, in order of preference (SPEC §6): over BLE while a central
# is connected, else over the UART. ("uart",) for a seal that is always cabled.
LINKS = ("ble", "uart")

# Operator identity at the seal (SPEC §5.7): a 3x4 matrix keypad (rows driven, columns with
# pull-ups) and a PN532 NFC breakout in I2C mode on its own bus, its IRQ line on an input-only
# pin with the breakout's own pull-up. () for a seal without them. Not yet tried on hardware.
INPUTS = ("keypad", "nfc")
KEYPAD_ROW_PINS = (13, 14, 18, 19)
KEYPAD_COL_PINS = (21, 22, 23)
NFC_I2C_ID = 1
NFC_SDA_PIN = 4
NFC_SCL_PIN = 5
NFC_IRQ_PIN = 34

# The littlefs partition of ESP32_GENERIC (~2 MiB) holds far more; this bounds the backlog.
JOURNAL_CAPACITY = 2000
