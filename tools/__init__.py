"""sealink's development tools: firmware build, deployment, provisioning, benchmarks.

Run from the checkout: `python -m tools.build esp32` (or `python tools/build.py esp32`); tests
and benches import them as `tools.build`, `tools.deploy`, `tools.provision`.
"""
