# Freezes the firmware into a custom unix-port micropython (optional: the emulator normally
# runs the ROMFS build of tools/build.py). Board modules on top of the firmware's manifest.
include("$(PORT_DIR)/variants/manifest.py")
include("../../firmware/manifest.py")
module("board.py")
module("flashdev.py")
module("i2cbus.py")
module("hal.py")
module("bluetooth.py")
