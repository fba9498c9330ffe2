# sealproto.gatt: the BLE GATT layout of SPEC §6, one source for the host, the simulated seal
# and the firmware's tests. The firmware keeps its own copies (a name imported here costs RAM).
try:
    from micropython import const
except ImportError:

    def const(x):
        return x


SERVICE_UUID = "5ea10000-5ea1-4c1d-8e5e-a15ea1000000"
RX_UUID = "5ea10001-5ea1-4c1d-8e5e-a15ea1000000"  # host -> seal, write without response
TX_UUID = "5ea10002-5ea1-4c1d-8e5e-a15ea1000000"  # seal -> host, notify
ATT_MTU_MIN = const(23)  # every LE link starts here (Core 5.x Vol 3 Part F §3.2.8)
ATT_MTU_WANTED = const(247)  # what a central asks for: one LE data PDU of 251 bytes
ATT_HEADER = const(3)  # opcode + handle in front of each write or notification
NAME_MAX = const(26)  # device id bytes in a legacy advertisement beside its flags


def chunk_size(att_mtu):
    """Bytes of the stream per write or notification at this ATT MTU."""
    return att_mtu - ATT_HEADER
