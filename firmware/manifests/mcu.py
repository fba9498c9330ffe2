# The HAL every `machine`-based board shares (pins, RTC, provisioning file); a board's hal.py
# star-imports it. Boards with their own HAL (the emulated one) leave it out.
# seal/inputs.py: their keypad and NFC reader (SPEC §5.7).
package("seal", files=("mcu.py", "inputs.py"), base_path="..")
