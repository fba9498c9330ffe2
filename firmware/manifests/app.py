# The entry point the board's main.py calls: wires the features together under asyncio.
package("seal", files=("app.py",), base_path="..")
