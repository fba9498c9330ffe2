# The security chip: the ATECC608 driver over I2C (sign, verify, counters), and what the
# provisioning station runs over it once (key made inside, slot locked); the firmware never
# imports chipsetup, so it costs flash, not RAM.
package("seal", files=("atecc.py", "chipsetup.py"), base_path="..")
