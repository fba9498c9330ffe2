# Talking to the host: the link state machine, the ports it runs over (UART, BLE), and the
# enrolment that decides whose acknowledgements free journal space.
package("seal", files=("ble.py", "enrol.py", "link.py", "ports.py", "uart.py"), base_path="..")
