# Talking to the host: the link state machine and the byte-stream port it runs over.
package("seal", files=("link.py", "uart.py"), base_path="..")
