# The device side of the wire protocol: framing, the CBOR subset, message schemas, MACs.
# Not sealproto.messages: its public names are for hosts, the firmware never imports it.
package(
    "sealproto",
    files=("__init__.py", "errors.py", "cobs.py", "framing.py", "cbor.py", "codec.py", "auth.py"),
    base_path="../../protocol",
)
