# The seal firmware, feature by feature (a MicroPython manifest: the port's makemanifest.py reads
# it when freezing, tools/build.py for .mpy and ROMFS builds). Board manifests include this after
# their port's own manifest; paths are relative to the file that names them.
include("manifests/protocol.py")
include("manifests/chip.py")
include("manifests/journal.py")
include("manifests/policy.py")
include("manifests/link.py")
include("manifests/app.py")
