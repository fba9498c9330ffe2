# The HAL every `machine`-based board shares (pins, RTC, provisioning file); a board's hal.py
# star-imports it. Boards with their own HAL (the emulated one) leave it out.
package("seal", files=("mcu.py",), base_path="..")
