# Talking to the host: the link state machine, the byte-stream port it runs over, and the
# enrolment that decides whose acknowledgements free journal space.
package("seal", files=("enrol.py", "link.py", "uart.py"), base_path="..")
