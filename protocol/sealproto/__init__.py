# sealproto: the sealink wire protocol (SPEC.md beside this package), sans-IO.
# Runs unchanged on CPython 3.11+ and MicroPython: no typing, dataclasses or enum at runtime.
PROTOCOL_VERSION = 3
