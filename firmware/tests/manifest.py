# The firmware tests' build: the emulated board, plus sealproto.messages and .timers for the test
# code that runs under micropython beside the firmware (peer.py, rig.py, mp_ident.py); the
# firmware never imports them.
include("../../boards/emulated/manifest.py")
package("sealproto", files=("messages.py", "timers.py"), base_path="../../protocol")
