# The firmware tests' build: the emulated board, plus sealproto.messages for the test code that
# runs under micropython beside the firmware (peer.py, rig.py); the firmware never imports it.
include("../../boards/emulated/manifest.py")
package("sealproto", files=("messages.py",), base_path="../../protocol")
