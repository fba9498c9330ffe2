# board.py for the emulated board: data read by seal.app and by the launcher.
# No pins: GPIO is the control channel (stdin/stdout) driven by sealink_sim.emulator.
NAME = "emulated"
# 512 blocks of 4096 bytes = a 2 MiB littlefs, the size of the ESP32 DevKitC's vfs partition
# (read by the launcher, which makes the flash image).
FLASH_BLOCKS = 512
# Journal segments of 8 events take a block each (~1.5 KB of it): 2000 events take ~250 blocks,
# leaving littlefs room for copy-on-write and metadata.
JOURNAL_CAPACITY = 2000
LOW_BATTERY_MV = 3400
# The links the launcher does not choose otherwise (SEAL_LINKS), in order of preference.
LINKS = ("uart",)
# Operator identity (SPEC §5.7): a 3x4 keypad and an NFC card reader, both driven by the
# control channel ("keys", "card").
INPUTS = ("keypad", "nfc")
