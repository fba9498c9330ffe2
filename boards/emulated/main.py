# main.py for the emulated board: host/sealink/emulator.py runs it under `micropython` with
# MICROPYPATH = the .mpy build of firmware/, protocol/ and boards/emulated/ (tools/build.py).
import seal.app

seal.app.run()
