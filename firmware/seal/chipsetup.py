# What a provisioning station does with the seal's ATECC608, once per seal: make the seal key
# inside the chip, lock its slot, read out the public key. The firmware never imports this
# module; the station runs it over the board's REPL (tools/provision.py --chip) or, for the
# emulated board, over the emulated bus (sealink_sim.emulator.EmulatedBoard.provision_chip).
from micropython import const

# Opcodes and modes (calib_command.h), maximum execution times in ms (calib_execution.c,
# device_execution_time_608_m0), as in seal/atecc.py.
_INFO = const(0x30)
_RANDOM = const(0x1B)
_GENKEY = const(0x40)
_LOCK = const(0x17)
_GENKEY_PRIVATE = const(0x04)  # GENKEY_MODE_PRIVATE: new private key in the slot, public out
_GENKEY_PUBLIC = const(0x00)  # GENKEY_MODE_PUBLIC: the slot's public key, recomputed
_LOCK_SLOT = const(0x02)  # LOCK_ZONE_DATA_SLOT, slot number in bits 2..5 (calib_lock_data_slot)
_INFO_MAX_MS = const(5)
_RANDOM_MAX_MS = const(23)
_GENKEY_MAX_MS = const(115)
_LOCK_MAX_MS = const(35)
# A command with no data, count byte to CRC (seal/atecc.py's _CMD: a const is not importable).
_CMD = const(7)


# Functions of the runtime driver's object (seal/atecc.py): the board's own hal.chip() serves,
# and the firmware's class holds none of this.


def revision(chip):
    chip.wake()
    try:
        chip._run(_INFO, 0, 0, _CMD, _INFO_MAX_MS)
        return bytes(chip._rx[1:5])
    finally:
        chip.idle()


def random(chip):
    chip.wake()
    try:
        chip._run(_RANDOM, 0, 0, _CMD, _RANDOM_MAX_MS)
        return bytes(chip._rx[1:33])
    finally:
        chip.idle()


def generate_key(chip, slot):
    # A new private key, made inside the chip in `slot`; only its public key comes out.
    chip.wake()
    try:
        return _genkey(chip, _GENKEY_PRIVATE, slot)
    finally:
        chip.idle()


def public_key(chip, slot):
    chip.wake()
    try:
        return _genkey(chip, _GENKEY_PUBLIC, slot)
    finally:
        chip.idle()


def lock_slot(chip, slot):
    # Irreversible: the slot's key can never be replaced (GenKey then fails on it). Inside a
    # wake() ... idle() group.
    chip._run(_LOCK, _LOCK_SLOT | (slot << 2), 0, _CMD, _LOCK_MAX_MS)


def _genkey(chip, mode, slot):
    chip._run(_GENKEY, mode, slot, _CMD, _GENKEY_MAX_MS)
    return bytes(chip._rx[1:65])


def provision(chip, slot=0):
    # The seal's key: made inside the chip, the slot then locked, so the key is made once and
    # can never be replaced (GenKey on a locked slot fails: ChipError, nothing changes). Only
    # the public key comes out, for the gateway to register.
    chip.wake()
    try:
        public = _genkey(chip, _GENKEY_PRIVATE, slot)
        lock_slot(chip, slot)
    finally:
        chip.idle()
    return public
