# Freezes sealink into an RPI_PICO_W build, as ports/rp2/boards/RPI_PICO_W/manifest.py does:
#   make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=/path/to/sealink/boards/rp2/manifest.py
# The port's own manifest first (asyncio, ...), then the firmware, then this board's modules.
include("$(PORT_DIR)/boards/manifest.py")
include("../../firmware/manifest.py")
include("../../firmware/manifests/mcu.py")
module("board.py")
module("hal.py")
