# main.py: runs the seal firmware (frozen into the firmware, or copied by tools/deploy.py).
# The port runs this from the filesystem after boot.py; it never returns.
import seal.app

seal.app.run()
