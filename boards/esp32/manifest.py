# Freezes sealink into an ESP32_GENERIC build:
#   make -C ports/esp32 BOARD=ESP32_GENERIC \
#       FROZEN_MANIFEST=/path/to/sealink/boards/esp32/manifest.py
# The port's own manifest first (asyncio, ...), then the firmware, then this board's modules.
include("$(PORT_DIR)/boards/manifest.py")
include("../../firmware/manifest.py")
include("../../firmware/manifests/mcu.py")
module("board.py")
module("hal.py")
