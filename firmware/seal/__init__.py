# seal: the sealink device application (MicroPython).
# Board specifics come from the board's `hal` module; the wire comes from `sealproto`.
