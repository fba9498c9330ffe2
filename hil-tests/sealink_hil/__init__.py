"""sealink's hardware-in-the-loop pytest plugin, installed with the project (entry point pytest11).

Layers, after pytest-embedded: `app` (the firmware, sealink_hil.app) -> `port` (the byte link
with its fault engine and wire logs: .port, .relay, .linkfaults, .wirelog) -> `dut` (the device
under test: .dut, .boards). Around them: the gateway (.gateway), the whole link driven as one
(.rig), the board's history at each test's start (.history), seeded faults (.faults), per-test
artifacts (.artifacts). Options and fixtures: .plugin (`pytest --help`, "sealink HIL").
"""
