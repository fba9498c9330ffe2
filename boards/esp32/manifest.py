# Freezes sealink into an ESP32_GENERIC build:
#   make -C ports/esp32 BOARD=ESP32_GENERIC \
#       FROZEN_MANIFEST=/path/to/sealink/boards/esp32/manifest.py
# Not the port's own boards/manifest.py: it freezes the port's _boot.py (littlefs programmed 32
# bytes at a time, and formatted whenever it fails to mount) and networking packages a seal
# has no use for. Of it, only what the firmware needs; then the firmware and this board's
# modules, with its own _boot.py.
module("flashbdev.py", base_path="$(PORT_DIR)/modules")
include("$(MPY_DIR)/extmod/asyncio")
include("../../firmware/manifest.py")
include("../../firmware/manifests/mcu.py")
module("_boot.py")
module("board.py")
module("hal.py")
