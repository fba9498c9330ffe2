# What a press becomes: debounced inputs, the permit, the guard that drives the lock.
package("seal", files=("sensor.py", "permits.py", "guard.py"), base_path="..")
