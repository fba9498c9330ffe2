# What a press becomes: debounced inputs, the permit, who identified, the guard that drives the
# lock.
package("seal", files=("sensor.py", "permits.py", "ident.py", "guard.py"), base_path="..")
