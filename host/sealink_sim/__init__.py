"""sealink_sim: development and test rig for sealink, never needed by a deployed gateway.

Emulated boards (the real firmware under MicroPython), simulated seals, byte pipes, a private
Mosquitto, the independent verifying observer, the demo and shared pytest fixtures. It depends on
the product (`sealink`); the product never imports it.
"""
