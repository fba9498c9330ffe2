# What a press becomes: debounced inputs, the permit and who identified to open it, the guard
# that drives the lock.
package("seal", files=("sensor.py", "permits.py", "guard.py"), base_path="..")
