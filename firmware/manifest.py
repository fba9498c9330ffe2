# Freezes the seal firmware and the wire protocol it speaks (a MicroPython manifest).
# Board manifests include this after their port's manifest; paths are relative to this file.
package("seal")
package("sealproto", base_path="../protocol")
